"""``python -m benchmarks``: run every benchmark, each in a fresh process, print the tables and save them.
``python -m benchmarks NAME [ARGS]``: run the benchmark module ``benchmarks.NAME`` alone."""

import concurrent.futures
import importlib
import importlib.util
import json
import multiprocessing
import platform
import sys
import time
from pathlib import Path

import torch

import benchmarks

BENCHMARKS = ["train", "shards", "generate", "tokenizers", "race"]  # run by `python -m benchmarks`, in this order
BY_NAME_ONLY = ["sweep"]  # too long for the full run: `python -m benchmarks sweep ...`
RESULTS = Path(__file__).parent / "results"


def available() -> list[str]:
    return [name for name in BENCHMARKS if importlib.util.find_spec(f"benchmarks.{name}") is not None]


def run_in_fresh_process(name: str) -> dict:
    """``benchmarks.NAME.run()`` in a process of its own, so that what one
    benchmark leaves behind (gigabytes of freed memory, warm caches, thread
    pools) cannot slow down or speed up the next."""
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(benchmarks.run_module, name).result()  # (a worker cannot import __main__'s functions)


def run_all() -> None:
    from gpt2lab.hardware import cpu_flags, physical_cores

    stamp = time.strftime("%Y%m%d-%H%M%S")
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "fma", "amx", "sse4")))
    machine = (f"{platform.processor() or platform.machine()}, {physical_cores()} physical cores, "
               f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), flags: {' '.join(flags)}")
    sections, figures = [f"# gpt2lab benchmarks, {stamp}\n\n{machine}\n"], {"machine": machine}
    start = time.monotonic()
    for name in available():
        t = time.monotonic()
        print(f"{name} ...", file=sys.stderr, flush=True)
        result = run_in_fresh_process(name)
        figures[name] = result
        table = importlib.import_module(f"benchmarks.{name}").table(result)
        sections.append(f"## {name} ({time.monotonic() - t:.0f} s)\n\n{table}\n")
    sections.append(f"total {time.monotonic() - start:.0f} s")
    text = "\n".join(sections)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stamp}.md").write_text(text + "\n", encoding="utf-8")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    print(f"\nwritten: {RESULTS / stamp}.md and .json", file=sys.stderr)


if __name__ == "__main__":  # not when a spawned worker re-imports this module
    if len(sys.argv) < 2:
        run_all()
    elif sys.argv[1] in available() + BY_NAME_ONLY:
        importlib.import_module(f"benchmarks.{sys.argv[1]}").main(sys.argv[2:])
    else:
        sys.exit(f"usage: python -m benchmarks [{{{','.join(available() + BY_NAME_ONLY)}}} [ARGS]]")
