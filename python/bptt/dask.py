"""bptt on Dask: inference over dask arrays and data-parallel training on a
``dask.distributed`` cluster. Optional: ``pip install bptt[dask]`` (dask + distributed);
``import bptt`` never imports this module or dask.

Inference: ``out, state = bptt.dask.predict(model, x, state=None, lengths=None)``
    ``x`` is a dask array chunked along the batch axis only (the time and feature axes in
    one chunk each); each batch chunk is one call of ``model(...)`` on the worker that
    holds it, so the lazy result equals ``model(x.compute(), ...)`` bit for bit (the same
    kernels on the same rows). The model is copied into the graph once, as its own key:
    a worker fetches it once, whatever the number of chunks.

Training: ``dp = bptt.dask.DataParallel(client, model, readout, loss_fn, optimizer)``
    ``dp.scatter(x, y, mask=..., lengths=...)`` gives each worker one contiguous shard of
    the training sequences, once (NumPy arrays from the client; dask arrays computed on
    the workers, never passing through the client). Each ``dp.step(batch)`` then sends the current
    parameters to the workers; each computes forward, loss and full BPTT on its rows of
    the minibatch ``batch`` and returns its loss and gradient *sums*; the sums are added
    pairwise in a tree on the workers, the client divides by the number of loss terms and
    the optimizer steps once. The gradient is that of one process on the same minibatch
    (the same loss scaling), up to float rounding. ``dp.tbptt(k1, k2)`` runs truncated
    BPTT (``bptt.TBPTT``'s schedule) over the sequences as parallel streams.

Faults: a worker that dies during a step loses its shard; the client scatters the shard
again from its own copy (or the scheduler recomputes it from its graph) on a live worker
and recomputes the step (shards keep their rows
and the sums are added in shard order, so the result does not depend on where shards
live). A worker that raises surfaces as the original exception on the client.

Threads: bptt's thread count on each worker follows the worker's ``nthreads`` (a worker
plugin, registered by ``DataParallel`` and by ``predict`` when a distributed client is
active; ``follow_worker_threads(client)`` registers it explicitly).
"""

from __future__ import annotations

import copy
import math
import operator
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

try:
    import dask.array as da
    from dask.base import tokenize
    from dask.delayed import delayed
    from dask.highlevelgraph import HighLevelGraph
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("bptt.dask needs dask: pip install 'bptt[dask]' (dask and "
                      "distributed)") from exc

from . import _persist
from ._checks import positive_int
from .clip import clip_grad_norm, clip_grad_value, grad_norm
from .nn import mse_loss
from .optim import Optimizer
from .tbptt import TBPTTResult, apply_update

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DataParallel", "StepInfo", "follow_worker_threads", "predict"]

_FOLLOWING: set[str] = set()


# =========================================================================== threads
def follow_worker_threads(client: Any) -> None:
    """Makes bptt on every worker of ``client`` use as many threads as the worker runs
    tasks at once (its ``nthreads``), now and on workers that join later.

    Without it, each worker process would use every CPU of its machine: two workers with
    one thread each on a 2-core machine would run 4 busy threads, not 2.
    """
    from ._worker import ThreadsPlugin

    client.register_plugin(ThreadsPlugin())
    _FOLLOWING.add(str(client.id))


def _follow_active_client() -> None:
    """Registers the threads plugin on the active distributed client, if there is one
    (without importing distributed when it is not in use)."""
    if "distributed" not in sys.modules:
        return
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        return
    if str(client.id) not in _FOLLOWING:
        follow_worker_threads(client)


