"""The compiled core of bptt."""

# Hand-written stub of the PyO3 module built from src/python.rs. Docstrings are those of
# the Rust items; CI checks this file against the built module with `mypy.stubtest`.

from typing import Any, Literal, TypeAlias, TypedDict, final

import numpy as np
import numpy.typing as npt

_FloatArray: TypeAlias = npt.NDArray[np.floating[Any]]
# "neon" is the one level of aarch64 builds (its baseline includes NEON).
_SimdLevel: TypeAlias = Literal["scalar", "avx2", "avx512", "neon"]

__all__ = [
    "Spec",
    "Tape",
    "__version__",
    "adam_step",
    "backward",
    "build_info",
    "cross_entropy_loss",
    "dropout_mask",
    "embedding_backward",
    "forward",
    "get_num_threads",
    "linear_backward",
    "linear_forward",
    "mse_loss",
    "rmsprop_step",
    "set_num_threads",
    "set_simd_level",
    "sgd_step",
]

__version__: str

class _BuildInfo(TypedDict):
    version: str
    simd: _SimdLevel
    simd_detected: _SimdLevel
    num_threads: int
    idle_cpus: int | None
    gemm: str
    target: str
    debug_assertions: bool

@final
class Spec:
    """The fixed configuration of a model, validated once."""

    def __new__(
        cls,
        kind: str,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        bias: bool,
        batch_first: bool,
        dtype: str,
        proj_size: int = 0,
    ) -> Spec: ...
    @property
    def kind(self) -> Literal["rnn_tanh", "rnn_relu", "lstm", "gru"]:
        """The cell name: `rnn_tanh`, `rnn_relu`, `lstm` or `gru`."""
    @property
    def proj_size(self) -> int:
        """The LSTM's projection size `P` (`0`: no projection)."""
    @property
    def dtype(self) -> Literal["float32", "float64"]:
        """`"float32"` or `"float64"`."""
    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """PyTorch's parameter names and shapes, in `state_dict()` order (the order of the
        `weights` list that `forward` and `backward` take and of the gradients returned).
        """
    @property
    def param_count(self) -> tuple[int, int]:
        """`(values, arrays)` of `param_shapes`, counted without building it (saturating)."""

@final
class Tape:
    """What `forward` kept for `backward`; opaque, owned by Rust."""

    @property
    def nbytes(self) -> int:
        """Bytes held by the tape."""
    @property
    def seq_len(self) -> int:
        """Number of time steps `T` of the forward pass that made the tape."""
    @property
    def batch_size(self) -> int:
        """Batch size `B` of the forward pass that made the tape."""
    @property
    def segment(self) -> int | None:
        """Steps per checkpointed segment under a memory budget, or None for a full tape."""

def forward(
    spec: Spec,
    weights: list[_FloatArray],
    x: _FloatArray,
    h0: _FloatArray | None = None,
    c0: _FloatArray | None = None,
    lengths: npt.NDArray[np.int64] | None = None,
    keep_tape: bool = False,
    owner: object | None = None,
    memory_budget: int | None = None,
    dropout: tuple[float, int] | None = None,
) -> tuple[_FloatArray, _FloatArray, _FloatArray | None, Tape | None]:
    """Runs the layer stack over `x`; returns `(out, h_n, c_n or None, tape or None)`.

    All arrays must already have the spec's dtype (the Python layer converts); the GIL is
    released while the core runs. `lengths` is an int64 array `(B,)` or None. With
    `keep_tape`, `memory_budget` (bytes, or None for the full tape) bounds what the tape
    keeps; the tape may refer to `x`, which must then not change before `backward`. The
    tape keeps `owner` (the model's identity object): `backward` accepts it only with that
    same object. `dropout` is `(p, seed)`: with a tape, the output of every layer but the
    last is multiplied by the mask of `seed` (see `dropout_mask`); ignored without a tape.
    """

def dropout_mask(
    p: float,
    seed: int,
    layer: int,
    shape: tuple[int, int, int],
    dtype: str,
) -> _FloatArray:
    """The dropout mask `forward` applies, with `dropout=(p, seed)`, to the output of layer
    `layer` (before layer `layer + 1` reads it) in a pass of time-major shape
    `(T, B, width)`: `0` or `1/(1-p)` per element, of dtype `dtype`.
    """

