"""Engine behaviour: thread count, SIMD levels, fork safety, build info.

Results must not depend on the number of threads or the SIMD level; with every
multiply-add either fused at every level or at none, and with fixed reduction splits,
they are bitwise identical, which is what these tests assert. The one exception is the
float32 LSTM cell at the vector levels (AVX2, AVX-512), whose activations divide by a
refined reciprocal estimate: it agrees with the scalar level to rounding, and the vector
levels agree bitwise with each other.
"""

import os

import bptt
import numpy as np
import pytest
from bptt import _core

CELLS = [("LSTM", {}), ("GRU", {}), ("RNN", {"nonlinearity": "tanh"}),
         ("RNN", {"nonlinearity": "relu"})]


def _run(model, x, lengths=None):
    out, state, tape = model.forward(x, lengths=lengths)
    g = model.backward(tape, np.cos(out))
    flat_state = state if isinstance(state, tuple) else (state,)
    return [out, *flat_state, g.dx, g.dh_norm, *g.params.values()]


@pytest.fixture
def restore_engine():
    threads = bptt.get_num_threads()
    yield
    bptt.set_num_threads(threads)
    _core.set_simd_level(None)


# (input, hidden, layers, bidirectional, batch): big enough that the GEMMs, the directions
# and the step team (tiles of rows and of hidden units) actually split across threads, and
# that on two threads backward adds the weight gradients of several blocks of steps on one
# thread while the other walks the steps (and, with 96 rows, takes up blocks of the input
# gradient's rows once it is done).
SHAPES = [(48, 96, 2, True, 64), (16, 448, 1, False, 3), (32, 128, 1, False, 40),
          (32, 128, 1, False, 96)]


@pytest.mark.parametrize("cell,kw", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES,
                         ids=["bi-rows", "uni-units", "uni-blocks", "uni-row-blocks"])
