"""Long measurements, kept out of the test suite.

Each benchmark is a module with a ``run(...) -> dict`` function and its own
``python -m benchmarks.NAME`` entry point.  ``python -m benchmarks`` runs them
all with their default settings and writes a Markdown table and the JSON
figures to ``benchmarks/results/`` (git-ignored); ``python -m benchmarks NAME
[ARGS]`` runs one by name.  Measured figures and how to read them: README.md.
"""


def run_module(name: str) -> dict:
    """``benchmarks.NAME.run()``, its progress on stderr: what ``python -m benchmarks`` runs in a fresh process."""
    import importlib
    import sys

    return importlib.import_module(f"benchmarks.{name}").run(log=lambda s: print(s, file=sys.stderr, flush=True))
