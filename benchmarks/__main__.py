"""``python -m benchmarks``: run every benchmark, print the tables and save them.
``python -m benchmarks NAME [ARGS]``: run the benchmark module ``benchmarks.NAME`` alone."""

import importlib
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import torch

BENCHMARKS = ["train", "shards", "generate"]  # run by `python -m benchmarks`, in this order
RESULTS = Path(__file__).parent / "results"


def available() -> list[str]:
    return [name for name in BENCHMARKS if importlib.util.find_spec(f"benchmarks.{name}") is not None]


def as_table(result: dict) -> str:
    """A two-column table for a benchmark module without a ``table()`` of its own."""
    rows = [f"| {k} | {v} |" for k, v in result.items() if not isinstance(v, (dict, list))]
    return "| figure | value |\n|---|---|\n" + "\n".join(rows)


def run_all() -> None:
    from gpt2lab.hardware import cpu_flags, physical_cores

    stamp = time.strftime("%Y%m%d-%H%M%S")
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "fma", "amx", "sse4")))
    machine = (f"{platform.processor() or platform.machine()}, {physical_cores()} physical cores, "
               f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), flags: {' '.join(flags)}")
    sections, figures = [f"# gpt2lab benchmarks, {stamp}\n\n{machine}\n"], {"machine": machine}
    start = time.monotonic()
    for name in available():
        module = importlib.import_module(f"benchmarks.{name}")
        t = time.monotonic()
        print(f"{name} ...", file=sys.stderr)
        result = module.run(log=lambda s: print(s, file=sys.stderr)) if name != "generate" else module.run()
        figures[name] = result
        table = module.table(result) if hasattr(module, "table") else as_table(result)
        sections.append(f"## {name} ({time.monotonic() - t:.0f} s)\n\n{table}\n")
    sections.append(f"total {time.monotonic() - start:.0f} s")
    text = "\n".join(sections)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stamp}.md").write_text(text + "\n", encoding="utf-8")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    print(f"\nwritten: {RESULTS / stamp}.md and .json", file=sys.stderr)


if len(sys.argv) < 2:
    run_all()
elif sys.argv[1] in available():
    importlib.import_module(f"benchmarks.{sys.argv[1]}").main(sys.argv[2:])
else:
    sys.exit(f"usage: python -m benchmarks [{{{','.join(available())}}} [ARGS]]")
