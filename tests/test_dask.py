"""bptt.dask on a real ``distributed.LocalCluster`` (2 worker processes x 1 thread), no
mocks: inference over dask arrays equal bit for bit to the in-memory result, gradients of
data-parallel training equal to one process's on the same minibatch (float64, 1e-12),
bptt's threads following the workers', a worker's exception reaching the client, and
training that survives a worker process killed in the middle of a step.

The cluster is made once for the module; a watchdog ends the run if anything hangs.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import subprocess
import sys
import threading
import time

import bptt
import numpy as np
import pytest
from conftest import rel_error

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
import bptt.dask as bd
import dask

WATCHDOG_S = 240          # the whole module; it normally takes well under a minute
GRAD_TOL = 1e-12


@pytest.fixture(scope="module")
def client():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None, timeout=60) as cluster, \
                distributed.Client(cluster, timeout=60) as c:
            c.wait_for_workers(2, timeout=60)
            yield c
    finally:
        faulthandler.cancel_dump_traceback_later()


def test_importing_bptt_does_not_import_dask():
    code = ("import sys, bptt; bad = [m for m in ('dask', 'distributed') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ============================================================================ inference
def _model(kind, batch_first=False, dtype=np.float32, **kw):
    cls = {"lstm": bptt.LSTM, "gru": bptt.GRU, "rnn": bptt.RNN}[kind]
    return cls(5, 7, batch_first=batch_first, dtype=dtype, seed=3, **kw)


def _parts(state):
    return state if isinstance(state, tuple) else (state,)


CHUNKINGS = [(23,), (1, 1, 1, 20), (4, 11, 8), (6, 0, 17)]


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_predict_equals_in_memory_bit_for_bit(client, rng, kind, batch_first):
    model = _model(kind, batch_first)
    steps, batch = 9, 23
    shape = (batch, steps, 5) if batch_first else (steps, batch, 5)
    x = rng.standard_normal(shape)                 # float64 in, converted per chunk
    lengths = rng.integers(1, steps + 1, size=batch)
    bax = 0 if batch_first else 1
    expected = {}
    for name, lens in (("none", None), ("numpy", lengths), ("dask", lengths)):
        expected[name] = model(x, lengths=lens)
    lazy = []
    for chunks in CHUNKINGS:
        ch = [steps, steps, 5]
        ch[bax] = chunks
        xd = da.from_array(x, chunks=tuple(ch))
        for name, lens in (("none", None), ("numpy", lengths),
                           ("dask", da.from_array(lengths, chunks=5))):
            lazy.append((chunks, name, bd.predict(model, xd, lengths=lens)))
    computed = dask.compute([item[2] for item in lazy])[0]
    for (chunks, name, _), (out, state) in zip(lazy, computed, strict=True):
        ref_out, ref_state = expected[name]
        assert out.dtype == ref_out.dtype == np.float32
        assert np.array_equal(out, ref_out), (chunks, name)
        for a, b in zip(_parts(state), _parts(ref_state), strict=True):
            assert np.array_equal(a, b), (chunks, name)


def test_predict_with_initial_state_and_layers(client, rng):
    model = bptt.LSTM(5, 6, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    x = rng.standard_normal((8, 10, 5))
    h0 = rng.standard_normal((4, 10, 6))
    c0 = rng.standard_normal((4, 10, 6))
    ref_out, (ref_h, ref_c) = model(x, (h0, c0))
    xd = da.from_array(x, chunks=(8, 3, 5))
    out, (h, c) = bd.predict(model, xd, (h0, da.from_array(c0, chunks=(4, 5, 6))))
    assert out.chunks[1] == (3, 3, 3, 1) and h.chunks[1] == (3, 3, 3, 1)
    out, h, c = dask.compute(out, h, c)
    assert np.array_equal(out, ref_out)
    assert np.array_equal(h, ref_h) and np.array_equal(c, ref_c)


def test_predict_in_a_pipeline_snapshots_the_model_once(client, rng):
    """Upstream dask ops, predict, a downstream reduction: one graph. The model is one key
    of the graph (not copied into every chunk's task) and a snapshot: changing the model
    afterwards changes nothing; the same model state gives the same key."""
    model = _model("gru", dtype=np.float64)
    raw = rng.standard_normal((12, 40, 5))
    xd = da.from_array(raw, chunks=(12, 8, 5))
    xd = (xd - xd.mean(axis=(0, 1))) / 2.0
    out, _h = bd.predict(model, xd)
    summary = out.mean(axis=0)
    ref_out, _ = model(xd.compute())
    graph = dict(out.__dask_graph__())
    models = [k for k, v in graph.items() if isinstance(v, bptt.GRU)
              or type(getattr(v, "value", None)) is bptt.GRU]
    assert len(models) == 1 and len(out.chunks[1]) == 5
    assert bd.predict(model, xd)[0].name == out.name
    model.params["weight_hh_l0"][...] = 0.0
    assert bd.predict(model, xd)[0].name != out.name
    got, got_summary = dask.compute(out, summary)
    assert np.array_equal(got, ref_out)
    np.testing.assert_allclose(got_summary, ref_out.mean(axis=0), rtol=1e-12)


def test_predict_inside_xarray(client, rng):
    xr = pytest.importorskip("xarray")
    model = _model("lstm", batch_first=True)
    x = rng.standard_normal((16, 6, 5)).astype(np.float32)
    arr = xr.DataArray(da.from_array(x, chunks=(5, 6, 5)),
                       dims=("sensor", "time", "feature"))
    out = xr.apply_ufunc(lambda a: bd.predict(model, a)[0], arr,
                         input_core_dims=[["time", "feature"]],
                         output_core_dims=[["time", "hidden"]], dask="allowed")
    assert out.dims == ("sensor", "time", "hidden")
    assert np.array_equal(out.values, model(x)[0])


def test_predict_refuses_bad_chunks_and_arguments(rng):
    model = _model("lstm")
    x = da.from_array(rng.standard_normal((9, 8, 5)), chunks=(3, 4, 5))
    with pytest.raises(ValueError, match=r"one chunk along the time axis.*rechunk"):
        bd.predict(model, x)
    with pytest.raises(ValueError, match=r"one chunk along .* feature axis"):
        bd.predict(model, x.rechunk((9, 4, 2)))
    with pytest.raises(ValueError, match=r"x: expected shape \(T, B, 5\)"):
        bd.predict(model, da.zeros((9, 8, 4), chunks=(9, 4, 4)))
    with pytest.raises(TypeError, match="x: expected a floating-point array"):
        bd.predict(model, da.zeros((9, 8, 5), dtype=int, chunks=(9, 4, 5)))
    good = x.rechunk((9, 4, 5))
    with pytest.raises(ValueError, match=r"lengths: expected shape \(8,\)"):
        bd.predict(model, good, lengths=np.ones(7, dtype=int))
    with pytest.raises(TypeError, match="lengths: expected an integer array"):
        bd.predict(model, good, lengths=np.ones(8))
    with pytest.raises(TypeError, match=r"state: expected a tuple \(h, c\)"):
        bd.predict(model, good, np.zeros((1, 8, 7)))


def test_worker_threads_follow_nthreads(client):
    bd.follow_worker_threads(client)
    assert client.run(bptt.get_num_threads) == client.nthreads()


# ============================================================================ training
def _reference(model, readout, loss_fn, x, y, mask, lengths, rows, batch_first):
    """One process: forward, loss and BPTT over the minibatch ``rows``."""
    ax = 0 if batch_first else 1
    xb = np.take(x, rows, axis=ax)
    yb = np.take(y, rows, axis=ax)
    mb = None if mask is None else np.take(mask, rows, axis=ax)
    lb = None if lengths is None else lengths[rows]
    out, _, tape = model.forward(xb, lengths=lb)
    pred, cache = readout.forward(out) if readout is not None else (out, None)
    loss, d_pred = loss_fn(pred, yb, mb)
    grads = {}
    if readout is not None:
        d_out, g_ro = readout.backward(cache, d_pred)
        grads.update({f"readout.{k}": v for k, v in g_ro.items()})
    else:
        d_out = d_pred
    grads.update({f"rnn.{k}": v for k, v in model.backward(tape, d_out).params.items()})
    return loss, grads


def _check_grads(got, ref, what):
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k].dtype == ref[k].dtype
        err = rel_error(got[k], ref[k])
        assert err <= GRAD_TOL, f"{what}: {k}: relative error {err:.2e}"


def _lstm_task(rng, n=24, steps=11):
    model = bptt.LSTM(3, 8, num_layers=2, dtype=np.float64, seed=1)
    readout = bptt.Linear(8, 2, dtype=np.float64, seed=2)
    x = rng.standard_normal((steps, n, 3))
    y = rng.standard_normal((steps, n, 2))
    lengths = rng.integers(2, steps + 1, size=n)
    mask = np.arange(steps)[:, None] < lengths[None, :]
    return model, readout, x, y, lengths, mask


def test_gradients_equal_one_process(client, rng):
    """LSTM + Linear + MSE with lengths (and the mask they imply): each minibatch's loss
    and gradients equal the single-process ones, for minibatches spanning both shards,
    within one shard, with repeats, and for three shards on two workers."""
    model, readout, x, y, lengths, mask = _lstm_task(rng)
    batches = [None, np.array([20, 3, 3, 15, 0, 23, 9]), np.arange(2, 9),
               rng.integers(0, 24, size=16)]
    for shards in (None, 3):
        dp = bd.DataParallel(client, model, readout, bptt.mse_loss)
        dp.scatter(x, y, lengths=lengths, shards=shards)
        assert len(set(dp.shard_workers)) == 2
        for batch in batches:
            rows = np.arange(24) if batch is None else batch
            ref_loss, ref = _reference(model, readout, bptt.mse_loss, x, y, mask, lengths,
                                       rows, False)
            loss, grads = dp.gradients(batch)
            assert abs(loss - ref_loss) <= GRAD_TOL * abs(ref_loss)
            _check_grads(grads, ref, f"shards={shards} batch={batch}")
        info = dp.last_step
        nbytes = sum(v.nbytes for v in bptt.tbptt.parameters(model, readout).values())
        assert info.bytes_to_client == nbytes and info.bytes_from_client >= nbytes
        dp.release()


def _ce_pred_loss(pred, target, mask):
    return bptt.cross_entropy_loss(pred, target, mask)


@pytest.mark.parametrize("case", ["gru-ce-batch-first", "rnn-no-readout"])
def test_gradients_equal_one_process_other_models(client, rng, case):
    n, steps = 10, 7
    if case == "gru-ce-batch-first":
        model = bptt.GRU(4, 6, batch_first=True, dtype=np.float64, seed=5)
        readout = bptt.Linear(6, 3, dtype=np.float64, seed=6)
        x = rng.standard_normal((n, steps, 4))
        y = rng.integers(0, 3, size=(n, steps))
        mask = rng.random((n, steps)) < 0.6
        loss_fn = _ce_pred_loss
    else:
        model = bptt.RNN(4, 6, bidirectional=True, dtype=np.float64, seed=7)
        readout = None
        x = rng.standard_normal((steps, n, 4))
        y = rng.standard_normal((steps, n, 12))
        mask = None
        loss_fn = bptt.mse_loss
    dp = bd.DataParallel(client, model, readout, loss_fn)
    dp.scatter(x, y, mask=mask)
    rows = np.array([9, 1, 4, 4, 7, 0])
    ref_loss, ref = _reference(model, readout, loss_fn, x, y, mask, None, rows,
                               model.batch_first)
    loss, grads = dp.gradients(rows)
    assert abs(loss - ref_loss) <= GRAD_TOL * abs(ref_loss)
    _check_grads(grads, ref, case)
    dp.release()


def _fail_on_worker(pred, target, mask):
    raise ArithmeticError(f"loss refused on pid {os.getpid()}")


def test_a_worker_exception_reaches_the_client(client, rng):
    model, readout, x, y, _lengths, _ = _lstm_task(rng, n=6, steps=4)
    dp = bd.DataParallel(client, model, readout, _fail_on_worker)
    dp.scatter(x, y)
    with pytest.raises(ArithmeticError, match="loss refused on pid") as info:
        dp.gradients()
    assert str(os.getpid()) not in str(info.value)
    assert dp.recoveries == 0


def _train_reference(model, readout, x, y, mask, lengths, batches, lr):
    opt = bptt.optim.Adam(bptt.tbptt.parameters(model, readout), lr=lr)
    losses = []
    for rows in batches:
        loss, grads = _reference(model, readout, bptt.mse_loss, x, y, mask, lengths, rows,
                                 False)
        opt.step(grads)
        losses.append(loss)
    return losses


def test_training_with_two_workers_follows_one_process(client, rng):
    model, readout, x, y, lengths, mask = _lstm_task(rng)
    batches = [rng.choice(24, size=8, replace=False) for _ in range(5)]
    ref_model, ref_readout = bptt.LSTM(3, 8, 2, dtype=np.float64), bptt.Linear(8, 2,
                                                                             dtype=np.float64)
    ref_model.load_state_dict(model.state_dict())
    ref_readout.load_state_dict(readout.state_dict())
    ref = _train_reference(ref_model, ref_readout, x, y, mask, lengths, batches, 0.05)
    opt = bptt.optim.Adam(bptt.tbptt.parameters(model, readout), lr=0.05)
    with bd.DataParallel(client, model, readout, bptt.mse_loss, opt) as dp:
        dp.scatter(x, y, lengths=lengths)
        before = dp.gradients()[0]
        losses = [dp.step(b) for b in batches]
        after = dp.gradients()[0]
    np.testing.assert_allclose(losses, ref, rtol=1e-10)
    assert after < before
    for k, v in ref_model.params.items():
        assert rel_error(model.params[k], v) < 1e-10, k


def test_arguments_are_checked(client, rng):
    model, readout, x, y, _lengths, _ = _lstm_task(rng, n=6, steps=4)
    with pytest.raises(TypeError, match="client: expected a distributed.Client"):
        bd.DataParallel(object(), model)
    with pytest.raises(ValueError, match="optimizer: does not hold the live array"):
        bd.DataParallel(client, model, readout, optimizer=bptt.optim.SGD(model.params))
    dp = bd.DataParallel(client, model, readout)
    with pytest.raises(RuntimeError, match="call scatter"):
        dp.gradients()
    with pytest.raises(ValueError, match=r"y: expected leading shape \(4, 6\)"):
        dp.scatter(x, y[:, :5])
    with pytest.raises(ValueError, match=r"lengths: expected values in \[1, 4\]"):
        dp.scatter(x, y, lengths=np.full(6, 5))
    dp.scatter(x, y)
    with pytest.raises(ValueError, match=r"batch: expected indices in \[0, 6\)"):
        dp.gradients([0, 6])
    with pytest.raises(RuntimeError, match="no optimizer"):
        dp.step()


# ============================================================================ truncated BPTT
@pytest.mark.parametrize("case", ["lstm-k1<k2", "gru-batch-first-k1=k2"])
def test_tbptt_follows_one_process(client, rng, case):
    """DataParallel.tbptt gives TBPTT.train's chunk losses, gradients, carried state and
    trajectory: streams split over two workers, resets, a mask and a chunk without loss."""
    steps, n = 17, 9
    if case == "lstm-k1<k2":
        make = lambda: bptt.LSTM(3, 5, num_layers=2, dtype=np.float64, seed=11)
        k1, k2 = 3, 5
        batch_first = False
    else:
        make = lambda: bptt.GRU(3, 5, batch_first=True, dtype=np.float64, seed=12)
        k1, k2 = 4, 4
        batch_first = True
    x = rng.standard_normal((steps, n, 3))
    y = rng.standard_normal((steps, n, 2))
    mask = rng.random((steps, n)) < 0.7
    mask[3:6] = False                      # chunk 1 of the lstm case has no loss term
    resets = rng.random((steps, n)) < 0.1
    results, params = [], []
    for distributed_run in (False, True):
        model, readout = make(), bptt.Linear(5, 2, dtype=np.float64, seed=13)
        opt = bptt.optim.SGD(bptt.tbptt.parameters(model, readout), lr=0.1, momentum=0.9)
        if not distributed_run:
            tb = bptt.TBPTT(model, readout, bptt.mse_loss, opt, k1=k1, k2=k2, clip_norm=5.0)
            results.append(tb.train(x, y, mask=mask, resets=resets, keep_grads=True))
        else:
            dp = bd.DataParallel(client, model, readout, bptt.mse_loss, opt, clip_norm=5.0)
            swap = (lambda a: np.swapaxes(a, 0, 1)) if batch_first else (lambda a: a)
            dp.scatter(swap(x), swap(y), mask=swap(mask), resets=swap(resets))
            results.append(dp.tbptt(k1, k2, keep_grads=True))
            dp.release()
        params.append(model.state_dict())
    ref, got = results
    assert not ref.updated.all() or case != "lstm-k1<k2"
    np.testing.assert_array_equal(got.n_terms, ref.n_terms)
    np.testing.assert_array_equal(got.updated, ref.updated)
    np.testing.assert_array_equal(got.chunk_ends, ref.chunk_ends)
    np.testing.assert_allclose(got.losses, ref.losses, rtol=1e-10)
    np.testing.assert_allclose(got.grad_norms, ref.grad_norms, rtol=1e-10)
    _check_grads(got.grads[0], ref.grads[0], "chunk 0")
    for a, b in zip(got.grads, ref.grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            for k in b:
                assert rel_error(a[k], b[k]) < 1e-10, k
    for a, b in zip(_parts(got.state), _parts(ref.state), strict=True):
        assert rel_error(a, b) < 1e-10
    for k in params[0]:
        assert rel_error(params[1][k], params[0][k]) < 1e-10, k


# ============================================================================ faults
def _killer(client, addr):
    """A thread that kills worker ``addr``'s process (SIGKILL) as soon as the scheduler
    shows it computing a bptt gradient task, and an event set once it has."""
    pid = client.run(os.getpid, workers=[addr])[addr]
    killed = threading.Event()
    done = threading.Event()       # set by the caller once the step has returned

    def kill_when_busy():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not done.is_set():
            busy = client.processing(workers=[addr]).get(addr, ())
            if any("bptt-grad" in str(k) for k in busy):
                os.kill(pid, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.002)

    return threading.Thread(target=kill_when_busy), killed, done, pid


def _slow_mse(pred, target, mask):
    """``bptt.mse_loss``, taking a moment first: keeps a worker busy inside the step long
    enough for the test to kill it there."""
    time.sleep(0.2)
    return bptt.mse_loss(pred, target, mask)


def _wait_for_replacement(client, dp, batch):
    client.wait_for_workers(2, timeout=60)
    deadline = time.monotonic() + 60
    while len(set(dp.shard_workers)) < 2 and time.monotonic() < deadline:
        dp.gradients(batch)
        time.sleep(0.2)
    assert len(set(dp.shard_workers)) == 2


def test_training_data_from_a_dask_graph(client, rng):
    """x, y and lengths as dask arrays: each shard is computed on its worker from the
    graph (nothing through the client), gradients equal one process's, and the shard of
    a worker killed mid-step is computed again from the graph."""
    client.wait_for_workers(2, timeout=60)
    model, readout, x, y, lengths, mask = _lstm_task(rng, n=24, steps=40)
    dp = bd.DataParallel(client, model, readout, _slow_mse)
    dp.scatter(da.from_array(x, chunks=(40, 5, 3)), da.from_array(y, chunks=(40, 7, 2)),
               lengths=da.from_array(lengths, chunks=9))
    assert len(set(dp.shard_workers)) == 2
    batch = np.array([1, 22, 5, 17, 12, 8])
    _, ref = _reference(model, readout, bptt.mse_loss, x, y, mask, lengths, batch, False)
    _check_grads(dp.gradients(batch)[1], ref, "from a graph")
    killer, killed, done, _ = _killer(client, dp.shard_workers[1])
    killer.start()
    _check_grads(dp.gradients(batch)[1], ref, "from a graph, worker killed")
    done.set()
    killer.join()
    assert killed.is_set()
    _check_grads(dp.gradients(batch)[1], ref, "from a graph, after the kill")
    _wait_for_replacement(client, dp, batch)
    _check_grads(dp.gradients(batch)[1], ref, "from a graph, spread again")


def test_training_survives_a_killed_worker(client, rng):
    """A worker process is killed (SIGKILL) while it computes a step: the step is
    recomputed with its shard scattered again from the client's copy, the trajectory stays
    that of one process, and once the nanny has replaced the worker the shards spread out
    again and the new worker's bptt threads follow its nthreads."""
    client.wait_for_workers(2, timeout=60)
    model, readout, x, y, lengths, mask = _lstm_task(rng, n=32, steps=60)
    batches = [rng.choice(32, size=16, replace=False) for _ in range(6)]
    ref_model, ref_readout = bptt.LSTM(3, 8, 2, dtype=np.float64), bptt.Linear(8, 2,
                                                                             dtype=np.float64)
    ref_model.load_state_dict(model.state_dict())
    ref_readout.load_state_dict(readout.state_dict())
    ref = _train_reference(ref_model, ref_readout, x, y, mask, lengths, batches, 0.05)

    opt = bptt.optim.Adam(bptt.tbptt.parameters(model, readout), lr=0.05)
    dp = bd.DataParallel(client, model, readout, _slow_mse, opt)
    dp.scatter(x, y, lengths=lengths)
    victim_addr = dp.shard_workers[1]
    losses = [dp.step(batches[0]), dp.step(batches[1])]
    killer, killed, done, victim = _killer(client, victim_addr)
    killer.start()
    losses.append(dp.step(batches[2]))
    done.set()
    killer.join()
    assert killed.is_set(), "the worker was not caught computing"
    assert dp.recoveries >= 1 and dp.last_step.attempts >= 2
    assert victim_addr not in dp.shard_workers
    losses += [dp.step(b) for b in batches[3:]]
    np.testing.assert_allclose(losses, ref, rtol=1e-10)
    # Gradients after the recovery are still exact.
    _, ref_grads = _reference(model, readout, bptt.mse_loss, x, y, mask, lengths,
                              batches[0], False)
    _check_grads(dp.gradients(batches[0])[1], ref_grads, "after recovery")
    _wait_for_replacement(client, dp, batches[0])
    assert client.run(bptt.get_num_threads) == client.nthreads()
    assert victim not in client.run(os.getpid).values()
