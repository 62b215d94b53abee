"""Truncated backpropagation through time over long streams: ``TBPTT(k1, k2)``.

Williams & Peng (1990) call it BPTT(h; h'): run the network forward over a long stream,
and every ``k1`` (h') new steps make one parameter update from the losses of those ``k1``
steps, backpropagated at most ``k2`` (h) steps into the past, ``k2 >= k1``. ``k1 == k2``
is the common case ("split the stream into chunks of k steps, carry the state, detach
it"); ``k2 > k1`` lets the gradient of the newest losses reach further back than one chunk.

The gradient it computes
------------------------
Let the stream have ``T`` steps, and chunk ``j`` hold the new steps ``[s_j, e_j)`` with
``s_j = j * k1`` and ``e_j = min(s_j + k1, T)`` (the last chunk may be shorter). Its
*window* is ``[w_j, e_j)`` with ``w_j = max(0, e_j - k2)`` (so a short last chunk still
looks back ``k2`` steps, even when ``k1 == k2``). With ``theta_j`` the parameters
(recurrent model and readout) before update ``j``, and ``S_j`` the state at ``w_j`` that
the trainer carries (a constant, no gradient flows into it)::

    h_t(theta)  = the model run with theta from S_j over x[w_j:e_j]      (t in [w_j, e_j))
    L_j(theta)  = loss_fn(readout(h_t(theta)) for t in [s_j, e_j),
                          y[s_j:e_j], mask[s_j:e_j])
    g_j         = dL_j/dtheta at theta_j          (exact; BPTT through the whole window)
    theta_j+1   = optimizer step with clip(g_j)

Episode boundaries: where ``resets[t, b]`` is true, stream ``b``'s state is set to zero
before step ``t``, so nothing (activations or gradient) crosses the boundary. Inside a
window this is exact, not approximated: each stream is cut into segments at its resets,
and all segments of all streams run as one padded batch (``lengths=``) in one call to
the core.

The carried state: ``S_0`` is the ``state`` given (zeros by default); ``S_{j+1}``, the
state at ``w_{j+1}``, is read off chunk ``j``'s forward pass, so it was computed with
``theta_j``. With ``k2 > k1`` the steps ``[w_j, s_j)`` are therefore run again with the
newest parameters in every window (a recomputation costing ``k2 - k1`` forward steps per
chunk), which keeps every gradient the exact gradient of a well-defined function rather
than a mix of activations from older parameters.

Special cases: ``k1 == k2 == T`` is one chunk and ``g_0`` is the full-BPTT gradient of the
loss over the whole stream. A chunk whose ``mask`` selects no step has no loss: the
trainer only advances the state (an inference pass, no tape) and makes no update; its loss
and gradient norm are reported as NaN.

All the numerics run in the Rust core, one ``forward``/``backward`` call per part of a
window (at most two parts: before and after ``w_{j+1}``); Python only slices, pads and
gathers whole arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from . import _core
from ._checks import (
    as_array,
    bool_array,
    budget_bytes,
    check_shape,
    flag,
    floating,
    positive_int,
    real_number,
    state_parts,
)
from .clip import clip_grad_norm, clip_grad_value, grad_norm
from .embedding import Embedding
from .nn import mse_loss
from .optim import Optimizer
from .sequential import Sequential

__all__ = ["TBPTT", "TBPTTResult", "parameters"]


def apply_update(grads: dict[str, np.ndarray], kept: list[Any] | None,
                 clip_norm: float | None, clip_value: float | None,
                 optimizer: Optimizer | None, keys: dict[str, str]) -> bool:
    """One chunk's update, as ``TBPTT`` and ``bptt.dask.DataParallel`` make it: keeps a copy
    of the raw gradients in ``kept`` (when given), clips them in place (norm, then value),
    and steps ``optimizer`` with them under its parameter names (``keys``). Returns whether
    an optimizer step was taken."""
    if kept is not None:
        kept.append({k: v.copy() for k, v in grads.items()})
    if clip_norm is not None:
        clip_grad_norm(grads, clip_norm)
    if clip_value is not None:
        clip_grad_value(grads, clip_value)
    if optimizer is None:
        return False
    optimizer.step({keys[k]: v for k, v in grads.items()})
    return True

LossFn = Callable[[np.ndarray, Any, Any], "tuple[float, np.ndarray]"]


def parameters(model: Any, readout: Any = None) -> dict[str, np.ndarray]:
    """The live parameters of ``model`` and ``readout`` in one dict, keys prefixed
    ``"rnn."`` and ``"readout."``: the dict to build an optimizer over for ``TBPTT``."""
    out = {f"rnn.{k}": v for k, v in model.params.items()}
    if readout is not None:
        out.update({f"readout.{k}": v for k, v in readout.params.items()})
    return out


@contextmanager
def _blame(name: str, what: str) -> Iterator[None]:
    """Re-raises a plain ``ValueError``/``TypeError`` from inside (e.g. ``x: expected
    shape`` from a readout) with the argument the user gave first, so a message never
    blames an argument the user did not pass."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        if type(exc) not in (ValueError, TypeError):
            raise
        raise type(exc)(f"{name}: {what}: {exc}") from exc


