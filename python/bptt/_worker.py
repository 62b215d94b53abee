"""What runs on a Dask worker for ``bptt.dask.DataParallel``: the shards of the training
set, one shard's share of a minibatch gradient, the sum of two shares, and the worker
plugin that sets bptt's threads to the worker's.

Loss scaling. ``loss_fn`` returns a mean over the selected (time, sequence) positions of
its input and the gradient of that mean (``bptt.mse_loss`` and ``cross_entropy_loss``
do). A shard with ``n`` selected positions returns ``n * loss`` and the gradient of
``n * loss`` (it scales ``d_pred`` by ``n`` before backpropagating): sums, which add up
over shards. The client divides the total by the total count ``N``, which gives exactly
the loss and gradient of the mean over the whole minibatch, as one process computes them,
up to float rounding (and a shard's share does not depend on where it runs or how many
shards there are: each is computed alone, and the shares are added in shard order).

This module needs ``distributed`` (the plugin's base class) and is imported only by
``bptt.dask`` and on workers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from . import _core, _persist

__all__ = ["Arrays", "Partial", "Setup", "Shard", "ThreadsPlugin", "add_partials",
           "make_shard", "same", "shard_gradients", "shard_window"]


class ThreadsPlugin(WorkerPlugin):
    """Sets bptt's thread count on every worker to the worker's ``nthreads`` (the number
    of tasks it runs at once), on workers present now and on any that join later, so
    ``n`` workers with ``t`` threads each keep ``n * t`` cores busy, not more."""

    idempotent = True
    name = "bptt-threads"

    def setup(self, worker: Any) -> None:
        """Called by the worker when the plugin is registered or the worker starts."""
        _core.set_num_threads(max(1, int(worker.state.nthreads)))


class Shard:
    """A contiguous range of the training sequences, in the model's layout: ``x`` (T, n,
    I) for a time-major model, (n, T, I) with ``batch_first``; ``y``, ``mask`` and
    ``resets`` with the output's leading axes; ``lengths`` (n,). ``start`` is the global
    index of row 0."""

    __slots__ = ("index", "lengths", "mask", "resets", "start", "x", "y")

    def __init__(self, index: int, start: int, x: np.ndarray, y: np.ndarray,
                 mask: np.ndarray | None, lengths: np.ndarray | None,
                 resets: np.ndarray | None) -> None:
        self.index = index
        self.start = start
        self.x = x
        self.y = y
        self.mask = mask
        self.lengths = lengths
        self.resets = resets

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.index, self.start, self.x, self.y, self.mask, self.lengths, self.resets)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.index, self.start, self.x, self.y, self.mask, self.lengths,
         self.resets) = state

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays held."""
        return sum(a.nbytes for a in (self.x, self.y, self.mask, self.lengths, self.resets)
                   if a is not None)


def make_shard(index: int, start: int, x: Any, y: Any, mask: Any, lengths: Any, resets: Any,
               dtype: str, batch_axis: int) -> Shard:
    """A ``Shard`` from its parts (NumPy arrays; on a worker, computed from dask arrays):
    ``x`` converted to the model's dtype, ``mask``/``resets`` to bool, and, when there are
    ``lengths`` and no ``mask``, the mask they imply (each sequence's first ``lengths[n]``
    steps)."""
    xa = np.ascontiguousarray(x, dtype=dtype)
    la = None if lengths is None else np.ascontiguousarray(lengths, dtype=np.int64)
    ma = None if mask is None else np.ascontiguousarray(mask, dtype=bool)
    if la is not None:
        steps = xa.shape[1 - batch_axis]
        if la.size and (la.min() < 1 or la.max() > steps):
            raise ValueError(f"lengths: expected values in [1, {steps}], got "
                             f"[{la.min()}, {la.max()}]")
        if ma is None:
            t = np.arange(steps)
            ma = t[:, None] < la[None, :] if batch_axis == 1 else la[:, None] > t[None, :]
    return Shard(index, start, xa, np.ascontiguousarray(y), ma, la,
                 None if resets is None else np.ascontiguousarray(resets, dtype=bool))


