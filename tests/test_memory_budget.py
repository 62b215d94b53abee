"""Full BPTT under a memory budget: checkpoints every k steps, segments recomputed.

The gradients must equal the full tape's (to float rounding: weight gradients are summed
segment by segment), for every cell, layer count, direction, lengths and dtype; the tape
must stay within the budget; budgets below the minimum are refused with the minimum.
"""

import re

import bptt
import numpy as np
import pytest

CELLS = {
    "lstm": lambda *a, **k: bptt.LSTM(*a, **k),
    "gru": lambda *a, **k: bptt.GRU(*a, **k),
    "rnn_tanh": lambda *a, **k: bptt.RNN(*a, nonlinearity="tanh", **k),
    "rnn_relu": lambda *a, **k: bptt.RNN(*a, nonlinearity="relu", **k),
}
T, B, I, H = 23, 4, 5, 6
TOL = {np.float64: 1e-12, np.float32: 2e-5}


def minimum_budget(model, x, lengths=None):
    with pytest.raises(ValueError, match="memory_budget") as err:
        model.forward(x, lengths=lengths, memory_budget=0)
    return int(re.search(r"at least (\d+) bytes", str(err.value)).group(1))


def grads(model, x, lengths, budget, d_out, d_state):
    out, state, tape = model.forward(x, lengths=lengths, memory_budget=budget)
    g = model.backward(tape, d_out, d_state)
    return out, state, tape, g


def assert_close(a, b, tol, what):
    scale = max(float(np.max(np.abs(b))), 1e-30)
    err = float(np.max(np.abs(np.asarray(a, np.float64) - b))) / scale
    assert err <= tol, f"{what}: relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lengths", [None, "random"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", list(CELLS))
def test_budget_gradients_equal_full_tape(cell, layers, bidirectional, lengths, dtype):
    check_budget(cell, layers, bidirectional, lengths, dtype, H)


@pytest.mark.parametrize("cell", list(CELLS))
def test_budget_gradients_equal_full_tape_step_projection(cell):
    # 256 hidden units: the input projection runs step by step, in forward and in the
    # recomputed segments.
    check_budget(cell, 2, True, "random", np.float64, 256)


def check_budget(cell, layers, bidirectional, lengths, dtype, H):
    rng = np.random.default_rng(layers * 10 + bidirectional)
    m = CELLS[cell](I, H, layers, bidirectional=bidirectional, dtype=dtype, seed=1)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lens = rng.integers(1, T + 1, size=B) if lengths else None
    D = 2 if bidirectional else 1
    d_out = rng.standard_normal((T, B, D * H)).astype(dtype)
    ds = rng.standard_normal((layers * D, B, H)).astype(dtype)
    d_state = (ds, ds * 0.5) if cell == "lstm" else ds
    want_out, want_state, full, want = grads(m, x, lens, None, d_out, d_state)
    assert full.segment is None
    smallest = minimum_budget(m, x, lens)
    assert smallest < full.nbytes
    for budget in (smallest, (smallest + full.nbytes) // 2, full.nbytes, 10**12):
        out, state, tape, g = grads(m, x, lens, budget, d_out, d_state)
        if budget < full.nbytes:
            assert tape.segment is not None and tape.segment <= T
            assert tape.nbytes < full.nbytes
        else:
            assert tape.segment is None
        assert tape.nbytes <= max(budget, full.nbytes)
        np.testing.assert_array_equal(out, want_out)
        for a, b in zip(np.atleast_1d(state), np.atleast_1d(want_state)):
            np.testing.assert_array_equal(a, b)
        tol = TOL[dtype]
        assert_close(g.dx, want.dx, tol, "dx")
        assert_close(g.dh_norm, want.dh_norm, tol, "dh_norm")
        for a, b in zip(np.atleast_1d(g.dstate), np.atleast_1d(want.dstate)):
            assert_close(a, b, tol, "dstate")
        for k in want.params:
            assert_close(g.params[k], want.params[k], tol, k)


def test_one_step_segments():
    """The smallest budget of a long, thin problem checkpoints every step or so."""
    m = bptt.GRU(3, 2, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((200, 1, 3))
    smallest = minimum_budget(m, x)
    _, _, tape = m.forward(x, memory_budget=smallest)
    assert tape.segment is not None and tape.segment < 200
    # Every k from 1 up is reachable; k = 1 is the extreme of recomputation.
    out, _, tape1 = m.forward(x, memory_budget=smallest)
    g = m.backward(tape1, np.ones_like(out))
    _, _, full = m.forward(x)
    want = m.backward(full, np.ones_like(out))
    assert_close(g.params["weight_hh_l0"], want.params["weight_hh_l0"], 1e-12, "weight_hh")


def test_budget_below_minimum_names_the_minimum():
    m = bptt.LSTM(4, 8, seed=0)
    x = np.zeros((50, 2, 4), np.float32)
    smallest = minimum_budget(m, x)
    with pytest.raises(ValueError, match=f"memory_budget: expected at least {smallest} bytes"):
        m.forward(x, memory_budget=smallest - 1)
    m.forward(x, memory_budget=smallest)


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (1.5, TypeError), (True, TypeError),
                                     ("1000", TypeError)])
def test_bad_budget_types(bad, exc):
    m = bptt.RNN(4, 8, seed=0)
    with pytest.raises(exc, match="memory_budget"):
        m.forward(np.zeros((5, 2, 4), np.float32), memory_budget=bad)


def test_tape_refers_to_x_and_detects_changes():
    m = bptt.LSTM(4, 8, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 2, 4)).astype(np.float32)
    out, _, tape = m.forward(x)
    orig = x[0, 0, 0]
    x[0, 0, 0] = orig + 1.0
    with pytest.raises(ValueError, match="x: differs"):
        m.backward(tape, np.ones_like(out))
    x[0, 0, 0] = orig
    m.backward(tape, np.ones_like(out))  # restored: accepted again