def _loss_pair(result: Any, pred_shape: tuple[int, ...]) -> tuple[Any, np.ndarray]:
    """``loss_fn``'s ``(loss, d_pred)``, with ``d_pred`` shaped like ``pred``."""
    if not isinstance(result, tuple) or len(result) != 2:
        raise TypeError(f"loss_fn: expected it to return (loss, d_pred), got "
                        f"{type(result).__name__}")
    loss, d_pred = result
    d_pred = floating("loss_fn's d_pred", d_pred)
    if d_pred.shape != pred_shape:
        raise ValueError(f"loss_fn: expected d_pred of the shape of pred {pred_shape}, got "
                         f"{d_pred.shape}")
    return loss, d_pred


class TBPTTResult:
    """What ``TBPTT.train`` returns, one entry per chunk.

    Attributes
    ----------
    losses : ndarray (n_chunks,)
        ``L_j`` (NaN for a chunk with no loss term).
    grad_norms : ndarray (n_chunks,)
        Global L2 norm of ``g_j`` before clipping (NaN when there was no loss term).
    n_terms : ndarray (n_chunks,) int
        Number of selected (time, stream) positions in the chunk's loss.
    updated : ndarray (n_chunks,) bool
        Whether an optimizer step was made.
    chunk_ends : ndarray (n_chunks,) int
        ``e_j``, the end of each chunk's new steps.
    state : the state after the last step (computed with the last chunk's parameters).
    grads : list of dict or None
        ``g_j`` per chunk (before clipping; None for chunks without loss) when
        ``keep_grads=True`` was given, else None.
    """

    def __init__(self, losses: np.ndarray, grad_norms: np.ndarray, n_terms: np.ndarray,
                 updated: np.ndarray, chunk_ends: np.ndarray, state: Any,
                 grads: list[dict[str, np.ndarray] | None] | None) -> None:
        self.losses = losses
        self.grad_norms = grad_norms
        self.n_terms = n_terms
        self.updated = updated
        self.chunk_ends = chunk_ends
        self.state = state
        self.grads = grads

    @property
    def mean_loss(self) -> float:
        """Mean of the chunk losses weighted by their number of terms (NaN if none)."""
        ok = self.n_terms > 0
        if not ok.any():
            return math.nan
        return float(np.sum(self.losses[ok] * self.n_terms[ok]) / np.sum(self.n_terms[ok]))

    def __repr__(self) -> str:
        return (f"TBPTTResult({len(self.losses)} chunks, {int(self.updated.sum())} updates, "
                f"mean_loss={self.mean_loss:.6g})")


class _Part:
    """One forward call over steps [a, b) of the stream, possibly cut at resets and packed
    as a padded batch of segments."""

    __slots__ = ("final", "ids", "out", "pack", "tape")

    def __init__(self, tape: Any, out: np.ndarray, final: list[np.ndarray],
                 pack: Any, ids: np.ndarray | None = None) -> None:
        self.tape = tape
        self.out = out
        self.final = final
        self.pack = pack
        self.ids = ids


