"""The benchmark shapes and FLOP model, shared by the pytest-benchmark suite and
``scaling.py``.

FLOP model: forward ``2·T·B·(I+H)·G·H`` with G = 4, 3, 1 for LSTM, GRU, RNN; backward
twice the forward.
"""

SHAPES = {  # (T, B, input, hidden)
    "tiny": (100, 1, 32, 64),
    "small": (100, 16, 64, 128),
    "medium": (100, 32, 256, 256),
    "large": (100, 64, 512, 1024),
    "long": (1000, 16, 64, 128),
}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def flops(cell: str, shape: str, mode: str) -> float:
    """FLOPs of one call: ``mode`` is "inference" or "train" (forward + full backward)."""
    t, b, i, h = SHAPES[shape]
    fwd = 2 * t * b * (i + h) * GATES[cell.lower()] * h
    return fwd if mode == "inference" else 3 * fwd
