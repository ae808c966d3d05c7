"""Long measurements, kept out of the test suite.  Each benchmark is a module
with a ``run(...) -> dict`` function and its own ``python -m benchmarks.NAME``
entry point; ``python -m benchmarks NAME [ARGS]`` runs one by name."""
