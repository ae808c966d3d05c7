"""The race: gpt2lab's default recipe against nanoGPT's CPU recipe, for the same minutes.

The anchor is nanoGPT's Shakespeare recipe for a CPU: a character-level
model, 4 layers, 4 heads, d_model 128, context 64, batch 12, lr 1e-3
decaying to 1e-4 after 100 warmup steps (and nanoGPT's beta2 0.99), its
iterations stretched to fill the time.  It runs here with gpt2lab's own
flags, so both recipes get the same loop, kernels and autocast; only the
recipe differs.  Each trains on the training plays with ``--max-minutes M``
(the cosine ends when the time does), one after the other, then both are
scored in bits per byte on the held-out plays (``data.VALIDATION_PLAYS``,
never seen in training): bits per byte is fair between a character and a
BPE vocabulary.  Training time is what ``--max-minutes`` limits; start-up
(tokenizer, token shards) is not counted.

    python -m benchmarks race                    # 2, 5 and 6.7 minutes: about 30 min in all
    python -m benchmarks race --minutes 5
    python -m benchmarks race --recipe ours      # only gpt2lab's, after a change to the default recipe
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ANCHOR = "nanoGPT CPU recipe"
OURS = "gpt2lab default"
RECIPES = {
    ANCHOR: ["--tokenizer", "char", "--n-layers", "4", "--n-heads", "4", "--d-model", "128", "--n-ctx", "64",
             "--batch-size", "12", "--lr", "1e-3", "--min-lr", "1e-4", "--warmup-steps", "100", "--beta2", "0.99"],
    OURS: [],
}
NEVER = str(10**9)  # steps, evaluations and checkpoints that never come: time alone stops the run


def train(flags: list[str], minutes: float, out: Path) -> dict:
    """``gpt2lab train`` in its own process for ``minutes``; its JSON report."""
    cmd = [sys.executable, "-m", "gpt2lab", "train", "--data", "shakespeare", *flags, "--max-minutes", str(minutes),
           "--max-steps", NEVER, "--eval-every", NEVER, "--checkpoint-every", NEVER, "--sample-tokens", "0",
           "--progress", "false", "--out", str(out), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def held_out_bits_per_byte(run_dir: Path, max_chars: int | None = None) -> float:
    """Bits per byte of the run's final model on the held-out plays (each scored
    on its own, weighted by its bytes); ``max_chars``: only each play's start."""
    from gpt2lab.checkpoint import load_model
    from gpt2lab.data import shakespeare_documents
    from gpt2lab.evaluate import score_text

    model, tokenizer = load_model(run_dir)
    scores = [score_text(model, tokenizer, play[:max_chars]) for play in shakespeare_documents("val")]
    return sum(s.bits_per_byte * s.bytes for s in scores) / sum(s.bytes for s in scores)


def run(minutes: tuple[float, ...] = (2.0,), log=functools.partial(print, flush=True), max_chars: int | None = None,
        recipes: tuple[str, ...] = tuple(RECIPES)) -> dict:
    """The race at each of ``minutes`` (``python -m benchmarks`` runs 2 minutes only, about 5 in all);
    ``recipes``: the recipes to run (both, unless one is being re-measured)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpt2lab-race-") as tmp:
        for m in minutes:
            row = {"minutes": m}
            for name in recipes:
                flags = RECIPES[name]
                out = Path(tmp) / f"{name.split()[0]}-{m}"
                start = time.monotonic()
                report = train(flags, m, out)
                row[name] = {"steps": report["step"], "tokens": report["tokens"], "stopped_by": report["stopped_by"],
                             "wall_s": time.monotonic() - start, "bpb": held_out_bits_per_byte(out, max_chars)}
                log(f"  {m} min, {name}: {row[name]['steps']} steps, {row[name]['bpb']:.3f} bits/byte held out")
            if ANCHOR in row and OURS in row:
                row["ratio"] = row[OURS]["bpb"] / row[ANCHOR]["bpb"]
            rows.append(row)
    return {"rows": rows, "recipes": RECIPES}


def table(result: dict) -> str:
    lines = [f"| minutes | {ANCHOR} bits/byte (steps) | {OURS} bits/byte (steps) | ours / anchor |",
             "|---:|---:|---:|---:|"]
    def cell(r, name):
        return f"{r[name]['bpb']:.3f} ({r[name]['steps']:,})" if name in r else "–"

    for r in result["rows"]:
        ratio = f"{r['ratio']:.3f}" if "ratio" in r else "–"
        lines.append(f"| {r['minutes']:g} | {cell(r, ANCHOR)} | {cell(r, OURS)} | {ratio} |")
    lines.append("\nheld-out plays, bits per byte of each recipe's final model; both trained with --max-minutes, "
                 "one after the other.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks race", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[2.0, 5.0, 6.7])
    p.add_argument("--recipe", choices=["anchor", "ours", "both"], default="both",
                   help="run one recipe only (e.g. ours again after a change to the default recipe)")
    args = p.parse_args(argv)
    recipes = {"anchor": (ANCHOR,), "ours": (OURS,), "both": tuple(RECIPES)}[args.recipe]
    result = run(tuple(args.minutes), recipes=recipes)
    print(table(result))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