def backward(
    spec: Spec,
    weights: list[_FloatArray],
    tape: Tape,
    d_out: _FloatArray,
    dh: _FloatArray | None = None,
    dc: _FloatArray | None = None,
    owner: object | None = None,
) -> tuple[_FloatArray, _FloatArray, _FloatArray | None, list[_FloatArray], _FloatArray]:
    """Full BPTT; returns `(dx, dh0, dc0 or None, [param grads in weights' order], dh_norm)`.

    `owner` must be the object given to the `forward` call that made `tape` (compared with
    `is`).
    """

def set_num_threads(n: int) -> None:
    """Sets the number of threads bptt uses from now on: 1 to `4 × max(CPUs, 16)`."""

def get_num_threads() -> int:
    """The number of threads bptt uses."""

def set_simd_level(level: _SimdLevel | None = None) -> _SimdLevel:
    """Forces the SIMD level of the cell kernels (`"scalar"`, `"avx2"`, `"avx512"`; on aarch64
    the one level is `"neon"`), or `None` for the best this CPU has; returns the level now
    in use. For tests and benchmarks; results are bitwise identical across levels, except
    the float32 LSTM cell, which differs by a few ulp between the scalar and the vector levels.
    """

def build_info() -> _BuildInfo:
    """Version, SIMD levels (in use and detected), threads, the CPUs other processes leave
    idle now (None where unknown), GEMM backend, target."""

def linear_forward(
    x: _FloatArray, weight: _FloatArray, bias: _FloatArray | None = None
) -> _FloatArray:
    """`y = x·weightᵀ + bias` for `x` `(N, in)`, `weight` `(out, in)`, `bias` `(out,)` or
    None, all of one float dtype."""

def linear_backward(
    x: _FloatArray, weight: _FloatArray, d_y: _FloatArray, bias: bool
) -> tuple[_FloatArray, _FloatArray, _FloatArray | None]:
    """Gradients of `linear_forward`: `(dx, dweight, dbias or None)` from `x` `(N, in)`,
    `weight` `(out, in)` and `d_y` `(N, out)`."""

def embedding_backward(
    ids: npt.NDArray[np.int64],
    d_out: _FloatArray,
    num_embeddings: int,
    padding_idx: int | None = None,
) -> _FloatArray:
    """The gradient of an embedding table `(num_embeddings, dim)`: the rows of `d_out`
    `(N, dim)` added by token (`ids`, int64 `(N,)`); `padding_idx`'s row stays zero."""

def mse_loss(
    pred: _FloatArray,
    target: _FloatArray,
    width: int,
    mask: npt.NDArray[np.bool_] | None = None,
) -> tuple[float, _FloatArray]:
    """Mean squared error over C-contiguous `pred` and `target` of one dtype, seen as rows of
    `width` values, with an optional bool row `mask`: `(loss, flat d_pred)`."""

def cross_entropy_loss(
    logits: _FloatArray,
    labels: npt.NDArray[np.int64],
    classes: int,
    mask: npt.NDArray[np.bool_] | None = None,
) -> tuple[float, _FloatArray]:
    """Softmax cross-entropy fused with its gradient over C-contiguous `logits` (rows of
    `classes` values), int64 `labels` (one per row) and an optional bool row `mask`:
    `(loss, flat d_logits)`."""

def sgd_step(
    param: _FloatArray,
    grad: _FloatArray,
    momentum_buffer: _FloatArray | None,
    first: bool,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
) -> None:
    """One SGD step in place (see `bptt.optim.SGD`); `momentum_buffer` is required when
    `momentum > 0`, `first` says it is new (it is then set to the gradient)."""

def rmsprop_step(
    param: _FloatArray,
    grad: _FloatArray,
    square_avg: _FloatArray,
    grad_avg: _FloatArray | None,
    momentum_buffer: _FloatArray | None,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
) -> None:
    """One RMSprop step in place (see `bptt.optim.RMSprop`)."""

def adam_step(
    param: _FloatArray,
    grad: _FloatArray,
    exp_avg: _FloatArray,
    exp_avg_sq: _FloatArray,
    max_exp_avg_sq: _FloatArray | None,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    amsgrad: bool,
    step: int,
) -> None:
    """One Adam (or, with `decoupled`, AdamW) step in place (see `bptt.optim.Adam`); `step`
    is the parameter's step count including this one."""
