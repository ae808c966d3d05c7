"""Long measurements, kept out of the test suite.

Each benchmark is a module with a ``run(...) -> dict`` function and its own
``python -m benchmarks.NAME`` entry point.  ``python -m benchmarks`` runs them
all with their default settings and writes a Markdown table and the JSON
figures to ``benchmarks/results/`` (git-ignored); ``python -m benchmarks NAME
[ARGS]`` runs one by name.  Measured figures and how to read them: README.md.
"""

import contextlib
import subprocess
import sys
import time


def run_module(name: str) -> dict:
    """``benchmarks.NAME.run()``, its progress on stderr: what ``python -m benchmarks`` runs in a fresh process."""
    import importlib

    return importlib.import_module(f"benchmarks.{name}").run(log=lambda s: print(s, file=sys.stderr, flush=True))


@contextlib.contextmanager
def busy_core():
    """A competing program that keeps one core busy, as a laptop's other work
    does: a spinning Python process, started here and stopped when the
    ``with`` block ends."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        yield proc
    finally:
        proc.kill()
        proc.wait()
