"""bptt: RNN, LSTM and GRU forward passes and backpropagation through time on the CPU.

The numerical work runs in a Rust core with the GIL released; this package gives it a
NumPy-friendly API with PyTorch's parameter names, shapes and gate order.
"""

from ._core import Tape, __version__
from ._models import GRU, LSTM, RNN, Gradients

__all__ = ["GRU", "LSTM", "RNN", "Gradients", "Tape", "__version__"]