class _Pack:
    """Index arrays that map a (L, B) part with resets to a padded batch of segments."""

    __slots__ = ("L", "carried", "first", "last", "lengths", "rows_b", "tt", "valid")

    def __init__(self, resets: np.ndarray) -> None:
        L, _ = resets.shape
        starts = resets.copy()
        starts[0, :] = True
        rows_b, t0 = np.nonzero(starts.T)              # sorted by stream, then time
        n = rows_b.size
        new_b = np.ones(n, dtype=bool)
        new_b[1:] = rows_b[1:] != rows_b[:-1]
        last = np.ones(n, dtype=bool)
        last[:-1] = new_b[1:]
        t1 = np.where(last, L, np.append(t0[1:], L))
        lengths = t1 - t0
        steps = np.arange(int(lengths.max()))[:, None]
        self.rows_b = rows_b
        self.valid = steps < lengths[None, :]
        self.tt = np.where(self.valid, t0[None, :] + steps, 0)
        self.lengths = lengths.astype(np.int64)
        self.first = np.nonzero(new_b)[0]
        self.last = np.nonzero(last)[0]
        self.carried = new_b & ~resets[0, rows_b]
        self.L = L

    def gather(self, a: np.ndarray) -> np.ndarray:
        """(L, B, F) -> (Lmax, N, F) with zeros on padding."""
        out = a[self.tt, self.rows_b[None, :]]
        out[~self.valid] = 0
        return out

    def scatter(self, packed: np.ndarray, batch: int) -> np.ndarray:
        """(Lmax, N, F) -> (L, B, F)."""
        out = np.zeros((self.L, batch) + packed.shape[2:], dtype=packed.dtype)
        out[self.tt[self.valid], np.broadcast_to(self.rows_b, self.valid.shape)[self.valid]] = (
            packed[self.valid])
        return out


