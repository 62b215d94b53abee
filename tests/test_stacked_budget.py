"""Stacked models under a tight memory budget: the tape keeps the layers' checkpoints but
not the inputs of the layers above the first, which backward recomputes segment by segment
from the checkpoints below. The smallest budget of an L-layer model is then close to L
times the single-layer one; the gradients are the full tape's.
"""

from __future__ import annotations

import re

import bptt
import numpy as np
import pytest
from conftest import make_model, state_parts


def minimum_budget(model, x, lengths=None):
    with pytest.raises(ValueError, match="memory_budget") as err:
        model.forward(x, lengths=lengths, memory_budget=0)
    return int(re.search(r"at least (\d+) bytes", str(err.value)).group(1))


def assert_close(a, b, tol, what):
    scale = max(float(np.max(np.abs(b))), 1e-30)
    err = float(np.max(np.abs(np.asarray(a, np.float64) - b))) / scale
    assert err <= tol, f"{what}: relative error {err:.2e}"


def check_same_gradients(m, x, d_out, budget, lengths=None, **kw):
    out_f, st_f, full = m.forward(x, lengths=lengths, **kw)
    g_f = m.backward(full, d_out)
    out, st, tape = m.forward(x, lengths=lengths, memory_budget=budget, **kw)
    assert tape.segment is not None
    assert tape.nbytes <= budget
    g = m.backward(tape, d_out)
    np.testing.assert_array_equal(out, out_f)
    for a, b in zip(state_parts(st), state_parts(st_f), strict=True):
        np.testing.assert_array_equal(a, b)
    assert_close(g.dx, g_f.dx, 1e-12, "dx")
    assert_close(g.dh_norm, g_f.dh_norm, 1e-12, "dh_norm")
    for a, b in zip(state_parts(g.dstate), state_parts(g_f.dstate), strict=True):
        assert_close(a, b, 1e-12, "dstate")
    for k, v in g_f.params.items():
        assert_close(g.params[k], v, 1e-12, k)
    return full, tape


@pytest.mark.parametrize("lengths", [False, True], ids=["all", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layers", [2, 3], ids=["L2", "L3"])
@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru", "lstm_proj"])
def test_inputs_are_recomputed_and_gradients_equal_full_tape(kind, layers, bidirectional,
                                                             lengths, rng):
    T, B, IN, H = 150, 3, 4, 6
    kw = {"proj_size": 4} if kind == "lstm_proj" else {}
    m = make_model(kind.removesuffix("_proj"), IN, H, layers, bidirectional=bidirectional,
                   dtype=np.float64, seed=1, **kw)
    D = 2 if bidirectional else 1
    x = rng.standard_normal((T, B, IN))
    lens = np.array([T, 5, 97], dtype=np.int64) if lengths else None
    d_out = rng.standard_normal((T, B, D * m.output_hidden_size))
    smallest = minimum_budget(m, x, lens)
    full, tape = check_same_gradients(m, x, d_out, smallest, lens)
    # The tape holds the checkpoints (and its copy of x with lengths), not the inputs of
    # the layers above the first.
    k = tape.segment
    state = m.output_hidden_size + (H if m.has_cell_state else 0)
    checkpoints = -(-T // k) * layers * D * B * state * 8
    copies = T * B * IN * 8 + B * 8 if lengths else 0
    assert tape.nbytes == checkpoints + copies
    # Every segment length in between works too.
    check_same_gradients(m, x, d_out, (smallest + full.nbytes) // 3, lens)


def test_with_dropout(rng):
    T, B = 30, 2
    m = bptt.GRU(3, 5, 3, bidirectional=True, dropout=0.3, dtype=np.float64, seed=2)
    x = rng.standard_normal((T, B, 3))
    d_out = rng.standard_normal((T, B, 10))
    smallest = minimum_budget(m, x)
    check_same_gradients(m, x, d_out, smallest, dropout_seed=77)


def test_batch_first_and_float32(rng):
    T, B = 25, 3
    m = bptt.LSTM(3, 5, 2, bidirectional=True, batch_first=True, seed=3)
    x = rng.standard_normal((B, T, 3)).astype(np.float32)
    d_out = rng.standard_normal((B, T, 10)).astype(np.float32)
    _, _, full = m.forward(x)
    g_f = m.backward(full, d_out)
    smallest = minimum_budget(m, x)
    _, _, tape = m.forward(x, memory_budget=smallest)
    g = m.backward(tape, d_out)
    for k, v in g_f.params.items():
        assert_close(g.params[k], v, 2e-5, k)
    assert_close(g.dx, g_f.dx, 2e-5, "dx")


def test_floor_is_close_to_layers_times_single_layer():
    """The example of a 2-layer bidirectional LSTM (T=400, B=4, I=8, H=32, float64)."""
    T, B, IN, H = 400, 4, 8, 32
    x = np.zeros((T, B, IN))
    two = bptt.LSTM(IN, H, 2, bidirectional=True, dtype=np.float64, seed=0)
    one = bptt.LSTM(IN, H, 1, bidirectional=True, dtype=np.float64, seed=0)
    _, _, full = two.forward(x)
    floor2, floor1 = minimum_budget(two, x), minimum_budget(one, x)
    # Keeping the second layer's input alone takes T·B·2H·8 bytes = 819200 (the floor was
    # 1.34 MB when it was kept).
    assert floor2 < T * B * 2 * H * 8 < full.nbytes
    assert floor2 <= 2 * floor1
    _, _, tape = two.forward(x, memory_budget=floor2)
    assert tape.nbytes <= floor2
    # At T = 1000, 1/16 of the full tape is accepted.
    x = np.zeros((1000, B, IN))
    _, _, full = two.forward(x)
    _, _, tape = two.forward(x, memory_budget=full.nbytes // 16)
    assert tape.segment is not None and tape.nbytes <= full.nbytes // 16
