"""The recipe sweep: a grid of training settings, each trained for the same minutes, scored held out.

Every point of the grid is ``gpt2lab train`` with the default recipe plus
that point's flags and ``--max-minutes M`` (the schedule ends with the
time), in its own process, one after the other; its final model is scored
in bits per byte on the held-out plays, as in ``race.py``.  A grid is
given as ``FLAG=V1,V2,...`` axes; every combination is run.

    python -m benchmarks sweep --minutes 5 --grid d-model=192,256,384 n-layers=2,4 lr=2e-3,3e-3
    python -m benchmarks sweep --minutes 5 --grid tokenizer=bpe:2048,bpe:4096,bpe:8192

Not part of ``python -m benchmarks``: a grid of a dozen points at 5 minutes
is an hour.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import tempfile
from pathlib import Path

from benchmarks.race import held_out_bits_per_byte, train


def parse_grid(axes: list[str]) -> dict[str, list[str]]:
    """``["lr=1e-3,3e-3", "n-layers=2,4"]`` -> ``{"lr": ["1e-3", "3e-3"], "n-layers": ["2", "4"]}``."""
    grid = {}
    for axis in axes:
        flag, sep, values = axis.partition("=")
        if not sep or not values:
            raise SystemExit(f"--grid {axis!r}: write FLAG=V1,V2 (e.g. lr=1e-3,3e-3)")
        grid[flag.removeprefix("--")] = values.split(",")
    return grid


def run(grid: dict[str, list[str]], minutes: float = 5.0, log=functools.partial(print, flush=True), max_chars: int | None = None) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpt2lab-sweep-") as tmp:
        for i, values in enumerate(itertools.product(*grid.values())):
            point = dict(zip(grid, values))
            flags = [arg for flag, v in point.items() for arg in (f"--{flag}", v)]
            report = train(flags, minutes, Path(tmp) / f"point-{i}")
            bpb = held_out_bits_per_byte(Path(tmp) / f"point-{i}", max_chars)
            rows.append({**point, "steps": report["step"], "tokens": report["tokens"], "bpb": bpb})
            log(f"  {point}: {report['step']} steps, {bpb:.3f} bits/byte held out")
    return {"minutes": minutes, "grid": grid, "rows": sorted(rows, key=lambda r: r["bpb"])}


def table(result: dict) -> str:
    axes = list(result["grid"])
    lines = ["| " + " | ".join(axes) + " | steps | tokens | held-out bits/byte |",
             "|" + "---|" * len(axes) + "---:|---:|---:|"]
    lines += ["| " + " | ".join(str(r[a]) for a in axes) + f" | {r['steps']:,} | {r['tokens']:,} | {r['bpb']:.3f} |"
              for r in result["rows"]]
    lines.append(f"\neach point: the default recipe with these flags, --max-minutes {result['minutes']:g}; best first.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks sweep", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--grid", nargs="+", required=True, help="axes FLAG=V1,V2,... (flags of gpt2lab train)")
    args = p.parse_args(argv)
    result = run(parse_grid(args.grid), args.minutes)
    print(table(result))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
