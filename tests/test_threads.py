"""Several Python threads using one model at once give exactly the serial results."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import KINDS, make_model, random_state, state_parts

N_THREADS = 8
ROUNDS = 3
T, B, IN, H, L = 16, 6, 8, 24, 2


def flatten(inf, out, st, g):
    arrays = [inf[0], *state_parts(inf[1]), out, *state_parts(st)]
    arrays += [g.dx, *state_parts(g.dstate), g.dh_norm]
    arrays += [g.params[k] for k in sorted(g.params)]
    return arrays


def work(m, args):
    x, state, d_out, d_state, lengths = args
    inf = m(x, state, lengths=lengths)
    out, st, tape = m.forward(x, state, lengths=lengths)
    g = m.backward(tape, d_out, d_state)
    return flatten(inf, out, st, g)


def make_inputs(kind, rng, dtype, i):
    x = rng.standard_normal((T, B, IN)).astype(dtype)
    state = random_state(rng, kind, L, 2, B, H, dtype) if i % 2 else None
    d_out = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    d_state = random_state(rng, kind, L, 2, B, H, dtype, 1.0) if i % 3 else None
    lengths = rng.integers(1, T + 1, size=B) if i % 2 == 0 else None
    return x, state, d_out, d_state, lengths


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", KINDS)
def test_threads_match_serial(kind, dtype, rng):
    m = make_model(kind, IN, H, L, bidirectional=True, dtype=dtype, seed=21)
    per_thread = [make_inputs(kind, rng, dtype, i) for i in range(N_THREADS)]
    serial = [work(m, args) for args in per_thread]

    barrier = threading.Barrier(N_THREADS)
    results: list = [None] * N_THREADS
    errors: list = []

    def run(i):
        try:
            barrier.wait()
            got = []
            for _ in range(ROUNDS):
                got.append(work(m, per_thread[i]))
            results[i] = got
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append((i, exc))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N_THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    assert not errors, f"thread errors: {errors!r}"

    for i in range(N_THREADS):
        for r, got in enumerate(results[i]):
            for j, (a, e) in enumerate(zip(got, serial[i], strict=True)):
                np.testing.assert_array_equal(a, e, err_msg=f"thread {i} round {r} result {j}")


@pytest.mark.parametrize("kind", KINDS)
def test_threads_share_inputs_and_tapes_are_independent(kind, rng):
    """All threads pass the same arrays; each thread's tape gives the serial gradients."""
    m = make_model(kind, IN, H, L, bidirectional=True, dtype=np.float64, seed=22)
    args = make_inputs(kind, rng, np.float64, 1)
    expected = work(m, args)
    x, state, d_out, d_state, lengths = args
    barrier = threading.Barrier(N_THREADS)
    tapes: list = [None] * N_THREADS
    results: list = [None] * N_THREADS
    errors: list = []

    def run(i):
        try:
            barrier.wait()
            inf = m(x, state, lengths=lengths)
            out, st, tapes[i] = m.forward(x, state, lengths=lengths)
            barrier.wait()  # every tape exists before any backward runs
            g = m.backward(tapes[(i + 1) % N_THREADS], d_out, d_state)
            results[i] = flatten(inf, out, st, g)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append((i, exc))
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N_THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, f"thread errors: {errors!r}"
    for i in range(N_THREADS):
        for j, (a, e) in enumerate(zip(results[i], expected, strict=True)):
            np.testing.assert_array_equal(a, e, err_msg=f"thread {i} result {j}")


@pytest.mark.parametrize("threads", [1, 2])
def test_long_calls_from_several_threads_at_once(threads):
    """Calls long enough to be watched for Ctrl-C (they run on bptt's call thread, or on a
    thread of their own while another call holds it) from several Python threads at once
    give the serial results."""
    import bptt

    before = bptt.get_num_threads()
    bptt.set_num_threads(threads)
    try:
        rng = np.random.default_rng(5)
        m = bptt.LSTM(16, 256, seed=3)
        xs = [rng.standard_normal((160, 32, 16)).astype(np.float32) for _ in range(4)]

        def both(x):
            out, _, tape = m.forward(x)
            return [out, m.backward(tape, np.cos(out)).dx]

        expected = [both(x) for x in xs]
        results: list = [None] * len(xs)
        errors: list = []
        barrier = threading.Barrier(len(xs))

        def run(i):
            try:
                barrier.wait()
                results[i] = both(xs[i])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append((i, exc))
                barrier.abort()

        pool = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
        for th in pool:
            th.start()
        for th in pool:
            th.join(timeout=300)
        assert not errors, f"thread errors: {errors!r}"
        for i, (got, want) in enumerate(zip(results, expected, strict=True)):
            for a, e in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, e, err_msg=f"thread {i}")
    finally:
        bptt.set_num_threads(before)
