"""LSTM with projections (``proj_size``): PyTorch's names, shapes, init and errors; outputs
and every gradient against ``torch.nn.LSTM(..., proj_size=P)`` in float64 over every
combination of layers, directions, layout, bias, lengths, memory budget; state_dict both
ways; pickling; truncated BPTT; float32.
"""

from __future__ import annotations

import pickle

import bptt
import numpy as np
import pytest
from conftest import check_close, rel_error

IN, H, P = 5, 7, 3
TORCH_TOL = 1e-10
MAX_ERR: dict[str, float] = {}


def torch_lstm(torch, layers, bidirectional, batch_first, bias, proj=P, hidden=H):
    torch.manual_seed(0)
    return torch.nn.LSTM(
        IN,
        hidden,
        num_layers=layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        bias=bias,
        proj_size=proj,
    ).double()


def torch_grads(torch, tm, x, state, r_out, r_state):
    """Outputs and gradients of ``L = Σ r_out·out + Σ r_h·h_n + Σ r_c·c_n`` in torch."""
    tx = torch.tensor(x, requires_grad=True)
    ts = tuple(torch.tensor(s, requires_grad=True) for s in state)
    for p in tm.parameters():
        p.grad = None
    out, (h, c) = tm(tx, ts)
    loss = (out * torch.tensor(r_out)).sum()
    loss = loss + (h * torch.tensor(r_state[0])).sum() + (c * torch.tensor(r_state[1])).sum()
    loss.backward()
    params = {k: p.grad.numpy().copy() for k, p in tm.named_parameters()}
    return (
        out.detach().numpy(),
        (h.detach().numpy(), c.detach().numpy()),
        tx.grad.numpy(),
        tuple(s.grad.numpy() for s in ts),
        params,
    )


def check(actual, expected, what, tol=TORCH_TOL):
    err = rel_error(actual, expected)
    MAX_ERR[what] = max(MAX_ERR.get(what, 0.0), err)
    check_close(actual, expected, np.float64, what, tol=tol)


def problem(rng, layers, bidirectional, batch_first, T=6, B=3):
    D = 2 if bidirectional else 1
    shape = (B, T, IN) if batch_first else (T, B, IN)
    x = rng.standard_normal(shape)
    state = (0.5 * rng.standard_normal((layers * D, B, P)),
             0.5 * rng.standard_normal((layers * D, B, H)))
    r_out = rng.standard_normal(shape[:2] + (D * P,))
    r_state = (rng.standard_normal((layers * D, B, P)), rng.standard_normal((layers * D, B, H)))
    return x, state, r_out, r_state


