"""bptt: RNN, LSTM and GRU forward passes and backpropagation through time on the CPU.

The numerical work runs in a Rust core with the GIL released; this package gives it a
NumPy-friendly API with PyTorch's parameter names, shapes and gate order.
"""

import numbers

from . import _core
from ._core import Tape, __version__, build_info, get_num_threads
from ._models import GRU, LSTM, RNN, Gradients


def set_num_threads(n: int) -> None:
    """Sets the number of threads bptt uses from now on: 1 to ``4 × max(CPUs, 16)``.

    ``n`` must be an int (``TypeError`` otherwise); out of that range it is a
    ``ValueError`` that states the cap, and the pool is left as it was.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n: expected an int number of threads, got {type(n).__name__}")
    if not -(2**63) <= n < 2**63:
        raise ValueError(f"n: expected a number of threads from 1 to 4 x max(CPUs, 16), "
                         f"got {n}")
    _core.set_num_threads(int(n))


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
from .embedding import Embedding
from .nn import Linear, cross_entropy_loss, mse_loss
from .sequential import Sequential
from .tbptt import TBPTT, TBPTTResult

__all__ += [
    "TBPTT",
    "Embedding",
    "Linear",
    "Sequential",
    "TBPTTResult",
    "clip_grad_norm",
    "clip_grad_value",
    "cross_entropy_loss",
    "data",
    "diagnostics",
    "mse_loss",
    "optim",
]