def same(value: Any) -> Any:
    """The task that moves a value to another worker."""
    return value


class Setup:
    """What does not change between steps, small enough to travel with every task: the
    model's configuration (the worker builds the model once and keeps it), the readout
    (its parameters are overwritten every step), the loss and the options."""

    def __init__(self, token: str, model_config: dict[str, Any], readout: Any,
                 loss_fn: Callable[..., tuple[float, np.ndarray]], batch_axis: int,
                 memory_budget: int | None) -> None:
        self.token = token
        self.model_config = model_config
        self.readout = readout
        self.loss_fn = loss_fn
        self.batch_axis = batch_axis
        self.memory_budget = memory_budget


class Arrays(dict[str, np.ndarray]):
    """The parameters sent for one step: a dict subclass, so that ``client.scatter`` sends
    it as one object (one key) rather than one key per array."""


class Partial:
    """A shard's (or a sum of shards') share of a minibatch: ``loss_sum`` and ``grads``
    are sums over ``count`` selected positions (see the module docstring). ``states``
    (truncated BPTT only) maps shard index to the state its streams carry to the next
    chunk."""

    __slots__ = ("count", "grads", "loss_sum", "states")

    def __init__(self, loss_sum: float, count: int, grads: dict[str, np.ndarray],
                 states: dict[int, Any] | None = None) -> None:
        self.loss_sum = loss_sum
        self.count = count
        self.grads = grads
        self.states = states or {}

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.loss_sum, self.count, self.grads, self.states)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.loss_sum, self.count, self.grads, self.states = state


class _Cached:
    __slots__ = ("lock", "model", "readout")

    def __init__(self, model: Any, readout: Any) -> None:
        self.lock = threading.Lock()
        self.model = model
        self.readout = readout


_CACHE: OrderedDict[str, _Cached] = OrderedDict()
_CACHE_GUARD = threading.Lock()
_CACHE_SIZE = 8


def _cached(setup: Setup) -> _Cached:
    """The model and readout of a training run in this process, built on first use. Tasks
    of the run on one worker share them under the lock (the parameters are written before
    each use); the last few runs are kept."""
    with _CACHE_GUARD:
        entry = _CACHE.get(setup.token)
        if entry is None:
            entry = _Cached(_persist.build_model(setup.model_config), setup.readout)
            _CACHE[setup.token] = entry
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(setup.token)
        return entry


def parameters(model: Any, readout: Any) -> dict[str, np.ndarray]:
    """The live arrays of ``model`` and ``readout``, keys prefixed ``rnn.``/``readout.``."""
    out = {f"rnn.{k}": v for k, v in model.params.items()}
    if readout is not None:
        out.update({f"readout.{k}": v for k, v in readout.params.items()})
    return out


def positions(shape: tuple[int, ...], mask: np.ndarray | None) -> int:
    """The number of (time, sequence) positions a loss is averaged over."""
    return int(shape[0] * shape[1]) if mask is None else int(np.count_nonzero(mask))


def minibatch_share(model: Any, readout: Any, loss_fn: Callable[..., tuple[float, np.ndarray]],
                    x: np.ndarray, y: np.ndarray, mask: np.ndarray | None,
                    lengths: np.ndarray | None, memory_budget: int | None) -> Partial:
    """Forward, loss and full BPTT over one batch; returns the sums (see the module
    docstring), gradients keyed like ``parameters``."""
    count = positions(y.shape, mask)
    params = parameters(model, readout)
    if count == 0:
        return Partial(0.0, 0, {k: np.zeros_like(v) for k, v in params.items()})
    out, _, tape = model.forward(x, lengths=lengths, memory_budget=memory_budget)
    if readout is not None:
        pred, cache = readout.forward(out)
    else:
        pred = out
    loss, d_pred = loss_fn(pred, y, mask)
    d_pred = d_pred * d_pred.dtype.type(count)
    grads: dict[str, np.ndarray] = {}
    if readout is not None:
        d_out, g_ro = readout.backward(cache, d_pred)
        grads.update({f"readout.{k}": v for k, v in g_ro.items()})
    else:
        d_out = d_pred
    g = model.backward(tape, d_out)
    grads.update({f"rnn.{k}": v for k, v in g.params.items()})
    return Partial(float(loss) * count, count, {k: grads[k] for k in params})


