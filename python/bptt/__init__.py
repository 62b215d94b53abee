"""bptt: RNN, LSTM and GRU forward passes and backpropagation through time on the CPU.

The numerical work runs in a Rust core with the GIL released; this package gives it a
NumPy-friendly API with PyTorch's parameter names, shapes and gate order.
"""

from ._core import Tape, __version__, build_info, get_num_threads, set_num_threads
from ._models import GRU, LSTM, RNN, Gradients

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "Gradients",
    "Tape",
    "__version__",
    "build_info",
    "get_num_threads",
    "set_num_threads",
]

from . import data, diagnostics, optim
from .clip import clip_grad_norm, clip_grad_value
from .nn import Linear, cross_entropy_loss, mse_loss
from .tbptt import TBPTT, TBPTTResult

__all__ += [
    "TBPTT",
    "Linear",
    "TBPTTResult",
    "clip_grad_norm",
    "clip_grad_value",
    "cross_entropy_loss",
    "data",
    "diagnostics",
    "mse_loss",
    "optim",
]
