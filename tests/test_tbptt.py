"""Truncated BPTT: k1 = k2 = T equals full BPTT; for k1 < k2 with episode resets, every
chunk's gradient equals an independent reference (tests/reference.py, run per stream and
per episode segment); with updates, the trajectory equals a plain loop over the model."""

from __future__ import annotations

import itertools
from typing import ClassVar

import bptt
import numpy as np
import pytest
from bptt.optim import SGD
from bptt.tbptt import TBPTT, parameters
from conftest import load_reference, make_model

IN, H, OUT = 2, 3, 2


def model(kind, num_layers=2, **kw):
    return make_model(kind, IN, H, num_layers, dtype=np.float64, seed=5, **kw)


def state_of(kind, rng, num_layers, B):
    h = 0.5 * rng.standard_normal((num_layers, B, H))
    return (h, 0.5 * rng.standard_normal((num_layers, B, H))) if kind == "lstm" else h


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_one_chunk_equals_full_bptt(kind, rng):
    T, B = 9, 3
    m, ro = model(kind), bptt.Linear(H, OUT, dtype=np.float64, seed=1)
    x = rng.standard_normal((T, B, IN))
    y = rng.standard_normal((T, B, OUT))
    s0 = state_of(kind, rng, 2, B)
    res = TBPTT(m, ro, bptt.mse_loss, None, k1=T).train(x, y, state=s0, keep_grads=True)

    out, st, tape = m.forward(x, s0)
    pred, cache = ro.forward(out)
    loss, d_pred = bptt.mse_loss(pred, y)
    d_h, g_ro = ro.backward(cache, d_pred)
    g = m.backward(tape, d_h)
    assert res.losses.tolist() == [loss]
    assert res.grad_norms.shape == (1,) and res.n_terms.tolist() == [T * B]
    got = res.grads[0]
    for k, v in g.params.items():
        np.testing.assert_allclose(got[f"rnn.{k}"], v, rtol=1e-12, atol=1e-14)
    for k, v in g_ro.items():
        np.testing.assert_allclose(got[f"readout.{k}"], v, rtol=1e-12, atol=1e-14)
    for a, b in zip(st if kind == "lstm" else (st,),
                    res.state if kind == "lstm" else (res.state,)):
        np.testing.assert_allclose(b, a, rtol=1e-12)
    assert res.grad_norms[0] == pytest.approx(bptt.clip.grad_norm(got))


