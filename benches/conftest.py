"""Benchmark configuration: shapes, FLOP model, and the peers (NumPy reference, PyTorch)."""

import sys
from pathlib import Path

# The plain-NumPy reference lives with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