class TBPTT:
    """Truncated BPTT trainer: ``TBPTT(model, readout, loss_fn, optimizer, k1=..., k2=...)``.

    Arguments
    ---------
    model : ``bptt.RNN`` / ``LSTM`` / ``GRU`` (any number of layers; not bidirectional,
        since a stream cannot be read backwards). ``batch_first`` models are fine: the
        streams given to ``train`` are always time-major. Or a ``bptt.Sequential`` of
        [``Embedding``] → recurrent → [``Linear``] (then ``readout`` stays None): with an
        embedding, ``x`` holds integer token ids (T, B); gradients and the optimizer's
        keys are the model's ``parameters()`` names.
    readout : a layer with ``forward(h) -> (y, cache)``, ``backward(cache, dy) -> (dh,
        grads)`` and ``params`` (e.g. ``bptt.Linear``), or None to put the loss on the
        recurrent output itself.
    loss_fn : ``loss_fn(pred, target, mask) -> (loss, d_pred)``, e.g. ``bptt.mse_loss``
        (the default) or ``bptt.cross_entropy_loss``; called once per chunk on the chunk's
        new steps (``pred`` (k, B, ...), ``mask`` (k, B) or None).
    optimizer : a ``bptt.optim`` optimizer over (a superset of) the live arrays of the
        model and readout, under any names (matched by identity; ``parameters(model,
        readout)`` gives a ready dict), or None to compute gradients without updating.
    k1 : new steps per update (h'); ``k2`` : steps backpropagated (h), ``k2 >= k1``,
        default ``k1``.
    clip_norm : if set, ``clip_grad_norm(g, clip_norm)`` before each step.
    clip_value : if set, ``clip_grad_value(g, clip_value)`` (after norm clipping).
    error_if_nonfinite : raise ``FloatingPointError`` when a gradient norm is NaN/Inf
        (instead of stepping with it).
    memory_budget : bytes, passed to ``model.forward`` for each window: full BPTT through
        the window in bounded memory (checkpoints, segments recomputed); the gradients are
        the same to float rounding. None keeps the whole window's tape.

    The gradient computed is defined precisely in the module docstring (``help(bptt.tbptt)``).
    """

    def __init__(self, model: Any, readout: Any = None, loss_fn: LossFn = mse_loss,
                 optimizer: Optimizer | None = None, *, k1: int, k2: int | None = None,
                 clip_norm: float | None = None, clip_value: float | None = None,
                 error_if_nonfinite: bool = False, memory_budget: int | None = None) -> None:
        self.embedding: Embedding | None = None
        self._prefix = {"rnn": "rnn.", "readout": "readout.", "embedding": "embedding."}
        if isinstance(model, Sequential):
            if readout is not None:
                raise ValueError(f"readout: the Sequential model has its own layers; pass "
                                 f"readout=None, got {type(readout).__name__}")
            self._prefix.update({k: f"{v}." for k, v in model.names.items()})
            self.embedding = model.embedding
            readout = model.readout
            model = model.rnn
        for attr in ("forward", "backward", "params", "num_layers", "hidden_size"):
            if not hasattr(model, attr):
                raise TypeError(f"model: expected a bptt RNN/LSTM/GRU, got "
                                f"{type(model).__name__}")
        if getattr(model, "bidirectional", False):
            raise ValueError("model: truncated BPTT over a stream needs a unidirectional "
                             "model, got bidirectional=True")
        if readout is not None:
            for attr in ("forward", "backward", "params"):
                if not hasattr(readout, attr):
                    raise TypeError(f"readout: expected a layer with forward/backward/params "
                                    f"(e.g. bptt.Linear), got {type(readout).__name__}")
            width = getattr(readout, "in_features", None)
            proj = getattr(model, "proj_size", 0)
            if isinstance(width, int) and width != (proj or model.hidden_size):
                what = f"proj_size ({proj})" if proj else f"hidden_size ({model.hidden_size})"
                raise ValueError(f"readout: expected in_features = the model's {what}, "
                                 f"got {width}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a callable, got {type(loss_fn).__name__}")
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a bptt.optim optimizer or None, got "
                            f"{type(optimizer).__name__}")
        self.k1 = positive_int("k1", k1)
        self.k2 = self.k1 if k2 is None else positive_int("k2", k2)
        if self.k2 < self.k1:
            raise ValueError(f"k2: expected k2 >= k1 = {self.k1}, got {self.k2}")
        if clip_norm is not None and not real_number("clip_norm", clip_norm) > 0:
            raise ValueError(f"clip_norm: expected a positive number or None, got {clip_norm}")
        if clip_value is not None and not real_number("clip_value", clip_value) >= 0:
            raise ValueError(f"clip_value: expected a number >= 0 or None, got {clip_value}")
        self.model = model
        self.readout = readout
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.error_if_nonfinite = flag("error_if_nonfinite", error_if_nonfinite)
        self.memory_budget = budget_bytes(memory_budget)
        self._has_cell_state = bool(getattr(model, "has_cell_state", False))
        self._keys: dict[str, str] = {}
        if optimizer is not None:
            by_id = {id(v): k for k, v in optimizer.params.items()}
            for name, arr in self._parameters().items():
                if id(arr) not in by_id:
                    raise ValueError(f"optimizer: does not hold the live array of {name}; "
                                     f"build it over model.parameters() (a Sequential) or "
                                     f"tbptt.parameters(model, readout)")
                self._keys[name] = by_id[id(arr)]

    def _parameters(self) -> dict[str, np.ndarray]:
        """The live arrays under the names the gradients get (a Sequential's own names,
        else ``"rnn."`` / ``"readout."``)."""
        out = {}
        for role, layer in (("embedding", self.embedding), ("rnn", self.model),
                            ("readout", self.readout)):
            if layer is not None:
                out.update({self._prefix[role] + k: v for k, v in layer.params.items()})
        return out

    # ------------------------------------------------------------------ state helpers
    def _parts(self, state: Any) -> list[np.ndarray]:
        return list(state) if self._has_cell_state else [state]

    def _join(self, parts: list[np.ndarray]) -> Any:
        return (parts[0], parts[1]) if self._has_cell_state else parts[0]

    def _initial_state(self, state: Any, batch: int) -> list[np.ndarray]:
        """``train``'s ``state`` as a list of arrays of the model's dtype, checked as the
        model checks a state (structure, floating dtype, shape)."""
        m = self.model
        if state is None:
            return self._zeros(batch)
        named = state_parts("state", state, self._has_cell_state)
        parts = []
        for (name, value), width in zip(named, self._widths()):
            arr = floating(name, value, hint=f" (converted to {m.dtype})")
            check_shape(name, arr, (m.num_layers, batch, width))
            parts.append(np.ascontiguousarray(arr, dtype=m.dtype))
        return parts

    def _widths(self) -> list[int]:
        """The last dimension of each state array (``h`` is ``proj_size`` wide in an LSTM
        with projections)."""
        m = self.model
        h_width = getattr(m, "proj_size", 0) or m.hidden_size
        return [h_width, m.hidden_size] if self._has_cell_state else [h_width]

    def _zeros(self, batch: int) -> list[np.ndarray]:
        m = self.model
        return [np.zeros((m.num_layers, batch, w), dtype=m.dtype) for w in self._widths()]

    # ------------------------------------------------------------------ core calls
    def _call(self, x: np.ndarray, state: list[np.ndarray], lengths: Any,
              keep_tape: bool) -> tuple[np.ndarray, list[np.ndarray], Any]:
        m = self.model
        if self.embedding is not None:
            x = self.embedding(x)
        xin = np.ascontiguousarray(x.swapaxes(0, 1)) if m.batch_first else x
        st = self._join(state)
        if keep_tape:
            out, fin, tape = m.forward(xin, st, lengths=lengths,
                                       memory_budget=self.memory_budget)
        else:
            out, fin = m(xin, st, lengths=lengths)
            tape = None
        if m.batch_first:
            out = out.swapaxes(0, 1)
        return out, self._parts(fin), tape

    def _run(self, x: np.ndarray, resets: np.ndarray | None, state: list[np.ndarray],
             keep_tape: bool) -> _Part:
        """Forward over one part (L, B, F) from the per-stream ``state``."""
        if resets is None or not resets.any():
            out, fin, tape = self._call(x, state, None, keep_tape)
            return _Part(tape, out, fin, None, x if self.embedding is not None else None)
        pack = _Pack(resets)
        batch = x.shape[1]
        st = [s[:, pack.rows_b] * pack.carried[None, :, None].astype(s.dtype) for s in state]
        xp = pack.gather(x)
        out_p, fin_p, tape = self._call(xp, st, pack.lengths, keep_tape)
        fin = [np.ascontiguousarray(f[:, pack.last]) for f in fin_p]
        return _Part(tape, pack.scatter(out_p, batch), fin, pack,
                     xp if self.embedding is not None else None)

    def _back(self, part: _Part, d_out: np.ndarray,
              d_final: list[np.ndarray] | None) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """BPTT through one part; returns parameter grads and d(initial state) per stream."""
        m = self.model
        pack = part.pack
        if pack is None:
            d_o, d_s = d_out, d_final
        else:
            d_o = pack.gather(d_out)
            if d_final is None:
                d_s = None
            else:
                n = pack.rows_b.size
                d_s = []
                for s in d_final:
                    z = np.zeros((s.shape[0], n, s.shape[2]), dtype=s.dtype)
                    z[:, pack.last] = s
                    d_s.append(z)
        if m.batch_first:
            d_o = np.ascontiguousarray(d_o.swapaxes(0, 1))
        g = m.backward(part.tape, d_o, None if d_s is None else self._join(d_s))
        d0 = self._parts(g.dstate)
        if pack is not None:
            keep = pack.carried[pack.first].astype(d0[0].dtype)[None, :, None]
            d0 = [d[:, pack.first] * keep for d in d0]
        params = dict(g.params)
        emb = self.embedding
        if emb is not None and part.ids is not None:
            dx = g.dx.swapaxes(0, 1) if m.batch_first else g.dx
            if pack is not None:
                dx = np.where(pack.valid[:, :, None], dx, 0)
            ids = np.ascontiguousarray(part.ids.ravel(), dtype=np.int64)
            params["\0embedding"] = _core.embedding_backward(
                ids, np.ascontiguousarray(dx).reshape(-1, emb.embedding_dim),
                emb.num_embeddings, emb.padding_idx)
        return params, d0

    # ------------------------------------------------------------------ training
    def train(self, x: Any, y: Any, *, mask: Any = None, resets: Any = None,
              state: Any = None, keep_grads: bool = False,
              callback: Callable[[int, int, float, float], None] | None = None) -> TBPTTResult:
        """Runs TBPTT(k1, k2) over a stream and returns a ``TBPTTResult``.

        ``x`` (T, B, input_size): B parallel streams, time-major (whatever the model's
        ``batch_first``). ``y``: targets with leading axes (T, B), passed to ``loss_fn``
        chunk by chunk. ``mask`` (T, B) bool: where the loss is taken (None: everywhere).
        ``resets`` (T, B) bool: reset stream b's state to zero before step t (episode
        starts; None: no resets). ``state``: the state before step 0 (None: zeros).
        ``keep_grads``: keep every chunk's gradient in the result. ``callback(j, n_chunks,
        loss, grad_norm)`` is called after each chunk (e.g. for a progress bar).
        """
        m = self.model
        if self.embedding is not None:
            x = as_array("x", x, "an integer array of token ids (T, B)")
            if x.dtype.kind not in "iu":
                raise TypeError(f"x: expected an integer array of token ids (T, B) for the "
                                f"model's embedding, got dtype {x.dtype}")
            want = "(T, B)"
            ok = x.ndim == 2
        else:
            x = floating("x", x)
            want = f"(T, B, {m.input_size})"
            ok = x.ndim == 3 and x.shape[2] == m.input_size
        if not ok or min(x.shape) < 1:
            raise ValueError(f"x: expected shape {want} with T, B >= 1, got {x.shape}")
        if self.embedding is not None:
            x = np.ascontiguousarray(self.embedding._ids(x), dtype=np.int64)   # range checked
        else:
            x = np.ascontiguousarray(x, dtype=m.dtype)
        T, B = x.shape[:2]
        y = as_array("y", y, f"targets with leading shape ({T}, {B})")
        if y.shape[:2] != (T, B):
            if y.shape[:2] == (B, T) and m.batch_first:
                raise ValueError(
                    f"x: expected time-major streams {want} with y's leading shape "
                    f"{y.shape[:2]}, got {x.shape}: x looks batch-first, as the model's "
                    f"batch_first=True suggests, but TBPTT.train takes x and y time-major "
                    f"whatever the model's batch_first (use x.swapaxes(0, 1))")
            if y.shape[:2] == (B, T):
                raise ValueError(
                    f"y: expected leading shape ({T}, {B}) (time-major, as x {x.shape}), got "
                    f"{y.shape}: one of x and y is batch-first; TBPTT.train takes both "
                    f"time-major (T, B, ...)")
            raise ValueError(f"y: expected leading shape ({T}, {B}) (that of x {x.shape}), "
                             f"got {y.shape}")
        mask_a = bool_array("mask", mask, (T, B))
        resets_a = bool_array("resets", resets, (T, B))
        cur = self._initial_state(state, B)
        keep_grads = flag("keep_grads", keep_grads)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback: expected a callable or None, got "
                            f"{type(callback).__name__}")

        n_chunks = -(-T // self.k1)
        losses = np.full(n_chunks, np.nan)
        norms = np.full(n_chunks, np.nan)
        n_terms = np.zeros(n_chunks, dtype=np.int64)
        updated = np.zeros(n_chunks, dtype=bool)
        ends = np.zeros(n_chunks, dtype=np.int64)
        kept: list[dict[str, np.ndarray] | None] | None = [] if keep_grads else None

        def sl(a: np.ndarray | None, lo: int, hi: int) -> np.ndarray | None:
            return None if a is None else a[lo:hi]

        w = 0
        for j in range(n_chunks):
            s, e = j * self.k1, min((j + 1) * self.k1, T)
            ends[j] = e
            w_next = e if e == T else max(0, min(e + self.k1, T) - self.k2)
            mk = sl(mask_a, s, e)
            terms = (e - s) * B if mk is None else int(mk.sum())
            n_terms[j] = terms
            if terms == 0:
                if w_next > w:
                    cur = self._run(x[w:w_next], sl(resets_a, w, w_next), cur, False).final
                w = w_next
                if kept is not None:
                    kept.append(None)
                if callback is not None:
                    callback(j, n_chunks, math.nan, math.nan)
                continue

            part_a = (self._run(x[w:w_next], sl(resets_a, w, w_next), cur, True)
                      if w_next > w else None)
            mid = part_a.final if part_a is not None else cur
            part_b = (self._run(x[w_next:e], sl(resets_a, w_next, e), mid, True)
                      if e > w_next else None)
            outs = [p.out for p in (part_a, part_b) if p is not None]
            out = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)
            h_new = out[s - w:]
            if self.readout is not None:
                with _blame("readout", f"forward() of the model's output {h_new.shape}"):
                    pred, cache = self.readout.forward(h_new)
            else:
                pred = h_new
            with _blame("y", f"loss_fn(pred {np.shape(pred)}, y[{s}:{e}], mask) failed"):
                result = self.loss_fn(pred, y[s:e], mk)
            loss, d_pred = _loss_pair(result, np.shape(pred))
            grads: dict[str, np.ndarray] = {}
            if self.readout is not None:
                d_h, g_ro = self.readout.backward(cache, d_pred)
                grads.update({self._prefix["readout"] + k: v for k, v in g_ro.items()})
            else:
                d_h = d_pred
            d_out = np.zeros_like(out)
            d_out[s - w:] = d_h
            d_state = None
            g_rnn: dict[str, np.ndarray] = {}
            if part_b is not None:
                g_rnn, d_state = self._back(part_b, d_out[w_next - w:], None)
            if part_a is not None:
                g_a, _ = self._back(part_a, d_out[:w_next - w], d_state)
                g_rnn = g_a if not g_rnn else {k: g_rnn[k] + g_a[k] for k in g_rnn}
            g_emb = g_rnn.pop("\0embedding", None)
            grads.update({self._prefix["rnn"] + k: v for k, v in g_rnn.items()})
            if g_emb is not None:
                grads[self._prefix["embedding"] + "weight"] = g_emb

            norm = grad_norm(grads)
            if self.error_if_nonfinite and not math.isfinite(norm):
                raise FloatingPointError(f"chunk {j}: the gradient norm is {norm}")
            updated[j] = apply_update(grads, kept, self.clip_norm, self.clip_value,
                                      self.optimizer, self._keys)
            losses[j], norms[j] = loss, norm
            cur = mid
            w = w_next
            if callback is not None:
                callback(j, n_chunks, float(loss), norm)
        return TBPTTResult(losses, norms, n_terms, updated, ends, self._join(cur), kept)

    def train_stream(self, pieces: Iterable[Any], *, state: Any = None,
                     keep_grads: bool = False,
                     callback: Callable[[int, int, float, float], None] | None = None
                     ) -> TBPTTResult:
        """Runs TBPTT over a stream read piece by piece, so that a long corpus never has to
        be one array: ``pieces`` yields ``(x, y)`` or ``(x, y, mask)`` tuples, each
        time-major with the same B (a generator reading a file works). The state is carried
        from piece to piece; the result covers all pieces (``chunk_ends`` counted from the
        start of the stream).

        With every piece but the last a multiple of ``k1`` steps long, this is exactly
        ``train`` over the concatenated pieces; a shorter piece ends with a shorter
        update. Needs ``k2 == k1`` (a window never reaches into an earlier piece).
        ``callback`` gets ``n_chunks = -1`` (the length of a stream is not known).
        """
        if self.k2 != self.k1:
            raise ValueError(f"k2: train_stream needs k2 == k1 (windows within one piece), "
                             f"got k1={self.k1}, k2={self.k2}")
        if isinstance(pieces, np.ndarray) or not hasattr(pieces, "__iter__"):
            raise TypeError(f"pieces: expected an iterable of (x, y) or (x, y, mask) tuples, "
                            f"got {type(pieces).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback: expected a callable or None, got "
                            f"{type(callback).__name__}")
        results: list[TBPTTResult] = []
        offset, done = 0, 0
        cur = state
        for i, piece in enumerate(pieces):
            if not isinstance(piece, (tuple, list)) or len(piece) not in (2, 3):
                raise TypeError(f"pieces[{i}]: expected a tuple (x, y) or (x, y, mask), got "
                                f"{type(piece).__name__}")
            x, y = piece[0], piece[1]
            mask = piece[2] if len(piece) == 3 else None

            def relay(j: int, _n: int, loss: float, norm: float, base: int = done) -> None:
                if callback is not None:
                    callback(base + j, -1, loss, norm)

            try:
                r = self.train(x, y, mask=mask, state=cur, keep_grads=keep_grads,
                               callback=relay)
            except (ValueError, TypeError) as exc:
                if type(exc) not in (ValueError, TypeError):
                    raise
                raise type(exc)(f"pieces[{i}]: {exc}") from exc
            r.chunk_ends = r.chunk_ends + offset
            offset = int(r.chunk_ends[-1])
            done += len(r.losses)
            cur = r.state
            results.append(r)
        if not results:
            raise ValueError("pieces: expected at least one (x, y) piece, got none")
        grads: list[dict[str, np.ndarray] | None] | None = None
        if keep_grads:
            grads = [g for r in results for g in (r.grads or [])]
        return TBPTTResult(np.concatenate([r.losses for r in results]),
                           np.concatenate([r.grad_norms for r in results]),
                           np.concatenate([r.n_terms for r in results]),
                           np.concatenate([r.updated for r in results]),
                           np.concatenate([r.chunk_ends for r in results]), cur, grads)

    def __repr__(self) -> str:
        return (f"TBPTT(k1={self.k1}, k2={self.k2}, model={self.model!r}, "
                f"readout={self.readout!r}, clip_norm={self.clip_norm})")