def compare_with_torch(torch, m, tm, x, state, r_out, r_state, memory_budget=None):
    t_out, t_st, t_dx, t_ds, t_params = torch_grads(torch, tm, x, state, r_out, r_state)
    out, st, tape = m.forward(x, state, memory_budget=memory_budget)
    g = m.backward(tape, r_out, r_state)
    check(out, t_out, "out")
    check(st[0], t_st[0], "h_n")
    check(st[1], t_st[1], "c_n")
    check(g.dx, t_dx, "dx")
    check(g.dstate[0], t_ds[0], "dh0")
    check(g.dstate[1], t_ds[1], "dc0")
    assert set(g.params) == set(t_params)
    for name, grad in t_params.items():
        check(g.params[name], grad, "d" + name.split("_l")[0])
    inf_out, inf_st = m(x, state)
    np.testing.assert_allclose(inf_out, out, rtol=0, atol=1e-13)
    np.testing.assert_allclose(inf_st[0], st[0], rtol=0, atol=1e-13)
    return tape, g


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layers", [1, 2, 3], ids=["L1", "L2", "L3"])
def test_matches_torch(layers, bidirectional, batch_first, bias, rng):
    torch = pytest.importorskip("torch")
    tm = torch_lstm(torch, layers, bidirectional, batch_first, bias)
    m = bptt.LSTM(IN, H, layers, bidirectional=bidirectional, batch_first=batch_first,
                  bias=bias, proj_size=P, dtype=np.float64, seed=1)
    sd = {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}
    assert list(m.state_dict()) == list(sd)
    m.load_state_dict(sd)
    compare_with_torch(torch, m, tm, *problem(rng, layers, bidirectional, batch_first))


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layers", [1, 2], ids=["L1", "L2"])
def test_memory_budget_matches_full_tape_and_torch(layers, bidirectional, batch_first, rng):
    torch = pytest.importorskip("torch")
    T = 40
    tm = torch_lstm(torch, layers, bidirectional, batch_first, True)
    m = bptt.LSTM(IN, H, layers, bidirectional=bidirectional, batch_first=batch_first,
                  proj_size=P, dtype=np.float64)
    m.load_state_dict({k: v.detach().numpy().copy() for k, v in tm.state_dict().items()})
    args = problem(rng, layers, bidirectional, batch_first, T=T, B=2)
    full_tape, g_full = compare_with_torch(torch, m, tm, *args)
    for frac in (0.5, 0.3):
        budget = int(full_tape.nbytes * frac)
        tape, g = compare_with_torch(torch, m, tm, *args, memory_budget=budget)
        assert tape.segment is not None and tape.segment < T
        assert tape.nbytes < full_tape.nbytes
        for name, grad in g_full.params.items():
            np.testing.assert_allclose(g.params[name], grad, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(g.dx, g_full.dx, rtol=1e-12, atol=1e-14)


def run_alone(torch, tm, x, state, r_out, r_state, lengths):
    """Torch over each sequence alone, cut to its length: what ``lengths`` means."""
    B = x.shape[1]
    outs, hs, cs, dxs, dh0s, dc0s, params = [], [], [], [], [], [], None
    for b in range(B):
        n = lengths[b]
        res = torch_grads(
            torch,
            tm,
            x[:n, b : b + 1],
            (state[0][:, b : b + 1], state[1][:, b : b + 1]),
            r_out[:n, b : b + 1],
            (r_state[0][:, b : b + 1], r_state[1][:, b : b + 1]),
        )
        out = np.zeros((x.shape[0], 1, r_out.shape[2]))
        out[:n] = res[0]
        dx = np.zeros((x.shape[0], 1, x.shape[2]))
        dx[:n] = res[2]
        outs.append(out)
        dxs.append(dx)
        hs.append(res[1][0])
        cs.append(res[1][1])
        dh0s.append(res[3][0])
        dc0s.append(res[3][1])
        params = res[4] if params is None else {k: params[k] + v for k, v in res[4].items()}
    cat = np.concatenate
    return cat(outs, 1), (cat(hs, 1), cat(cs, 1)), cat(dxs, 1), (cat(dh0s, 1), cat(dc0s, 1)), params


@pytest.mark.parametrize("budget", [False, True], ids=["full", "budget"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layers", [1, 2], ids=["L1", "L2"])
def test_lengths_match_torch_per_sequence(layers, bidirectional, budget, rng):
    torch = pytest.importorskip("torch")
    T, B = 12, 4
    lengths = np.array([3, 12, 1, 8], dtype=np.int64)
    tm = torch_lstm(torch, layers, bidirectional, False, True)
    m = bptt.LSTM(IN, H, layers, bidirectional=bidirectional, proj_size=P, dtype=np.float64)
    m.load_state_dict({k: v.detach().numpy().copy() for k, v in tm.state_dict().items()})
    x, state, r_out, r_state = problem(rng, layers, bidirectional, False, T=T, B=B)
    t_out, t_st, t_dx, t_ds, t_params = run_alone(torch, tm, x, state, r_out, r_state, lengths)
    mb = None
    if budget:
        full = m.forward(x, state, lengths=lengths)[2].nbytes
        mb = int(full * 0.7)
    out, st, tape = m.forward(x, state, lengths=lengths, memory_budget=mb)
    assert (tape.segment is not None) == budget
    g = m.backward(tape, r_out, r_state)
    check(out, t_out, "out")
    check(st[0], t_st[0], "h_n")
    check(st[1], t_st[1], "c_n")
    check(g.dx, t_dx, "dx")
    check(g.dstate[0], t_ds[0], "dh0")
    check(g.dstate[1], t_ds[1], "dc0")
    for name, grad in t_params.items():
        check(g.params[name], grad, "d" + name.split("_l")[0])
    # Padding is zero in the output; NaN padding in x does not leak.
    for b, n in enumerate(lengths):
        assert np.all(out[n:, b] == 0)
    x_nan = x.copy()
    for b, n in enumerate(lengths):
        x_nan[n:, b] = np.nan
    out2, _, tape2 = m.forward(x_nan, state, lengths=lengths)
    g2 = m.backward(tape2, r_out, r_state)
    np.testing.assert_array_equal(out2, out)
    assert all(np.all(np.isfinite(v)) for v in g2.params.values())


def test_names_shapes_and_init():
    m = bptt.LSTM(IN, H, 2, bidirectional=True, proj_size=P, seed=0)
    shapes = {k: v.shape for k, v in m.state_dict().items()}
    assert shapes["weight_ih_l0"] == (4 * H, IN)
    assert shapes["weight_hh_l0"] == (4 * H, P)
    assert shapes["weight_hr_l0"] == (P, H)
    assert shapes["weight_hr_l0_reverse"] == (P, H)
    assert shapes["weight_ih_l1"] == (4 * H, 2 * P)
    assert list(m.state_dict())[:5] == [
        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0"]
    assert m.output_hidden_size == P
    # PyTorch's init: U(-1/sqrt(H), 1/sqrt(H)) for every parameter, W_hr included.
    big = bptt.LSTM(IN, 100, proj_size=60, seed=0)
    w = big.state_dict()["weight_hr_l0"] * 10.0
    assert np.max(np.abs(w)) <= 1.0 and np.max(np.abs(w)) > 0.99
    assert abs(np.var(w) - 1 / 3) < 0.02
    assert "proj_size=3" in repr(m)
    x = np.zeros((4, 2, IN), dtype=np.float32)
    out, (h, c) = m(x)
    assert out.shape == (4, 2, 2 * P) and h.shape == (4, 2, P) and c.shape == (4, 2, H)


@pytest.mark.parametrize("bad", [H, H + 1, -1])
def test_bad_proj_size_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="proj_size"):
        bptt.LSTM(IN, H, proj_size=bad)


def test_proj_size_must_be_an_int():
    with pytest.raises(TypeError, match="proj_size"):
        bptt.LSTM(IN, H, proj_size=1.5)


def test_wrong_state_shapes_are_named():
    m = bptt.LSTM(IN, H, proj_size=P, dtype=np.float64)
    x = np.zeros((3, 2, IN))
    with pytest.raises(ValueError, match=rf"state\[0\].*\(1, 2, {P}\)"):
        m(x, (np.zeros((1, 2, H)), np.zeros((1, 2, H))))
    with pytest.raises(ValueError, match=rf"state\[1\].*\(1, 2, {H}\)"):
        m(x, (np.zeros((1, 2, P)), np.zeros((1, 2, P))))
    _, _, tape = m.forward(x)
    with pytest.raises(ValueError, match="d_out"):
        m.backward(tape, np.zeros((3, 2, H)))
    plain = bptt.LSTM(IN, H, dtype=np.float64)
    with pytest.raises(ValueError, match="weight_hr_l0"):
        plain.load_state_dict(m.state_dict())
    with pytest.raises(ValueError):
        m.load_state_dict(plain.state_dict())


def test_state_dict_to_torch(rng):
    torch = pytest.importorskip("torch")
    m = bptt.LSTM(IN, H, 2, bidirectional=True, proj_size=P, dtype=np.float64, seed=3)
    tm = torch_lstm(torch, 2, True, False, True)
    tm.load_state_dict({k: torch.tensor(v) for k, v in m.state_dict().items()})
    x = rng.standard_normal((5, 2, IN))
    out, (h, c) = m(x)
    t_out, (t_h, t_c) = tm(torch.tensor(x))
    check(out, t_out.detach().numpy(), "out")
    check(h, t_h.detach().numpy(), "h_n")
    check(c, t_c.detach().numpy(), "c_n")


def test_pickle_round_trip(rng):
    m = bptt.LSTM(IN, H, 2, proj_size=P, dtype=np.float64, seed=4)
    m2 = pickle.loads(pickle.dumps(m))
    assert m2.proj_size == P
    x = rng.standard_normal((4, 2, IN))
    np.testing.assert_array_equal(m(x)[0], m2(x)[0])


def test_float32_close_to_float64(rng):
    m64 = bptt.LSTM(IN, H, 2, bidirectional=True, proj_size=P, dtype=np.float64, seed=5)
    m32 = bptt.LSTM(IN, H, 2, bidirectional=True, proj_size=P, dtype=np.float32, seed=5)
    m32.load_state_dict(m64.state_dict())
    x = rng.standard_normal((6, 3, IN))
    d_out = rng.standard_normal((6, 3, 2 * P))
    o64, _, t64 = m64.forward(x)
    o32, _, t32 = m32.forward(x)
    g64, g32 = m64.backward(t64, d_out), m32.backward(t32, d_out)
    check_close(o32, o64, np.float32, "out")
    check_close(g32.dx, g64.dx, np.float32, "dx")
    for k, v in g64.params.items():
        assert g32.params[k].dtype == np.float32
        check_close(g32.params[k], v, np.float32, "d" + k)


def test_dh_norm_is_the_norm_of_the_projected_state_gradient(rng):
    """With d_out only at the last step and 1 layer, dh_norm[-1] = ||d_out[-1]||."""
    m = bptt.LSTM(IN, H, proj_size=P, dtype=np.float64, seed=6)
    x = rng.standard_normal((5, 2, IN))
    d_out = np.zeros((5, 2, P))
    d_out[-1] = rng.standard_normal((2, P))
    _, _, tape = m.forward(x)
    g = m.backward(tape, d_out)
    assert g.dh_norm.shape == (1, 5)
    assert abs(g.dh_norm[0, -1] - np.linalg.norm(d_out[-1])) < 1e-12
    assert np.all(g.dh_norm[0, :-1] > 0)


def test_truncated_bptt_with_projections(rng):
    from bptt.tbptt import TBPTT

    T, B, k = 12, 2, 4
    m = bptt.LSTM(IN, H, 2, proj_size=P, dtype=np.float64, seed=7)
    ro = bptt.Linear(P, 2, dtype=np.float64, seed=1)
    x = rng.standard_normal((T, B, IN))
    y = rng.standard_normal((T, B, 2))
    s0 = (0.5 * rng.standard_normal((2, B, P)), 0.5 * rng.standard_normal((2, B, H)))
    res = TBPTT(m, ro, bptt.mse_loss, None, k1=k).train(x, y, state=s0, keep_grads=True)
    # By hand: chunks of k steps, the state carried (and detached) between them.
    state = s0
    for j in range(T // k):
        sl = slice(j * k, (j + 1) * k)
        out, fin, tape = m.forward(x[sl], state)
        pred, cache = ro.forward(out)
        loss, d_pred = bptt.mse_loss(pred, y[sl])
        d_h, _ = ro.backward(cache, d_pred)
        g = m.backward(tape, d_h)
        assert res.losses[j] == pytest.approx(loss, rel=1e-12)
        for name, v in g.params.items():
            np.testing.assert_allclose(res.grads[j][f"rnn.{name}"], v, rtol=1e-12, atol=1e-14)
        state = fin
    np.testing.assert_allclose(res.state[0], state[0], rtol=1e-12)
    np.testing.assert_allclose(res.state[1], state[1], rtol=1e-12)
    with pytest.raises(ValueError, match="in_features"):
        TBPTT(m, bptt.Linear(H, 2), k1=k)


@pytest.mark.parametrize("lengths", [False, True], ids=["all", "lengths"])
def test_finite_differences(lengths, rng):
    T, B = 5, 3
    m = bptt.LSTM(IN, H, 2, bidirectional=True, proj_size=P, dtype=np.float64, seed=8)
    x = rng.standard_normal((T, B, IN))
    state = (0.5 * rng.standard_normal((4, B, P)), 0.5 * rng.standard_normal((4, B, H)))
    lens = np.array([5, 2, 4], dtype=np.int64) if lengths else None
    r_out = rng.standard_normal((T, B, 2 * P))
    r_h, r_c = rng.standard_normal((4, B, P)), rng.standard_normal((4, B, H))

    def loss():
        out, (h, c) = m(x, state, lengths=lens)
        return float(np.sum(out * r_out) + np.sum(h * r_h) + np.sum(c * r_c))

    _, _, tape = m.forward(x, state, lengths=lens)
    g = m.backward(tape, r_out, (r_h, r_c))
    eps = 1e-6

    def numeric(arr, idx):
        old = arr[idx]
        arr[idx] = old + eps
        up = loss()
        arr[idx] = old - eps
        down = loss()
        arr[idx] = old
        return (up - down) / (2 * eps)

    for name in ("weight_hr_l0", "weight_hr_l1_reverse", "weight_hh_l1", "weight_ih_l1_reverse",
                 "bias_hh_l0_reverse"):
        p = m.params[name]
        for idx in [tuple(int(rng.integers(s)) for s in p.shape) for _ in range(4)]:
            num = numeric(p, idx)
            assert abs(g.params[name][idx] - num) <= 1e-7 * max(1.0, abs(num)), (name, idx)
    for arr, grad in ((x, g.dx), (state[0], g.dstate[0]), (state[1], g.dstate[1])):
        for idx in [tuple(int(rng.integers(s)) for s in arr.shape) for _ in range(4)]:
            num = numeric(arr, idx)
            assert abs(grad[idx] - num) <= 1e-7 * max(1.0, abs(num))