def shard_gradients(setup: Setup, shard: Shard, params: Mapping[str, np.ndarray],
                    rows: np.ndarray) -> Partial:
    """The task run per shard and step: the share of the minibatch rows ``rows`` (local
    indices into the shard) computed with the parameters ``params``."""
    ax = setup.batch_axis
    x = np.take(shard.x, rows, axis=ax)
    y = np.take(shard.y, rows, axis=ax)
    mask = None if shard.mask is None else np.take(shard.mask, rows, axis=ax)
    lengths = None if shard.lengths is None else shard.lengths[rows]
    entry = _cached(setup)
    with entry.lock:
        for k, arr in parameters(entry.model, entry.readout).items():
            np.copyto(arr, params[k])
        return minibatch_share(entry.model, entry.readout, setup.loss_fn, x, y, mask,
                               lengths, setup.memory_budget)


def shard_window(setup: Setup, shard: Shard, params: Mapping[str, np.ndarray],
                 window: tuple[int, int, int, int], state: Any) -> Partial:
    """The task run per shard and chunk of ``DataParallel.tbptt``: chunk ``[s, e)`` of
    ``bptt.TBPTT`` for this shard's streams, backpropagated through the window ``[w, e)``
    from the carried ``state`` (at ``w``), with the parameters ``params``. Returns the
    loss and gradient sums and, in ``states``, the state at ``w_next`` (where the next
    window starts), computed with these parameters as ``TBPTT.train`` does."""
    from .tbptt import TBPTT

    w, s, e, w_next = window
    time_major = setup.batch_axis == 1

    def tm(a: np.ndarray | None) -> np.ndarray | None:
        return a if a is None or time_major else np.swapaxes(a, 0, 1)

    x = tm(shard.x)
    y = tm(shard.y)
    assert x is not None and y is not None
    user_mask = tm(shard.mask)
    resets = tm(shard.resets)
    n = x.shape[1]
    mask = np.zeros((e - w, n), dtype=bool)
    mask[s - w:] = True if user_mask is None else user_mask[s:e]
    count = int(np.count_nonzero(mask))
    entry = _cached(setup)
    with entry.lock:
        params_live = parameters(entry.model, entry.readout)
        for k, arr in params_live.items():
            np.copyto(arr, params[k])

        def run(lo: int, hi: int, loss_mask: np.ndarray) -> Any:
            tb = TBPTT(entry.model, entry.readout, setup.loss_fn, None, k1=hi - lo,
                       memory_budget=setup.memory_budget)
            return tb.train(x[lo:hi], y[lo:hi], mask=loss_mask,
                            resets=None if resets is None else resets[lo:hi],
                            state=state, keep_grads=True)

        result = run(w, e, mask)
        if w_next == e:
            new_state = result.state
        elif w_next == w:
            new_state = state
        else:
            new_state = run(w, w_next, np.zeros((w_next - w, n), dtype=bool)).state
    if count == 0:
        return Partial(0.0, 0, {k: np.zeros_like(v) for k, v in params_live.items()},
                       {shard.index: new_state})
    grads = result.grads[0]
    scale = {k: grads[k] * grads[k].dtype.type(count) for k in params_live}
    return Partial(float(result.losses[0]) * count, count, scale, {shard.index: new_state})


def add_partials(a: Partial, b: Partial) -> Partial:
    """The sum of two shares (new arrays; the inputs are left as they are)."""
    return Partial(a.loss_sum + b.loss_sum, a.count + b.count,
                   {k: a.grads[k] + b.grads[k] for k in a.grads}, {**a.states, **b.states})