def reference_chunk_grads(kind, m, ro, x, y, mask, resets, s0, k1, k2):
    """Per chunk: (loss, grads) from tests/reference.py, one stream and one episode
    segment at a time, with the state at the window start recomputed from the last reset."""
    ref = load_reference()
    p = {k: v.copy() for k, v in m.params.items()}
    W, b = ro.params["weight"], ro.params["bias"]
    L = m.num_layers
    T, B = x.shape[:2]
    lstm = kind == "lstm"

    def fwd(xs, st):
        return ref.forward(kind, p, xs[:, None], st, num_layers=L, hidden_size=H)

    def col(st, j):
        return (st[0][:, j:j + 1], st[1][:, j:j + 1]) if lstm else st[:, j:j + 1]

    def zero():
        z = np.zeros((L, 1, H))
        return (z, z.copy()) if lstm else z

    def state_at(j, t):
        """Stream j's state before step t (zeros after a reset at t)."""
        starts = [u for u in range(t + 1) if resets[u, j]]
        a = starts[-1] if starts else 0
        st = zero() if starts else col(s0, j)
        if a < t:
            _, st, _ = fwd(x[a:t, j], st)
        return st

    out = []
    for s in range(0, T, k1):
        e = min(s + k1, T)
        w = max(0, e - k2)
        mk = mask[s:e]
        n = int(mk.sum()) * OUT
        if n == 0:
            out.append(None)
            continue
        grads = {f"rnn.{k}": np.zeros_like(v) for k, v in p.items()}
        grads["readout.weight"] = np.zeros_like(W)
        grads["readout.bias"] = np.zeros_like(b)
        loss = 0.0
        for j in range(B):
            cuts = [w] + [u for u in range(w + 1, e) if resets[u, j]] + [e]
            for a, c in itertools.pairwise(cuts):
                st = state_at(j, a)
                h, _, cache = fwd(x[a:c, j], st)
                h = h[:, 0]
                d_h = np.zeros_like(h)
                for t in range(max(a, s), c):
                    if mk[t - s, j]:
                        r = h[t - a] @ W.T + b - y[t, j]
                        loss += float(r @ r) / n
                        dr = 2 * r / n
                        grads["readout.weight"] += np.outer(dr, h[t - a])
                        grads["readout.bias"] += dr
                        d_h[t - a] = dr @ W
                g = ref.backward(cache, d_h[:, None])
                for k, v in g["params"].items():
                    grads[f"rnn.{k}"] += v
        out.append((loss, grads))
    return out


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
@pytest.mark.parametrize("k1,k2", [(3, 7), (2, 5), (4, 4), (3, 13)])
def test_chunk_gradients_equal_reference(kind, k1, k2, rng):
    T, B = 13, 3
    m, ro = model(kind), bptt.Linear(H, OUT, dtype=np.float64, seed=1)
    x = rng.standard_normal((T, B, IN))
    y = rng.standard_normal((T, B, OUT))
    mask = rng.random((T, B)) < 0.6
    mask[:k1] = False                               # a first chunk with no loss term
    resets = rng.random((T, B)) < 0.2
    resets[6, :] = True                             # a reset at a chunk start for every k1
    resets[0, 0] = True                             # reset before the very first step
    s0 = state_of(kind, rng, 2, B)
    tr = TBPTT(m, ro, bptt.mse_loss, None, k1=k1, k2=k2)
    res = tr.train(x, y, mask=mask, resets=resets, state=s0, keep_grads=True)
    expect = reference_chunk_grads(kind, m, ro, x, y, mask, resets, s0, k1, k2)
    assert len(res.losses) == len(expect) == -(-T // k1)
    assert res.grads[0] is None and np.isnan(res.losses[0]) and not res.updated.any()
    for j, ex in enumerate(expect):
        if ex is None:
            assert res.grads[j] is None and res.n_terms[j] == 0
            continue
        loss, grads = ex
        assert res.losses[j] == pytest.approx(loss, rel=1e-12)
        for k, v in grads.items():
            np.testing.assert_allclose(res.grads[j][k], v, rtol=1e-10, atol=1e-12,
                                       err_msg=f"chunk {j}, {k}")
    # the final state is each stream's state after its last episode segment
    fin = res.state if kind == "lstm" else (res.state,)
    for j in range(B):
        a = max(u for u in range(T) if resets[u, j])
        _, st = m(x[a:, j:j + 1])
        for got, want in zip(fin, st if kind == "lstm" else (st,)):
            np.testing.assert_allclose(got[:, j:j + 1], want, rtol=1e-12)


def test_updates_follow_a_plain_loop(rng):
    """k1 < k2 with SGD updates, no resets: the same trajectory as an explicit loop that runs
    each window in one call from the carried state and advances the state separately."""
    T, B, k1, k2, lr = 11, 2, 3, 5, 0.3
    x = rng.standard_normal((T, B, IN))
    y = rng.standard_normal((T, B, OUT))
    m1, r1 = model("lstm", 1), bptt.Linear(H, OUT, dtype=np.float64, seed=1)
    m2, r2 = model("lstm", 1), bptt.Linear(H, OUT, dtype=np.float64, seed=1)
    tr = TBPTT(m1, r1, bptt.mse_loss, SGD(parameters(m1, r1), lr=lr), k1=k1, k2=k2,
               clip_norm=0.5)
    res = tr.train(x, y)
    assert res.updated.all()

    p2 = parameters(m2, r2)
    st = None
    w = 0
    norms = []
    for s in range(0, T, k1):
        e = min(s + k1, T)
        out, _, tape = m2.forward(x[w:e], st)
        pred, cache = r2.forward(out[s - w:])
        _, d_pred = bptt.mse_loss(pred, y[s:e])
        d_h, g_ro = r2.backward(cache, d_pred)
        d_out = np.zeros_like(out)
        d_out[s - w:] = d_h
        g = m2.backward(tape, d_out)
        grads = {**{f"rnn.{k}": v for k, v in g.params.items()},
                 **{f"readout.{k}": v for k, v in g_ro.items()}}
        norms.append(bptt.clip_grad_norm(grads, 0.5))
        w_next = e if e == T else max(0, min(e + k1, T) - k2)
        if w_next > w:
            _, st = m2(x[w:w_next], st)           # with the parameters before the update
        for k, v in grads.items():
            p2[k] -= lr * v
        w = w_next
    np.testing.assert_allclose(res.grad_norms, norms, rtol=1e-10)
    for k, v in parameters(m1, r1).items():
        np.testing.assert_allclose(v, p2[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_batch_first_model_and_cross_entropy(rng):
    T, B, C = 8, 2, 4
    x = rng.standard_normal((T, B, IN))
    labels = rng.integers(0, C, size=(T, B))
    res = []
    for bf in (False, True):
        m = model("gru", 1, batch_first=bf)
        ro = bptt.Linear(H, C, dtype=np.float64, seed=2)
        tr = TBPTT(m, ro, bptt.cross_entropy_loss, None, k1=3, k2=5)
        res.append(tr.train(x, labels, resets=np.eye(T, B, k=-4, dtype=bool),
                            keep_grads=True))
    np.testing.assert_allclose(res[0].losses, res[1].losses, rtol=1e-12)
    for g0, g1 in zip(res[0].grads, res[1].grads):
        for k in g0:
            np.testing.assert_allclose(g0[k], g1[k], rtol=1e-11, atol=1e-13)


def test_no_readout_clipping_and_training_reduces_loss():
    """Loss on the recurrent output itself; clip_value; training lowers the loss."""
    data = bptt.data.adding_stream(8, 10, 30, seed=0)
    m = bptt.LSTM(2, 1, seed=0)
    opt = bptt.optim.Adam(m.params, lr=0.05)
    tr = TBPTT(m, None, bptt.mse_loss, opt, k1=10, clip_value=0.5)
    res = tr.train(data["x"], data["y"], mask=data["mask"], resets=data["resets"])
    assert res.updated.sum() == 30 and res.n_terms.tolist() == [8] * 30
    assert np.mean(res.losses[-5:]) < np.mean(res.losses[:5])
    assert res.mean_loss == pytest.approx(np.mean(res.losses))


def test_chunks_without_loss_skip_the_update():
    data = bptt.data.adding_stream(2, 6, 3, seed=0)
    m = bptt.RNN(2, 3, seed=0)
    ro = bptt.Linear(3, 1, seed=0)
    before = {k: v.copy() for k, v in parameters(m, ro).items()}
    opt = SGD(parameters(m, ro), lr=0.1)
    tr = TBPTT(m, ro, bptt.mse_loss, opt, k1=2, k2=6)
    res = tr.train(data["x"], data["y"], mask=data["mask"], resets=data["resets"])
    assert res.updated.tolist() == [False, False, True] * 3
    assert np.isnan(res.losses[0]) and np.isnan(res.grad_norms[0])
    assert np.isfinite(res.losses[2]) and res.grad_norms[2] > 0
    assert res.chunk_ends.tolist() == list(range(2, 19, 2))
    assert any(np.any(v != before[k]) for k, v in parameters(m, ro).items())
    assert "9 chunks, 3 updates" in repr(res)


def test_errors():
    m = bptt.RNN(2, 3)
    ro = bptt.Linear(3, 1)
    with pytest.raises(ValueError, match="k2: expected k2 >= k1 = 4"):
        TBPTT(m, ro, k1=4, k2=3)
    with pytest.raises(TypeError, match="k1"):
        TBPTT(m, ro, k1=2.0)
    with pytest.raises(ValueError, match="bidirectional"):
        TBPTT(bptt.GRU(2, 3, bidirectional=True), ro, k1=2)
    with pytest.raises(ValueError, match="readout.weight"):
        TBPTT(m, ro, bptt.mse_loss, SGD(m.params), k1=2)
    with pytest.raises(TypeError, match="optimizer"):
        TBPTT(m, ro, bptt.mse_loss, object(), k1=2)
    tr = TBPTT(m, ro, k1=2)
    with pytest.raises(ValueError, match=r"x: expected shape \(T, B, 2\)"):
        tr.train(np.zeros((4, 2, 3)), np.zeros((4, 2, 1)))
    with pytest.raises(TypeError, match="x"):
        tr.train(np.zeros((4, 2, 2), dtype=np.int64), np.zeros((4, 2, 1)))
    with pytest.raises(ValueError, match="y"):
        tr.train(np.zeros((4, 2, 2)), np.zeros((3, 2, 1)))
    with pytest.raises(ValueError, match=r"resets: expected shape \(4, 2\)"):
        tr.train(np.zeros((4, 2, 2)), np.zeros((4, 2, 1)), resets=np.zeros((4, 3), bool))
    with pytest.raises(TypeError, match="mask"):
        tr.train(np.zeros((4, 2, 2)), np.zeros((4, 2, 1)), mask=np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"state: expected shape \(1, 2, 3\)"):
        tr.train(np.zeros((4, 2, 2)), np.zeros((4, 2, 1)), state=np.zeros((1, 1, 3)))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_memory_budget_gives_the_same_chunk_gradients(kind, rng):
    """Full BPTT through each window in bounded memory: same gradients to rounding."""
    T, B = 40, 3
    m, ro = model(kind), bptt.Linear(H, OUT, dtype=np.float64, seed=1)
    x = rng.standard_normal((T, B, IN))
    y = rng.standard_normal((T, B, OUT))
    want = TBPTT(m, ro, bptt.mse_loss, None, k1=10, k2=20).train(x, y, keep_grads=True)
    with pytest.raises(ValueError, match="memory_budget"):
        TBPTT(m, ro, bptt.mse_loss, None, k1=10, k2=20, memory_budget=1).train(x, y)
    # Below a plain 20-step window's full tape, so that window is checkpointed.
    _, _, full = m.forward(x[:20])
    budget = 12_000
    assert full.nbytes > budget
    _, _, small = m.forward(x[:20], memory_budget=budget)
    assert small.segment is not None
    got = TBPTT(m, ro, bptt.mse_loss, None, k1=10, k2=20,
                memory_budget=budget).train(x, y, keep_grads=True)
    np.testing.assert_array_equal(got.losses, want.losses)
    for gw, gg in zip(want.grads, got.grads):
        for k in gw:
            np.testing.assert_allclose(gg[k], gw[k], rtol=1e-11, atol=1e-14)


def test_arguments_are_checked_at_construction():
    m, ro = bptt.RNN(2, 3), bptt.Linear(3, 1)
    with pytest.raises(ValueError, match=r"memory_budget: expected a number of bytes from 0 to "
                                         r"\d+ \(None for no limit\), got -1"):
        TBPTT(m, ro, k1=2, memory_budget=-1)
    with pytest.raises(ValueError, match=r"memory_budget: .*got 18446744073709551616"):
        TBPTT(m, ro, k1=2, memory_budget=2**64)
    with pytest.raises(TypeError, match="memory_budget: expected an int number of bytes"):
        TBPTT(m, ro, k1=2, memory_budget=1e6)
    with pytest.raises(TypeError, match="clip_norm: expected a real number, got str"):
        TBPTT(m, ro, k1=2, clip_norm="1")
    with pytest.raises(ValueError, match="clip_value: expected a number >= 0 or None, got nan"):
        TBPTT(m, ro, k1=2, clip_value=float("nan"))
    with pytest.raises(TypeError, match="error_if_nonfinite: expected True or False"):
        TBPTT(m, ro, k1=2, error_if_nonfinite=np.array([1, 0]))
    # A readout of the wrong width is the readout's fault, said at once (not "x: ..." at
    # the first chunk of train).
    with pytest.raises(ValueError, match=r"readout: expected in_features = the model's "
                                         r"hidden_size \(3\), got 5"):
        TBPTT(m, bptt.Linear(5, 1), k1=2)


def test_train_checks_the_state_as_the_model_does():
    x, y = np.zeros((4, 2, 2)), np.zeros((4, 2, 1))
    tr = TBPTT(bptt.RNN(2, 3), bptt.Linear(3, 1), k1=2)
    with pytest.raises(TypeError, match=r"state: expected a floating-point array .*complex128"):
        tr.train(x, y, state=np.zeros((1, 2, 3), dtype=np.complex128))
    with pytest.raises(TypeError, match="state: expected a single array h, got tuple"):
        tr.train(x, y, state=(np.zeros((1, 2, 3)), np.zeros((1, 2, 3))))
    lstm = TBPTT(bptt.LSTM(2, 3), bptt.Linear(3, 1), k1=2)
    h = np.zeros((1, 2, 3))
    with pytest.raises(TypeError, match=r"state: expected a tuple \(h, c\) for an LSTM"):
        lstm.train(x, y, state=np.zeros((2, 1, 2, 3)))
    with pytest.raises(TypeError, match=r"state\[1\]: .*complex64"):
        lstm.train(x, y, state=(h, h.astype(np.complex64)))
    with pytest.raises(ValueError, match=r"state\[0\]: expected shape \(1, 2, 3\), got \(1, 1, 3\)"):
        lstm.train(x, y, state=(h[:, :1], h))
    with pytest.raises(TypeError, match="keep_grads: expected True or False"):
        lstm.train(x, y, keep_grads="yes")
    with pytest.raises(TypeError, match="callback: expected a callable or None, got int"):
        lstm.train(x, y, callback=3)
    assert lstm.train(x, y, state=(h, h)).losses.shape == (2,)   # and it still trains


def test_errors_inside_a_chunk_name_what_the_user_gave():
    x = np.zeros((4, 2, 2))
    tr = TBPTT(bptt.RNN(2, 3), bptt.Linear(3, 1), k1=2)
    # Targets of the wrong width: the loss function finds out, the message names y.
    with pytest.raises(ValueError, match=r"^y: loss_fn\(pred \(2, 2, 1\), y\[0:2\], mask\) "
                                         r"failed: target: expected shape"):
        tr.train(x, np.zeros((4, 2, 3)))

    class Readout:
        """A readout without in_features that refuses the model's output."""

        params: ClassVar[dict] = {}

        def forward(self, h):
            return bptt.Linear(5, 1).forward(h)

        def backward(self, cache, d):
            raise AssertionError("not reached")

    with pytest.raises(ValueError, match=r"^readout: forward\(\) of the model's output "
                                         r"\(2, 2, 3\): x: expected shape \(\.\.\., 5\)"):
        TBPTT(bptt.RNN(2, 3), Readout(), k1=2).train(x, np.zeros((4, 2, 1)))

    def bad_loss(pred, target, mask):
        return 0.0, np.zeros(3)

    with pytest.raises(ValueError, match=r"loss_fn: expected d_pred of the shape of pred "
                                         r"\(2, 2, 1\), got \(3,\)"):
        TBPTT(bptt.RNN(2, 3), bptt.Linear(3, 1), bad_loss, k1=2).train(x, np.zeros((4, 2, 1)))
    with pytest.raises(TypeError, match=r"loss_fn: expected it to return \(loss, d_pred\)"):
        TBPTT(bptt.RNN(2, 3), None, lambda p, t, m: 0.0, k1=2).train(x, np.zeros((4, 2, 3)))
