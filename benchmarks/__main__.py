"""``python -m benchmarks NAME [ARGS]``: run the benchmark module ``benchmarks.NAME``."""

import importlib
import sys

BENCHMARKS = ["generate"]

if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
    sys.exit(f"usage: python -m benchmarks {{{','.join(BENCHMARKS)}}} [ARGS]")
importlib.import_module(f"benchmarks.{sys.argv[1]}").main(sys.argv[2:])