# =========================================================================== inference
def _predict_chunk(model: Any, x: np.ndarray, lengths: np.ndarray | None,
                   h0: np.ndarray | None, c0: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One batch chunk: ``model(x, state, lengths)`` as ``(out, h, c or None)``."""
    lstm = model._cell == "lstm"
    batch = x.shape[0 if model.batch_first else 1]
    if batch == 0:
        t = x.shape[1 if model.batch_first else 0]
        width = model.num_directions * model.hidden_size
        out_shape = (0, t, width) if model.batch_first else (t, 0, width)
        st_shape = (model.num_layers * model.num_directions, 0, model.hidden_size)
        empty = np.zeros(st_shape, dtype=model.dtype)
        return np.zeros(out_shape, dtype=model.dtype), empty, (empty if lstm else None)
    state = None if h0 is None else ((h0, c0) if lstm else h0)
    out, st = model(x, state, lengths)
    if lstm:
        return out, st[0], st[1]
    return out, st, None


def _as_dask(name: str, value: Any) -> Any:
    if isinstance(value, da.Array):
        return value
    arr = np.asarray(value)
    return da.from_array(arr, chunks=arr.shape or ())


def predict(model: Any, x: Any, state: Any = None, lengths: Any = None
            ) -> tuple[Any, Any]:
    """Inference over a dask array: ``out, state = predict(model, x, state, lengths)``.

    Same arguments and results as ``model(x, state, lengths)``, as lazy dask arrays:

    - ``x``: a dask array (a NumPy array is taken as one chunk), (T, B, input_size) or
      (B, T, input_size) with ``batch_first``, chunked along the batch axis in any way;
      the time and feature axes must each be one chunk (``ValueError`` otherwise: the
      recurrence needs whole sequences; rechunk with ``x.rechunk({t: -1, 2: -1})``).
    - ``state``: None, or h (RNN, GRU) / (h, c) (LSTM), each (num_layers * D, B,
      hidden_size), NumPy or dask; rechunked to ``x``'s batch chunks.
    - ``lengths``: None, or (B,) integers as a NumPy or dask array; rechunked likewise.

    Returns ``out`` chunked like ``x`` along the batch axis, and the final state (dask
    arrays with the same batch chunks). Each chunk is one ``model(...)`` call on its rows,
    so computing the result gives exactly the bits of ``model(x.compute(), ...)``. The
    parameters are those of ``model`` when ``predict`` is called (a snapshot: training
    the model afterwards does not change this result). The snapshot is one key of the
    graph, named by a hash of the configuration and parameters, so the same model in the
    same state gives the same key, and a distributed worker receives it once however many
    chunks it computes.
    """
    for attr in ("forward", "params", "batch_first", "input_size", "hidden_size"):
        if not hasattr(model, attr):
            raise TypeError(f"model: expected a bptt RNN/LSTM/GRU, got {type(model).__name__}")
    _follow_active_client()
    x = _as_dask("x", x)
    bax, tax = (0, 1) if model.batch_first else (1, 0)
    layout = "(B, T, input_size)" if model.batch_first else "(T, B, input_size)"
    if x.ndim != 3:
        raise ValueError(f"x: expected a 3-d array {layout}, got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"x: expected a floating-point array (converted to {model.dtype}), "
                        f"got dtype {x.dtype}")
    if x.shape[2] != model.input_size:
        raise ValueError(f"x: expected shape {layout[:-11]}{model.input_size}), got "
                         f"{x.shape}")
    if len(x.chunks[tax]) != 1 or len(x.chunks[2]) != 1:
        fix = f"{{{tax}: -1, 2: -1}}"
        raise ValueError(f"x: expected one chunk along the time axis ({tax}) and the feature "
                         f"axis (2), chunks only along the batch axis ({bax}); got chunks "
                         f"{x.chunks}. Rechunk with x.rechunk({fix}).")
    bchunks = tuple(x.chunks[bax])
    if any(math.isnan(c) for c in bchunks):
        raise ValueError("x: the batch chunk sizes are unknown (nan); call "
                         "x.compute_chunk_sizes() first")
    batch = int(sum(bchunks))
    steps = int(x.shape[tax])

    snapshot = copy.deepcopy(model)
    model_key = "bptt-model-" + tokenize(_persist.model_config(snapshot),
                                         type(snapshot).__name__, snapshot.params)

    deps: list[Any] = [x]
    len_arr = None
    if lengths is not None:
        len_arr = _as_dask("lengths", lengths)
        if len_arr.dtype.kind not in "iu":
            raise TypeError(f"lengths: expected an integer array of shape (B,), got dtype "
                            f"{len_arr.dtype}")
        if len_arr.shape != (batch,):
            raise ValueError(f"lengths: expected shape ({batch},), got {len_arr.shape}")
        len_arr = len_arr.rechunk((bchunks,))
        deps.append(len_arr)

    lstm = snapshot._cell == "lstm"
    n_state = snapshot.num_layers * snapshot.num_directions
    st_shape = (n_state, batch, snapshot.hidden_size)
    st_chunks = ((n_state,), bchunks, (snapshot.hidden_size,))
    h0 = c0 = None
    if state is not None:
        if lstm:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(f"state: expected a tuple (h, c) for an LSTM, got "
                                f"{type(state).__name__}")
            parts = [("state[0]", state[0]), ("state[1]", state[1])]
        else:
            if isinstance(state, (tuple, list)):
                raise TypeError(f"state: expected a single array h, got "
                                f"{type(state).__name__}")
            parts = [("state", state)]
        arrs = []
        for name, value in parts:
            arr = _as_dask(name, value)
            if arr.dtype.kind != "f":
                raise TypeError(f"{name}: expected a floating-point array, got dtype "
                                f"{arr.dtype}")
            if arr.shape != st_shape:
                raise ValueError(f"{name}: expected shape {st_shape}, got {arr.shape}")
            arrs.append(arr.rechunk(st_chunks))
        deps += arrs
        h0 = arrs[0]
        c0 = arrs[1] if lstm else None

    token = tokenize(model_key, *(d.name for d in deps))
    run_name = f"bptt-predict-{token}"
    run_layer: dict[Any, Any] = {}
    for i in range(len(bchunks)):
        xk = (x.name, i, 0, 0) if model.batch_first else (x.name, 0, i, 0)
        run_layer[(run_name, i)] = (
            _predict_chunk, model_key, xk,
            None if len_arr is None else (len_arr.name, i),
            None if h0 is None else (h0.name, 0, i, 0),
            None if c0 is None else (c0.name, 0, i, 0))
    graph = HighLevelGraph.from_collections(run_name, run_layer, dependencies=deps)
    layers: dict[str, Any] = dict(graph.layers)
    dependencies = {k: set(v) for k, v in graph.dependencies.items()}
    layers[model_key] = {model_key: snapshot}
    dependencies[model_key] = set()
    dependencies[run_name].add(model_key)

    def output(name: str, item: int, key: Callable[[int], tuple[Any, ...]],
               chunks: tuple[tuple[int, ...], ...]) -> Any:
        layer = {key(i): (operator.getitem, (run_name, i), item) for i in range(len(bchunks))}
        lay = {**layers, name: layer}
        dep = {**dependencies, name: {run_name}}
        meta = np.empty((0, 0, 0), dtype=snapshot.dtype)
        return da.Array(HighLevelGraph(lay, dep), name, chunks=chunks, meta=meta)

    width = snapshot.num_directions * snapshot.hidden_size
    if model.batch_first:
        out = output(f"bptt-out-{token}", 0, lambda i: (f"bptt-out-{token}", i, 0, 0),
                     (bchunks, (steps,), (width,)))
    else:
        out = output(f"bptt-out-{token}", 0, lambda i: (f"bptt-out-{token}", 0, i, 0),
                     ((steps,), bchunks, (width,)))
    h = output(f"bptt-h-{token}", 1, lambda i: (f"bptt-h-{token}", 0, i, 0), st_chunks)
    if lstm:
        c = output(f"bptt-c-{token}", 2, lambda i: (f"bptt-c-{token}", 0, i, 0), st_chunks)
        return out, (h, c)
    return out, h


# =========================================================================== training
class StepInfo:
    """What the last ``DataParallel.gradients``/``step`` moved and how long it took.

    Attributes
    ----------
    seconds : float
        Wall time of the distributed part (parameters out to the gradient back).
    bytes_from_client : int
        The parameters, sent once to one worker, plus the minibatch's row indices.
    bytes_between_workers : int
        The parameters copied from worker to worker until every worker holds them (a
        broadcast tree: ``(workers - 1) * params``), plus the gradient sums moved by the
        reduction tree (at most one gradient-sized partial per addition).
    bytes_to_client : int
        The reduced gradient sum sent back to the client.
    shards : int
        Shards that took part (those with rows in the minibatch).
    attempts : int
        1, or more when the step was recomputed after a worker was lost.
    """

    __slots__ = ("attempts", "bytes_between_workers", "bytes_from_client", "bytes_to_client",
                 "seconds", "shards")

    def __init__(self, seconds: float, bytes_from_client: int, bytes_between_workers: int,
                 bytes_to_client: int, shards: int, attempts: int) -> None:
        self.seconds = seconds
        self.bytes_from_client = bytes_from_client
        self.bytes_between_workers = bytes_between_workers
        self.bytes_to_client = bytes_to_client
        self.shards = shards
        self.attempts = attempts

    @property
    def total_bytes(self) -> int:
        """All bytes of the step's arrays that crossed a process boundary."""
        return self.bytes_from_client + self.bytes_between_workers + self.bytes_to_client

    def __repr__(self) -> str:
        return (f"StepInfo({self.seconds * 1e3:.1f} ms, from client {self.bytes_from_client} B, "
                f"between workers {self.bytes_between_workers} B, to client "
                f"{self.bytes_to_client} B, shards={self.shards}, attempts={self.attempts})")


def _eager_array(value: Any) -> Any:
    return np.asarray(value)


def _lazy_array(value: Any) -> Any:
    return value if isinstance(value, da.Array) else da.asarray(value)


def _check_bools(name: str, arr: Any, shape: tuple[int, ...]) -> Any:
    if arr is None:
        return None
    if arr.dtype.kind not in "biu":
        raise TypeError(f"{name}: expected a bool array of shape {shape}, got dtype "
                        f"{arr.dtype}")
    if tuple(arr.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
    return arr


class _Slot:
    """The client's record of one shard: its rows, its copy (NumPy input) or the graph
    that makes it (dask input), its future and the worker that holds it."""

    __slots__ = ("future", "graph", "shard", "stop", "worker")

    def __init__(self, shard: Any, graph: Any, stop: int) -> None:
        self.shard = shard
        self.graph = graph
        self.stop = stop
        self.future: Any = None
        self.worker: str | None = None


def _lost_worker_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a worker (and what it held) went away, not a failing task."""
    from asyncio import CancelledError
    from concurrent.futures import CancelledError as FuturesCancelledError

    from distributed import KilledWorker
    from distributed.comm.core import CommClosedError

    return (CancelledError, FuturesCancelledError, KilledWorker, CommClosedError)


class DataParallel:
    """Data-parallel training of a bptt model on a ``dask.distributed`` cluster.

    ``DataParallel(client, model, readout=None, loss_fn=bptt.mse_loss, optimizer=None, *,
    clip_norm=None, clip_value=None, memory_budget=None, max_retries=3, timeout=None)``

    - ``client``: a ``distributed.Client``.
    - ``model``: a bptt ``RNN``/``LSTM``/``GRU``; ``readout``: a layer with ``forward`` /
      ``backward`` / ``params`` (e.g. ``bptt.Linear``) or None (the loss is put on the
      recurrent output itself). Both must pickle (bptt's do).
    - ``loss_fn(pred, target, mask) -> (loss, d_pred)``: a *mean* over the selected
      (time, sequence) positions and its gradient, like ``bptt.mse_loss`` and
      ``bptt.cross_entropy_loss``; it runs on the workers, so it must pickle (a module
      level function does).
    - ``optimizer``: a ``bptt.optim`` optimizer over the live arrays of ``model`` and
      ``readout`` (any keys; matched by identity, e.g. over ``bptt.tbptt.parameters(model,
      readout)``); needed by ``step``, not by ``gradients``.
    - ``clip_norm`` / ``clip_value``: clipping applied to the combined gradient before
      each optimizer step; ``memory_budget``: bytes, passed to ``model.forward`` on the
      workers (checkpointed BPTT, same gradients up to rounding).
    - ``max_retries``: how many times a step is recomputed after losing workers;
      ``timeout``: seconds to wait for a step's result (None: no limit), after which
      ``TimeoutError`` is raised (a worker that hangs rather than dies).

    Use: ``scatter`` the training set once, then call ``step(batch)`` per minibatch
    (``batch``: the global indices of its sequences). ``gradients(batch)`` returns the
    loss and gradient without stepping; ``tbptt(k1, k2)`` trains with truncated BPTT over
    the sequences as streams. Gradient keys are ``"rnn.<name>"`` and ``"readout.<name>"``.

    Attributes
    ----------
    last_step : StepInfo or None
        Time and bytes of the last distributed step.
    recoveries : int
        Attempts recomputed after a worker was lost.
    """

    def __init__(self, client: Any, model: Any, readout: Any = None,
                 loss_fn: Callable[..., tuple[float, np.ndarray]] = mse_loss,
                 optimizer: Optimizer | None = None, *, clip_norm: float | None = None,
                 clip_value: float | None = None, memory_budget: int | None = None,
                 max_retries: int = 3, timeout: float | None = None) -> None:
        from distributed import Client

        from ._worker import parameters

        if not isinstance(client, Client):
            raise TypeError(f"client: expected a distributed.Client, got "
                            f"{type(client).__name__}")
        for attr in ("forward", "backward", "params", "batch_first"):
            if not hasattr(model, attr):
                raise TypeError(f"model: expected a bptt RNN/LSTM/GRU, got "
                                f"{type(model).__name__}")
        if readout is not None:
            for attr in ("forward", "backward", "params"):
                if not hasattr(readout, attr):
                    raise TypeError(f"readout: expected a layer with forward/backward/params "
                                    f"(e.g. bptt.Linear), got {type(readout).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a callable, got {type(loss_fn).__name__}")
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a bptt.optim optimizer or None, got "
                            f"{type(optimizer).__name__}")
        if clip_norm is not None and not float(clip_norm) > 0:
            raise ValueError(f"clip_norm: expected a positive number or None, got {clip_norm}")
        if clip_value is not None and not float(clip_value) >= 0:
            raise ValueError(f"clip_value: expected a number >= 0 or None, got {clip_value}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries: expected an int >= 0, got {max_retries!r}")
        self.client: Any = client
        self.model = model
        self.readout = readout
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.memory_budget = memory_budget
        self.max_retries = max_retries
        self.timeout = timeout
        self.recoveries = 0
        self.last_step: StepInfo | None = None
        self._params = parameters(model, readout)
        self._keys: dict[str, str] = {}
        if optimizer is not None:
            by_id = {id(v): k for k, v in optimizer.params.items()}
            for name, arr in self._params.items():
                if id(arr) not in by_id:
                    raise ValueError(f"optimizer: does not hold the live array of {name}; "
                                     f"build it over bptt.tbptt.parameters(model, readout)")
                self._keys[name] = by_id[id(arr)]
        self._token = f"bptt-dp-{uuid.uuid4().hex}"
        self._batch_axis = 0 if model.batch_first else 1
        self._slots: list[_Slot] = []
        self._starts = np.zeros(0, dtype=np.int64)
        self._setup: Any = None
        self._unbalanced = False
        self._watch_until = 0.0
        self._n_workers = 0
        self._n_workers_now = 1
        self._next_check = 0.0
        self._n = 0
        follow_worker_threads(client)

    # ------------------------------------------------------------------ data
    @property
    def n_samples(self) -> int:
        """The number of training sequences scattered."""
        return self._n

    @property
    def shard_workers(self) -> list[str | None]:
        """The worker address that holds each shard now."""
        return [s.worker for s in self._slots]

    def scatter(self, x: Any, y: Any, *, mask: Any = None, lengths: Any = None,
                resets: Any = None, shards: int | None = None) -> None:
        """Splits the training set into contiguous shards and places one on each worker.

        ``x``: (T, N, input_size), or (N, T, input_size) for a ``batch_first`` model: N
        sequences (converted to the model's dtype). ``y``: the targets, with the output's
        leading axes ((T, N) or (N, T)) and whatever ``loss_fn`` expects after them.
        ``mask``: bool with the same leading axes, where the loss is taken (None:
        everywhere, or, with ``lengths``, at each sequence's first ``lengths[n]`` steps).
        ``lengths``: (N,) integers in [1, T] (see ``model(x, lengths=...)``).
        ``resets``: bool with the leading axes, for ``tbptt`` only: where a stream's state
        is set to zero before a step (episode starts).
        ``shards``: how many shards (default: one per worker now in the cluster).

        NumPy arrays are sent from the client now; the client keeps its copy only to
        scatter a shard again if its worker is lost. Dask arrays never pass through the
        client: each shard is computed on its worker from the graph (its slice of each
        array), and a lost shard is computed again from the graph. Either way the data
        does not travel again during training. Calling ``scatter`` again replaces the
        training set.
        """
        from ._worker import Setup, Shard, make_shard

        m = self.model
        ax = self._batch_axis
        lazy = any(isinstance(a, da.Array) for a in (x, y, mask, lengths, resets))
        norm = _lazy_array if lazy else _eager_array
        xa = norm(x)
        layout = "(N, T, input_size)" if m.batch_first else "(T, N, input_size)"
        if xa.dtype.kind != "f":
            raise TypeError(f"x: expected a floating-point array (converted to {m.dtype}), got "
                            f"dtype {xa.dtype}")
        if xa.ndim != 3 or xa.shape[2] != m.input_size:
            raise ValueError(f"x: expected shape {layout[:-11]}{m.input_size}), got "
                             f"{xa.shape}")
        if any(math.isnan(d) for d in xa.shape):
            raise ValueError("x: unknown shape (nan); call x.compute_chunk_sizes() first")
        lead = tuple(int(d) for d in xa.shape[:2])
        n = lead[ax]
        ya = norm(y)
        if tuple(ya.shape[:2]) != lead:
            raise ValueError(f"y: expected leading shape {lead} (that of x), got {ya.shape}")
        ma = _check_bools("mask", None if mask is None else norm(mask), lead)
        ra = _check_bools("resets", None if resets is None else norm(resets), lead)
        la = None
        if lengths is not None:
            la = norm(lengths)
            if la.dtype.kind not in "iu":
                raise TypeError(f"lengths: expected an integer array of shape ({n},), got "
                                f"dtype {la.dtype}")
            if tuple(la.shape) != (n,):
                raise ValueError(f"lengths: expected shape ({n},), got {la.shape}")
            steps = lead[1 - ax]
            if not lazy and la.size and (la.min() < 1 or la.max() > steps):
                raise ValueError(f"lengths: expected values in [1, {steps}], got "
                                 f"[{la.min()}, {la.max()}]")
        workers = self._workers()
        count = len(workers) if shards is None else shards
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"shards: expected a positive int, got {shards!r}")
        if n < count:
            raise ValueError(f"x: {n} sequence(s) cannot fill {count} shards; pass "
                             f"shards=<= {n}")
        self.release()

        bounds = np.linspace(0, n, count + 1).round().astype(np.int64)
        slots = []
        for i in range(count):
            a, b = int(bounds[i]), int(bounds[i + 1])
            sl: list[slice] = [slice(None)] * 2
            sl[ax] = slice(a, b)
            take = tuple(sl)
            parts = (xa[take], ya[take], None if ma is None else ma[take],
                     None if la is None else la[a:b], None if ra is None else ra[take])
            if lazy:
                graph = delayed(make_shard, pure=True)(i, a, *parts, m.dtype.name, ax)
                slots.append(_Slot(None, graph, b))
            else:
                shard: Shard = make_shard(i, a, *parts, m.dtype.name, ax)
                slots.append(_Slot(shard, None, b))
        self._slots = slots
        self._n_workers = len(workers)
        self._starts = bounds[:-1]
        self._n = n
        self._setup = Setup(self._token, _persist.model_config(self.model), self.readout,
                            self.loss_fn, ax, self.memory_budget)
        for i, slot in enumerate(slots):
            self._place(slot, workers[i % len(workers)])
        if lazy:
            from distributed import wait

            wait([s.future for s in slots])
            for s in slots:
                if s.future.status == "error":
                    s.future.result()       # raises the worker's exception here
            held = self._holders()
            for s in slots:                  # where the scheduler did compute each one
                where = held.get(str(s.future.key))
                if where:
                    s.worker = where[0]

    def _workers(self, wait: float = 30.0) -> list[str]:
        """Addresses of the workers now in the cluster (waits up to ``wait`` s for one)."""
        deadline = time.monotonic() + wait
        while True:
            workers = sorted(self.client.nthreads())
            if workers:
                self._n_workers_now = len(workers)
                return workers
            if time.monotonic() > deadline:
                raise RuntimeError("no workers in the cluster")
            time.sleep(0.1)

    def _place(self, slot: _Slot, worker: str) -> None:
        """Puts ``slot``'s shard on ``worker``: scattered from the client's copy, moved
        from the worker that holds it, or computed there from its graph."""
        from ._worker import same

        if slot.shard is not None:
            slot.future = self.client.scatter(slot.shard, workers=[worker], hash=False,
                                              direct=True)
        elif slot.future is not None and slot.future.status == "finished":
            slot.future = self.client.submit(same, slot.future, workers=[worker],
                                             allow_other_workers=True, pure=False)
        else:
            slot.future = self.client.compute(slot.graph, workers=[worker],
                                              allow_other_workers=True)
        slot.worker = worker

    def release(self) -> None:
        """Drops the shards from the workers' memory (each worker keeps a model object of
        the last few runs, for reuse)."""
        for slot in self._slots:
            slot.future = None
        self._slots = []
        self._setup = None
        self._n = 0

    def close(self) -> None:
        """Same as ``release``."""
        self.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------ steps
    def _rows(self, batch: Any) -> np.ndarray:
        if batch is None:
            return np.arange(self._n, dtype=np.int64)
        if isinstance(batch, slice):
            return np.arange(self._n, dtype=np.int64)[batch]
        idx = np.asarray(batch)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"batch: expected integer indices of training sequences, got "
                            f"dtype {idx.dtype}")
        if idx.ndim != 1:
            raise ValueError(f"batch: expected a 1-d array of indices, got shape {idx.shape}")
        if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
            raise ValueError(f"batch: expected indices in [0, {self._n}), got "
                             f"[{idx.min()}, {idx.max()}]")
        return np.where(idx < 0, idx + self._n, idx).astype(np.int64)

    def gradients(self, batch: Any = None) -> tuple[float, dict[str, np.ndarray]]:
        """The minibatch loss and its gradient, computed on the workers.

        ``batch``: global indices of the minibatch's sequences (repeats allowed), a
        slice, or None for all of them. Returns ``(loss, grads)``: the mean loss over the
        minibatch's selected positions and its gradient, keys ``"rnn.<name>"`` and
        ``"readout.<name>"`` (NaN and zeros when no position is selected). Uses the
        parameters as they are now.
        """
        loss, grads, _ = self._compute(batch)
        return loss, grads

    def _compute(self, batch: Any) -> tuple[float, dict[str, np.ndarray], int]:
        from ._worker import shard_gradients

        if not self._slots:
            raise RuntimeError("no training data: call scatter(x, y) first")
        rows = self._rows(batch)
        if rows.size == 0:
            return math.nan, {k: np.zeros_like(v) for k, v in self._params.items()}, 0
        which = np.searchsorted(self._starts, rows, side="right") - 1
        parts = [(k, (rows[which == k] - self._starts[k],)) for k in range(len(self._slots))]
        total = self._run(shard_gradients, [(k, r) for k, r in parts if r[0].size])
        return self._mean(total)

    @staticmethod
    def _mean(total: Any) -> tuple[float, dict[str, np.ndarray], int]:
        """Loss and gradient of the mean from the sums (NaN and zeros when no terms)."""
        grads = {k: v / v.dtype.type(max(total.count, 1)) for k, v in total.grads.items()}
        if total.count == 0:
            return math.nan, grads, 0
        return total.loss_sum / total.count, grads, int(total.count)

    def _run(self, task: Callable[..., Any], parts: Sequence[tuple[int, tuple[Any, ...]]]
             ) -> Any:
        """Runs ``task(setup, shard, params, *args)`` for each ``(shard index, args)`` with
        the current parameters, adds the results in a tree, and returns the total;
        recomputes everything after losing a worker (up to ``max_retries`` times)."""
        if not self._slots:
            raise RuntimeError("no training data: call scatter(x, y) first")
        lost = _lost_worker_errors()
        t0 = time.perf_counter()
        if time.monotonic() >= self._next_check:
            self._check_workers()
        if self._unbalanced:
            self.rebalance()
        attempt = 0
        while True:
            attempt += 1
            try:
                total, info = self._attempt(task, parts)
                break
            except lost:
                if attempt > self.max_retries:
                    raise
                self.recoveries += 1
                self._recover()
        info.seconds = time.perf_counter() - t0
        info.attempts = attempt
        self.last_step = info
        return total

    def _attempt(self, task: Callable[..., Any], parts: Sequence[tuple[int, tuple[Any, ...]]]
                 ) -> tuple[Any, StepInfo]:
        from distributed import wait

        from ._worker import Arrays, add_partials

        client = self.client
        params = Arrays({k: np.array(v, copy=True) for k, v in self._params.items()})
        p_bytes = sum(v.nbytes for v in params.values())
        params_f = client.scatter(params, broadcast=True, hash=False, direct=True)
        futures = []
        for k, args in parts:
            slot = self._slots[k]
            futures.append(client.submit(
                task, self._setup, slot.future, params_f, *args,
                key=f"bptt-grad-{k}-{uuid.uuid4().hex}", workers=[slot.worker],
                allow_other_workers=True, pure=False))
        adds = 0
        level = futures
        while len(level) > 1:
            nxt = [client.submit(add_partials, level[i], level[i + 1], pure=False,
                                 key=f"bptt-sum-{uuid.uuid4().hex}")
                   for i in range(0, len(level) - 1, 2)]
            adds += len(nxt)
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        # Fetched straight from the worker that holds it (not relayed by the scheduler).
        wait(level[0], timeout=self.timeout)
        total = client.gather(level[0], direct=True)
        arg_bytes = sum(a.nbytes for _, args in parts for a in args
                        if isinstance(a, np.ndarray))
        info = StepInfo(0.0, p_bytes + arg_bytes,
                        p_bytes * (self._n_workers_now - 1) + p_bytes * adds, p_bytes,
                        len(parts), 1)
        return total, info

    def _check_workers(self) -> None:
        """Every few seconds: notices workers that left (a shard computed from a graph is
        recomputed elsewhere by the scheduler, without an error reaching the client) or
        joined, so that ``shard_workers`` stays true and shards spread out again."""
        self._next_check = time.monotonic() + 2.0
        workers = set(self._workers())
        if any(s.worker not in workers for s in self._slots):
            held = self._holders()
            for slot in self._slots:
                where = [w for w in held.get(str(slot.future.key), []) if w in workers]
                if where:
                    slot.worker = where[0]
            self._unbalanced = True
            self._watch_until = time.monotonic() + 120.0
        elif len(workers) > len({s.worker for s in self._slots}) and len(self._slots) > len(
                {s.worker for s in self._slots}):
            self._unbalanced = True

    def _holders(self) -> dict[str, list[str]]:
        """Worker addresses holding each shard's key (shards lost entirely are absent)."""
        for _ in range(50):
            live = [s.future for s in self._slots if s.future.status == "finished"]
            try:
                who = self.client.who_has(live) if live else {}
            except _lost_worker_errors():
                time.sleep(0.1)     # a future was cancelled meanwhile: look again
                continue
            return {str(k): list(v) for k, v in who.items() if v}
        return {}

    def _recover(self) -> None:
        """Scatters again, from the client's copy, every shard no live worker holds."""
        time.sleep(0.2)    # let the scheduler finish removing the dead worker
        workers = self._workers()
        held = self._holders()
        load = dict.fromkeys(workers, 0)
        missing = []
        for slot in self._slots:
            where = [w for w in held.get(str(slot.future.key), []) if w in load]
            if where:
                slot.worker = where[0]
                load[where[0]] += 1
            else:
                missing.append(slot)
        for slot in missing:
            target = min(workers, key=lambda w: load[w])
            self._place(slot, target)
            load[target] += 1
        self._unbalanced = True
        self._watch_until = time.monotonic() + 120.0

    def rebalance(self) -> None:
        """Moves shards from workers holding several to workers holding none (scattered
        again from the client's copy), e.g. once a lost worker has been replaced or the
        cluster has grown. Called by ``gradients`` after a recovery until balanced."""
        workers = self._workers()
        load: dict[str, list[_Slot]] = {w: [] for w in workers}
        for slot in self._slots:
            if slot.worker in load:
                load[slot.worker].append(slot)
        per = -(-len(self._slots) // len(workers))
        idle = [w for w in workers if not load[w]]
        for w in sorted(load, key=lambda w: -len(load[w])):
            while idle and len(load[w]) > 1:
                slot = load[w].pop()
                target = idle.pop(0)
                self._place(slot, target)
                load[target].append(slot)
        crowded = any(len(v) > per for v in load.values())
        # After a loss, keep looking (at most two minutes) for the replacement worker.
        waiting = len(workers) < self._n_workers and time.monotonic() < self._watch_until
        self._unbalanced = crowded or waiting

    def step(self, batch: Any = None) -> float:
        """One training step on the minibatch ``batch`` (see ``gradients``): computes the
        gradient on the workers, clips it (``clip_norm``, ``clip_value``) and makes one
        optimizer step on the client. Returns the minibatch loss (NaN, and no update, when
        no position is selected)."""
        if self.optimizer is None:
            raise RuntimeError("step: no optimizer; pass optimizer= (gradients() works "
                               "without one)")
        loss, grads, count = self._compute(batch)
        if count == 0:
            return loss
        if self.clip_norm is not None:
            clip_grad_norm(grads, self.clip_norm)
        if self.clip_value is not None:
            clip_grad_value(grads, self.clip_value)
        self.optimizer.step({self._keys[k]: v for k, v in grads.items()})
        return loss

    def tbptt(self, k1: int, k2: int | None = None, *, state: Any = None,
              keep_grads: bool = False,
              callback: Callable[[int, int, float, float], None] | None = None
              ) -> TBPTTResult:
        """Truncated BPTT over the scattered sequences as parallel streams, the schedule
        of ``bptt.TBPTT(model, readout, loss_fn, optimizer, k1=k1, k2=k2).train(x, y,
        mask=mask, resets=resets, state=state)`` (see ``help(bptt.tbptt)``), one
        distributed step per chunk.

        For each chunk the workers compute, for their streams, the gradient of the
        chunk's loss backpropagated through its window of ``k2`` steps, starting from the
        state carried from the previous window; the client adds the shares, divides by the
        chunk's number of loss terms, clips and makes the optimizer step (none when the
        optimizer is None: gradients only, see ``keep_grads``). The carried states (small:
        (num_layers, N, hidden_size)) come back to the client each chunk, so a lost worker
        costs only that chunk's recomputation. The losses, gradients and states equal
        those of ``TBPTT.train`` in one process up to float rounding.

        ``state``: the state before step 0 for all N streams (None: zeros). Returns a
        ``bptt.TBPTTResult`` (losses, gradient norms, terms, updates, chunk ends, the
        final state of all streams, and each chunk's gradient with ``keep_grads``).
        ``scatter`` must have been given no ``lengths`` (streams have none; use ``mask``
        and ``resets``).
        """
        from ._worker import shard_window

        m = self.model
        if not self._slots:
            raise RuntimeError("no training data: call scatter(x, y) first")
        if m.bidirectional:
            raise ValueError("model: truncated BPTT over a stream needs a unidirectional "
                             "model, got bidirectional=True")
        if any(s.shard.lengths is not None for s in self._slots):
            raise ValueError("tbptt: the data was scattered with lengths; streams have none "
                             "(use mask= and resets=)")
        k1 = positive_int("k1", k1)
        k2 = k1 if k2 is None else positive_int("k2", k2)
        if k2 < k1:
            raise ValueError(f"k2: expected k2 >= k1 = {k1}, got {k2}")
        lstm = m._cell == "lstm"
        steps = int(self._slots[0].shard.x.shape[1 - self._batch_axis])
        carried: list[Any] = [None] * len(self._slots)
        if state is not None:
            parts = list(state) if lstm else [state]
            want = (m.num_layers, self._n, m.hidden_size)
            arrs = [np.ascontiguousarray(p, dtype=m.dtype) for p in parts]
            for i, p in enumerate(arrs):
                if p.shape != want:
                    name = f"state[{i}]" if lstm else "state"
                    raise ValueError(f"{name}: expected shape {want}, got {p.shape}")
            for k, slot in enumerate(self._slots):
                a, b = int(self._starts[k]), slot.stop
                cut = [np.ascontiguousarray(p[:, a:b]) for p in arrs]
                carried[k] = (cut[0], cut[1]) if lstm else cut[0]

        n_chunks = -(-steps // k1)
        losses = np.full(n_chunks, np.nan)
        norms = np.full(n_chunks, np.nan)
        n_terms = np.zeros(n_chunks, dtype=np.int64)
        updated = np.zeros(n_chunks, dtype=bool)
        ends = np.zeros(n_chunks, dtype=np.int64)
        kept: list[dict[str, np.ndarray] | None] | None = [] if keep_grads else None
        w = 0
        for j in range(n_chunks):
            s, e = j * k1, min((j + 1) * k1, steps)
            ends[j] = e
            w_next = e if e == steps else max(0, min(e + k1, steps) - k2)
            window = (w, s, e, w_next)
            total = self._run(shard_window, [(k, (window, carried[k]))
                                             for k in range(len(self._slots))])
            carried = [total.states[k] for k in range(len(self._slots))]
            loss, grads, count = self._mean(total)
            n_terms[j] = count
            w = w_next
            if count == 0:
                if kept is not None:
                    kept.append(None)
                if callback is not None:
                    callback(j, n_chunks, math.nan, math.nan)
                continue
            norm = grad_norm(grads)
            updated[j] = apply_update(grads, kept, self.clip_norm, self.clip_value,
                                      self.optimizer, self._keys)
            losses[j], norms[j] = loss, norm
            if callback is not None:
                callback(j, n_chunks, loss, norm)
        final = [self._join_streams([None if c is None else (c[i] if lstm else c)
                                     for c in carried])
                 for i in range(2 if lstm else 1)]
        return TBPTTResult(losses, norms, n_terms, updated, ends,
                           (final[0], final[1]) if lstm else final[0], kept)

    def _join_streams(self, parts: list[Any]) -> np.ndarray:
        """Per-shard states (None: zeros) joined along the stream axis."""
        m = self.model
        out = []
        for k, p in enumerate(parts):
            n = self._slots[k].stop - int(self._starts[k])
            out.append(np.zeros((m.num_layers, n, m.hidden_size), dtype=m.dtype)
                       if p is None else p)
        return np.concatenate(out, axis=1)

    def __repr__(self) -> str:
        return (f"DataParallel({self.model!r}, {len(self._slots)} shards of "
                f"{self._n} sequences, workers={sorted({w for w in self.shard_workers if w})})")

