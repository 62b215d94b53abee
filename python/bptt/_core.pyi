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
    "backward",
    "build_info",
    "forward",
    "get_num_threads",
    "set_num_threads",
    "set_simd_level",
]

__version__: str

class _BuildInfo(TypedDict):
    version: str
    simd: _SimdLevel
    simd_detected: _SimdLevel
    num_threads: int
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
    ) -> Spec: ...
    @property
    def kind(self) -> Literal["rnn_tanh", "rnn_relu", "lstm", "gru"]:
        """The cell name: `rnn_tanh`, `rnn_relu`, `lstm` or `gru`."""
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
) -> tuple[_FloatArray, _FloatArray, _FloatArray | None, Tape | None]:
    """Runs the layer stack over `x`; returns `(out, h_n, c_n or None, tape or None)`.

    All arrays must already have the spec's dtype (the Python layer converts); the GIL is
    released while the core runs. `lengths` is an int64 array `(B,)` or None. With
    `keep_tape`, `memory_budget` (bytes, or None for the full tape) bounds what the tape
    keeps; the tape may refer to `x`, which must then not change before `backward`. The
    tape keeps `owner` (the model's identity object): `backward` accepts it only with that
    same object.
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
    in use. For tests and benchmarks; results are bitwise identical across levels.
    """

def build_info() -> _BuildInfo:
    """Version, SIMD levels (in use and detected), threads, GEMM backend, target."""
