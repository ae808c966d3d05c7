"""Long measurements, kept out of the test suite.

Each benchmark is a module with a ``run(...) -> dict`` function and its own
``python -m benchmarks.NAME`` entry point.  ``python -m benchmarks`` runs them
all with their default settings and writes a Markdown table and the JSON
figures to ``benchmarks/results/`` (git-ignored); ``python -m benchmarks NAME
[ARGS]`` runs one by name.  Measured figures and how to read them: README.md.
"""
