"""The recurrent models: ``RNN``, ``LSTM`` and ``GRU``.

Python holds only the API shape: parameters (NumPy arrays under PyTorch's names), argument
checks and the call into the Rust core, which runs with the GIL released.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Generic, TypeVar, cast

import numpy as np
import numpy.typing as npt

from . import _core, _persist
from ._base import Parametrized
from ._checks import (
    budget_bytes,
    check_parameter_memory,
    choice,
    flag,
    float_array,
    lengths_array,
    model_dtype,
    nonnegative_int,
    positive_int,
    rng_from_seed,
    state_parts,
    unit_interval,
)

# The state's structure: ``h`` (RNN, GRU) or ``(h, c)`` (LSTM). For type checkers only.
_State = TypeVar("_State", np.ndarray, tuple[np.ndarray, np.ndarray])


class Gradients:
    """Everything ``backward`` returns.

    Attributes
    ----------
    dx : ndarray
        ``dL/dx``, same shape as ``x``.
    dstate : ndarray or tuple of ndarray
        ``dL/dh0`` (RNN, GRU) or ``(dL/dh0, dL/dc0)`` (LSTM), shaped like the state.
    params : dict[str, ndarray]
        Gradients of every parameter, same keys and shapes as ``state_dict()``.
    dh_norm : ndarray, shape (num_layers * D, T)
        ``dh_norm[l * D + d, t]`` is the L2 norm, over batch and hidden units, of the total
        gradient ``dL/dh_t`` of layer ``l``, direction ``d`` at time index ``t``: what
        arrives from the output (or the layer above) plus what flows back from the step
        processed after ``t``. At padded steps (``lengths``) only the carried part remains.
        Its decay towards early ``t`` is what vanishing gradients look like. Gradients
        below ``finfo.tiny / finfo.eps`` (about 1e-31 in float32, 1e-292 in float64) are
        flushed to zero as they are computed, so a fully vanished gradient reads 0 here
        (and never slows the CPU down with subnormal arithmetic).
    """

    __slots__ = ("dh_norm", "dstate", "dx", "params")

    def __init__(self, dx: np.ndarray, dstate: Any, params: dict[str, np.ndarray],
                 dh_norm: np.ndarray) -> None:
        self.dx = dx
        self.dstate = dstate
        self.params = params
        self.dh_norm = dh_norm

    def __repr__(self) -> str:
        return (f"Gradients(dx{self.dx.shape}, params={len(self.params)} arrays, "
                f"dh_norm{self.dh_norm.shape})")


class _Recurrent(Parametrized, Generic[_State]):
    """Shared implementation of the three models (see ``RNN``, ``LSTM``, ``GRU``)."""

    _cell = "lstm"
    #: Whether the state is a pair ``(h, c)`` (LSTM) rather than one array ``h``.
    has_cell_state = False
    #: The LSTM's projection size ``P`` (0: none; only the LSTM has projections).
    proj_size = 0

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 bias: bool = True, batch_first: bool = False, bidirectional: bool = False,
                 dtype: npt.DTypeLike = np.float32, seed: int | None = None,
                 dropout: float = 0.0) -> None:
        self.dropout = unit_interval("dropout", dropout, closed=True)
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.num_layers = positive_int("num_layers", num_layers)
        self.bias = flag("bias", bias)
        self.batch_first = flag("batch_first", batch_first)
        self.bidirectional = flag("bidirectional", bidirectional)
        self.dtype = model_dtype(dtype)
        self._spec = self._checked_spec()
        # PyTorch's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)).
        shapes = self._spec.param_shapes
        super().__init__(shapes, 1.0 / math.sqrt(self.hidden_size), self.dtype, seed)
        self._names = list(shapes)
        self._weights = [self._params[k] for k in self._names]
        # Seeds of the dropout masks of forward() calls without dropout_seed: a stream of
        # its own, derived from ``seed`` (the seed was checked above).
        self._dropout_rng = np.random.default_rng(
            None if seed is None else rng_from_seed(seed).integers(2**63))

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_hidden_size(self) -> int:
        """Width of ``h`` and of each direction's output: ``proj_size`` when the LSTM has
        projections, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    def _state_widths(self) -> list[int]:
        """The last dimension of each state array: ``[h]`` or ``[h, c]``."""
        if self.has_cell_state:
            return [self.output_hidden_size, self.hidden_size]
        return [self.hidden_size]

    def _checked_spec(self) -> Any:
        """The core's ``Spec``, once the parameters it lays out are known to fit: their count
        comes from the core (``Spec.param_count``, without building anything), so
        ``LSTM(1, 1, num_layers=2**40)`` is refused at once (``MemoryError`` naming the model
        and the bytes; ``ValueError`` beyond what a process can address), not after minutes
        of allocating."""
        proj = f", proj_size={self.proj_size}" if self.proj_size else ""
        what = (f"{type(self).__name__}(input_size={self.input_size}, hidden_size="
                f"{self.hidden_size}, num_layers={self.num_layers}, bidirectional="
                f"{self.bidirectional}{proj})")
        if max(self.input_size, self.hidden_size, self.num_layers) > sys.maxsize:
            # Every size multiplies a weight matrix: more bytes than any process can have.
            raise ValueError(f"{what}: the parameters would need more than {sys.maxsize} "
                             f"bytes, more than a process can address")
        spec = _core.Spec(self._cell, self.input_size, self.hidden_size, self.num_layers,
                          self.bidirectional, self.bias, self.batch_first, self.dtype.name,
                          self.proj_size)
        n_values, n_arrays = spec.param_count
        check_parameter_memory(what, n_values, n_arrays, self.dtype)
        return spec

    # ----------------------------------------------------------------- running
    def _seq(self, name: str, value: Any, width: int) -> np.ndarray:
        text = f"(B, T, {width})" if self.batch_first else f"(T, B, {width})"
        return float_array(name, value, self.dtype, 3, text)

    def _state_args(self, name: str, state: Any) -> tuple[Any, Any]:
        if state is None:
            return None, None
        stacks = self.num_layers * self.num_directions
        arrays = [float_array(part, value, self.dtype, 3, f"({stacks}, B, {width})")
                  for (part, value), width in zip(state_parts(name, state, self.has_cell_state),
                                                  self._state_widths())]
        return arrays[0], arrays[1] if len(arrays) == 2 else None

    def _run(self, x: Any, state: Any, lengths: Any, keep_tape: bool,
             memory_budget: Any = None, dropout: tuple[float, int] | None = None
             ) -> tuple[Any, ...]:
        x = self._seq("x", x, self.input_size)
        h0, c0 = self._state_args("state", state)
        lens = None if lengths is None else lengths_array(lengths)
        budget = budget_bytes(memory_budget)
        out, h, c, tape = _core.forward(self._spec, self._weights, x, h0, c0, lens,
                                        keep_tape, self._identity, budget, dropout)
        return out, (h if c is None else (h, c)), tape

    def __call__(self, x: npt.ArrayLike, state: Any = None,
                 lengths: npt.ArrayLike | None = None) -> tuple[np.ndarray, _State]:
        """Inference: ``out, state = m(x, state=None, lengths=None)``; keeps no tape.

        ``x`` is (T, B, input_size), or (B, T, input_size) with ``batch_first``; ``state``
        is h (RNN, GRU) or (h, c) (LSTM), each (num_layers * D, B, hidden_size), None for
        zeros; ``lengths`` (B,) integers in [1, T]: sequence b is processed as if it had
        only its first ``lengths[b]`` steps (its output beyond them is zero).
        """
        out, st, _ = self._run(x, state, lengths, keep_tape=False)
        return out, cast(_State, st)

    def forward(self, x: npt.ArrayLike, state: Any = None,
                lengths: npt.ArrayLike | None = None, *,
                memory_budget: int | None = None, train: bool = True,
                dropout_seed: int | None = None) -> tuple[np.ndarray, _State, _core.Tape]:
        """Training forward: ``out, state, tape``; ``tape`` feeds ``backward``.

        Same arguments as calling the model, plus ``memory_budget``: None keeps the full
        tape; a number of bytes bounds what the tape keeps together with the one segment
        ``backward`` recomputes at a time. Under a budget smaller than the full tape,
        forward keeps only the state at the start of every ``k`` steps (``tape.segment``)
        and backward recomputes each segment from it: the gradients equal the full tape's
        up to float rounding (weight gradients are summed segment by segment), for about
        one extra forward pass of time. A budget below the smallest possible is a
        ``ValueError`` stating that minimum.

        The tape (``tape.nbytes`` bytes) is owned by Rust and belongs to this model: giving
        it to another model is a ``ValueError``. When ``x`` is time-major, C-contiguous and
        of the model's dtype (and no ``lengths``), the tape refers to ``x`` instead of
        copying it: do not modify ``x`` before ``backward`` (a change is detected and is a
        ``ValueError``). ``backward`` uses the parameters as they are then; do not update
        them in between.

        Dropout (a model made with ``dropout=p > 0`` and ``num_layers > 1``): a training
        forward (``train=True``, the default) multiplies the output of every layer but the
        last by a mask of zeros (probability ``p``) and ``1/(1-p)``, as PyTorch does in
        training mode; ``train=False`` or calling the model (inference) never drops. The
        masks are a pure function of ``dropout_seed`` (see ``dropout_masks``); without it
        each call draws a seed from a generator seeded by the model's ``seed``, so a
        seeded model's sequence of forward calls is reproducible. The tape keeps only the
        seed: ``backward`` regenerates the masks, so its gradients are exact.
        """
        train = flag("train", train)
        dropout = None
        if train and self.dropout > 0 and self.num_layers > 1:
            if dropout_seed is None:
                seed = int(self._dropout_rng.integers(0, 2**63))
            else:
                seed = nonnegative_int("dropout_seed", dropout_seed)
            dropout = (self.dropout, seed)
        return self._run(x, state, lengths, keep_tape=True, memory_budget=memory_budget,
                         dropout=dropout)

    def dropout_masks(self, dropout_seed: int, seq_len: int, batch: int) -> np.ndarray:
        """The masks ``forward(..., dropout_seed=dropout_seed)`` applies to an input of
        ``seq_len`` steps and ``batch`` sequences: an array ``(num_layers - 1, seq_len,
        batch, D * H)`` (time-major whatever ``batch_first``; ``D * proj_size`` wide with
        projections) of the model's dtype holding ``0`` or ``1/(1-dropout)``; mask ``l``
        multiplies the output of layer ``l``. Element ``(t, b, j)`` of mask ``l`` depends
        only on the seed, ``l`` and its position, not on the number of threads."""
        seed = nonnegative_int("dropout_seed", dropout_seed)
        shape: tuple[int, int, int] = (positive_int("seq_len", seq_len),
                                       positive_int("batch", batch),
                                       self.num_directions * self.output_hidden_size)
        masks = [_core.dropout_mask(self.dropout, seed, layer, shape, self.dtype.name)
                 for layer in range(self.num_layers - 1)]
        return np.stack(masks) if masks else np.zeros((0, *shape), dtype=self.dtype)

    def backward(self, tape: _core.Tape, d_out: npt.ArrayLike,
                 d_state: Any = None) -> Gradients:
        """Full backpropagation through time over the whole sequence of ``tape``.

        ``d_out`` is ``dL/dout`` (shape of ``out``); ``d_state`` is ``dL/d(final state)``
        (structure of the state; None for zeros). Returns ``Gradients``.
        """
        if not isinstance(tape, _core.Tape):
            raise TypeError(f"tape: expected a Tape returned by forward(), got "
                            f"{type(tape).__name__}")
        d_out = self._seq("d_out", d_out, self.num_directions * self.output_hidden_size)
        dh, dc = self._state_args("d_state", d_state)
        dx, dh0, dc0, grads, dh_norm = _core.backward(self._spec, self._weights, tape, d_out,
                                                      dh, dc, self._identity)
        params = dict(zip(self._names, grads))
        return Gradients(dx, dh0 if dc0 is None else (dh0, dc0), params, dh_norm)

    def _extra_repr(self) -> str:
        return ""

    # ----------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        """Configuration + parameters + a format version (see ``bptt._persist``)."""
        return _persist.model_state(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuilds the model from ``__getstate__``'s dict; a newer format or arrays that do
        not match the configuration are an error."""
        _persist.restore_model(self, state)

    def __repr__(self) -> str:
        drop = f", dropout={self.dropout}" if self.dropout else ""
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}{self._extra_repr()}, bias={self.bias}, "
                f"batch_first={self.batch_first}, bidirectional={self.bidirectional}"
                f"{drop}, dtype={self.dtype.name})")


class LSTM(_Recurrent[tuple[np.ndarray, np.ndarray]]):
    """Long short-term memory, PyTorch's equations and weight layout (gates i, f, g, o).

    ``LSTM(input_size, hidden_size, num_layers=1, *, bias=True, batch_first=False,
    bidirectional=False, proj_size=0, dtype=np.float32, seed=None, dropout=0.0)``; the
    state is ``(h, c)``. ``dropout=p``: PyTorch's dropout between stacked layers, in
    training forward passes only (see ``forward``).

    ``proj_size=P`` (``0 < P < hidden_size``) gives PyTorch's LSTM with projections:
    ``h_t = W_hr (o_t * tanh(c_t))`` with ``weight_hr_l{k}[_reverse]`` of shape
    ``(P, hidden_size)``; ``weight_hh`` is then ``(4 * hidden_size, P)``, ``h`` and each
    direction's output are ``P`` wide (``out`` is ``D * P``, and so is the input of the
    layers above the first), ``c`` stays ``hidden_size`` wide.
    """

    _cell = "lstm"
    has_cell_state = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 bias: bool = True, batch_first: bool = False, bidirectional: bool = False,
                 proj_size: int = 0, dtype: npt.DTypeLike = np.float32,
                 seed: int | None = None, dropout: float = 0.0) -> None:
        self.proj_size = nonnegative_int("proj_size", proj_size)
        super().__init__(input_size, hidden_size, num_layers, bias=bias,
                         batch_first=batch_first, bidirectional=bidirectional, dtype=dtype,
                         seed=seed, dropout=dropout)

    def _extra_repr(self) -> str:
        return f", proj_size={self.proj_size}" if self.proj_size else ""


class GRU(_Recurrent[np.ndarray]):
    """Gated recurrent unit, PyTorch's equations and layout (gates r, z, n; ``b_hn`` inside
    the reset product). Same constructor as ``LSTM`` (without ``proj_size``), including
    ``dropout``; the state is ``h``."""

    _cell = "gru"


class RNN(_Recurrent[np.ndarray]):
    """Elman RNN ``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``, ``act`` = tanh or relu.

    Same constructor as ``LSTM`` (without ``proj_size``, with ``dropout``) plus
    ``nonlinearity="tanh"`` or ``"relu"``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 bidirectional: bool = False, dtype: npt.DTypeLike = np.float32,
                 seed: int | None = None, dropout: float = 0.0) -> None:
        self.nonlinearity = choice("nonlinearity", nonlinearity, ("tanh", "relu"))
        self._cell = f"rnn_{nonlinearity}"
        super().__init__(input_size, hidden_size, num_layers, bias=bias,
                         batch_first=batch_first, bidirectional=bidirectional, dtype=dtype,
                         seed=seed, dropout=dropout)

    def _extra_repr(self) -> str:
        return f", nonlinearity={self.nonlinearity!r}"