def test_results_identical_across_thread_counts(cell, kw, dtype, shape, restore_engine):
    rng = np.random.default_rng(1)
    inp, hidden, layers, bi, batch = shape
    model = getattr(bptt, cell)(inp, hidden, layers, bidirectional=bi, dtype=dtype, seed=3,
                                **kw)
    x = rng.standard_normal((12, batch, inp)).astype(dtype)
    lengths = rng.integers(1, 13, size=batch)
    results = {}
    for n in (1, 2, 3, 4):
        bptt.set_num_threads(n)
        assert bptt.get_num_threads() == n
        results[n] = _run(model, x, lengths)
    for n in (2, 3, 4):
        for a, b in zip(results[1], results[n]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell,kw", CELLS + [("LSTM", {"proj_size": 24})])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("inp", [16, 600])
@pytest.mark.parametrize("hidden", [128, 256])
def test_inference_identical_across_thread_counts(cell, kw, dtype, batch_first, inp, hidden,
                                                  restore_engine):
    # Batch 40 at hidden 128: inference splits into groups of rows, one thread each
    # (14, 14, 12 rows at 3 threads on 3 cores or more); with lengths, an initial state and
    # two layers. Input 600: the input projection's GEMM over a group's rows blocks its
    # long sums as the whole's GEMM does.
    rng = np.random.default_rng(4)
    batch = 40
    # Hidden 256: the input projection runs step by step, in each group's step loop.
    model = getattr(bptt, cell)(inp, hidden, 2, batch_first=batch_first, dtype=dtype, seed=6,
                                **kw)
    shape = (batch, 11, inp) if batch_first else (11, batch, inp)
    x = rng.standard_normal(shape).astype(dtype)
    lengths = rng.integers(1, 12, size=batch)
    h_size = kw.get("proj_size", hidden)
    h0 = rng.standard_normal((2, batch, h_size)).astype(dtype)
    state = (h0, rng.standard_normal((2, batch, hidden)).astype(dtype)) if cell == "LSTM" else h0
    results = {}
    for n in (1, 2, 3):
        bptt.set_num_threads(n)
        out, st = model(x, state, lengths=lengths)
        results[n] = [out, *(st if isinstance(st, tuple) else (st,))]
    # The training forward (a tape, no split) gives the same outputs as well.
    out, st, _ = model.forward(x, state, lengths=lengths)
    results["tape"] = [out, *(st if isinstance(st, tuple) else (st,))]
    for n in (2, 3, "tape"):
        for a, b in zip(results[1], results[n]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell,kw", CELLS)
def test_row_groups_follow_the_calls_batch(cell, kw, restore_engine):
    # Hidden 128 projects step by step from 8 rows in the call. Batch 25 on 3 threads
    # splits into groups of 9, 9 and 7 rows (on 3 cores or more): the group of 7 must take
    # the call's route, not the one of a 7-row call, or its rows would differ.
    rng = np.random.default_rng(8)
    model = getattr(bptt, cell)(20, 128, seed=3, **kw)
    x = rng.standard_normal((9, 25, 20)).astype(np.float32)
    results = {}
    for n in (1, 2, 3):
        bptt.set_num_threads(n)
        results[n] = model(x)[0]
    out, _, _ = model.forward(x)
    for got in (results[2], results[3], out):
        np.testing.assert_array_equal(results[1], got)
    # A 7-row call takes the chunk GEMM route: the same rows to rounding.
    alone, _ = model(x[:, 18:])
    np.testing.assert_allclose(alone, results[1][:, 18:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell,kw", CELLS)
@pytest.mark.parametrize("hidden", [40, 256])
def test_results_identical_across_simd_levels(cell, kw, hidden, restore_engine):
    detected = bptt.build_info()["simd_detected"]
    levels = ["scalar", "avx2", "avx512"]
    # aarch64 has one level, "neon" (its baseline).
    available = levels[: levels.index(detected) + 1] if detected in levels else [detected]
    rng = np.random.default_rng(2)
    # Hidden 256: the input projection runs step by step.
    model = getattr(bptt, cell)(8, hidden, 2, bidirectional=True, seed=5, **kw)
    x = rng.standard_normal((9, 5, 8)).astype(np.float32)
    results = {}
    for level in available:
        assert _core.set_simd_level(level) == level
        assert bptt.build_info()["simd"] == level
        results[level] = _run(model, x, lengths=[9, 3, 1, 9, 4])
    for level in available[1:]:
        for a, b in zip(results[available[0]], results[level]):
            if cell == "LSTM":
                np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())
            else:
                np.testing.assert_array_equal(a, b)
    for level in available[2:]:
        for a, b in zip(results[available[1]], results[level]):
            np.testing.assert_array_equal(a, b)


def test_unsupported_simd_level_is_a_clear_error(restore_engine):
    with pytest.raises(ValueError, match="level"):
        _core.set_simd_level("sse9")


def test_set_num_threads_rejects_nonpositive(restore_engine):
    with pytest.raises(ValueError, match="n"):
        bptt.set_num_threads(0)


@pytest.mark.parametrize(("n", "exc", "message"), [
    (1.5, TypeError, r"^n: expected an int number of threads, got float$"),
    ("4", TypeError, r"^n: expected an int number of threads, got str$"),
    (True, TypeError, r"^n: expected an int number of threads, got bool$"),
    (None, TypeError, r"^n: expected an int number of threads, got NoneType$"),
    (-1, ValueError, (r"^n: expected a number of threads from 1 to \d+ "
                      r"\(4 x max\(CPUs, 16\)\), got -1$")),
    (2**70, ValueError, (r"^n: expected a number of threads from 1 to 4 x max\(CPUs, 16\), "
                         r"got 1180591620717411303424$")),
])
def test_set_num_threads_names_n_and_what_it_expects(restore_engine, n, exc, message):
    before = bptt.get_num_threads()
    with pytest.raises(exc, match=message):
        bptt.set_num_threads(n)
    assert bptt.get_num_threads() == before


def test_set_num_threads_accepts_numpy_ints(restore_engine):
    bptt.set_num_threads(np.int64(2))
    assert bptt.get_num_threads() == 2


def test_build_info_reports_version_and_simd():
    info = bptt.build_info()
    assert info["version"] == bptt.__version__
    assert info["simd"] in ("scalar", "avx2", "avx512", "neon")
    assert (info["simd"] == "neon") == info["target"].startswith("aarch64-")
    assert info["num_threads"] == bptt.get_num_threads() >= 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("hidden,steps", [(64, 20), (256, 160)], ids=["short", "watched"])
def test_usable_in_a_forked_child(restore_engine, threads, hidden, steps):
    """After a fork the child builds its own pool and call thread (the "watched" shape is
    long enough to run on the call thread while the caller polls for signals)."""
    bptt.set_num_threads(threads)
    rng = np.random.default_rng(4)
    model = bptt.LSTM(16, hidden, bidirectional=True, seed=1)
    x = rng.standard_normal((steps, 32, 16)).astype(np.float32)
    want = _run(model, x)  # the parent's pool is now running
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: use bptt, report whether it matched, exit without cleanup
        ok = False
        try:
            got = _run(model, x)
            ok = all(np.array_equal(a, b) for a, b in zip(want, got))
        finally:
            os.write(w, b"1" if ok else b"0")
            os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    verdict = os.read(r, 1)
    os.close(r)
    assert status == 0
    assert verdict == b"1", "the forked child failed or gave different results"


def test_gil_is_released_during_work():
    """A Python thread keeps running while another thread is inside the core."""
    import threading

    model = bptt.LSTM(32, 256, seed=0)
    x = np.ones((400, 16, 32), dtype=np.float32)
    ticks = []
    done = threading.Event()

    def worker():
        model(x)
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    while not done.is_set():
        ticks.append(1)
        done.wait(0.0005)
    t.join()
    assert len(ticks) > 1, "the calling thread was blocked: the GIL was held"

