"""Dropout between stacked layers (``dropout=p``): against the NumPy reference with the same
explicit masks, against torch (the same masks between single-layer torch models, and
``p=0`` / eval mode against torch's fused model), finite differences in float64 with a
fixed mask, the statistics of the masks, and the train/inference switch.
"""

from __future__ import annotations

import pickle

import bptt
import numpy as np
import pytest
from conftest import KINDS, check_close, check_state_close, load_reference, make_model

IN, H = 4, 5


def model(kind, layers=2, **kw):
    kw.setdefault("dtype", np.float64)
    kw.setdefault("seed", 3)
    return make_model(kind, IN, H, layers, dropout=0.4, **kw)


@pytest.mark.parametrize("budget", [False, True], ids=["full", "budget"])
@pytest.mark.parametrize("lengths", [False, True], ids=["all", "lengths"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layers", [2, 3], ids=["L2", "L3"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference_with_the_same_masks(kind, layers, bidirectional, batch_first,
                                               lengths, budget, rng):
    ref = load_reference()
    T, B = 12, 4
    D = 2 if bidirectional else 1
    m = model(kind, layers, bidirectional=bidirectional, batch_first=batch_first)
    lens = np.array([3, 12, 1, 8], dtype=np.int64) if lengths else None
    shape = (B, T, IN) if batch_first else (T, B, IN)
    x = rng.standard_normal(shape)
    d_out = rng.standard_normal(shape[:2] + (D * H,))
    seed = int(rng.integers(1 << 40))
    full = m.forward(x, lengths=lens, dropout_seed=seed)[2].nbytes
    mb = int(full * 0.7) if budget else None
    out, st, tape = m.forward(x, lengths=lens, dropout_seed=seed, memory_budget=mb)
    assert (tape.segment is not None) == budget
    g = m.backward(tape, d_out)

    masks = m.dropout_masks(seed, T, B)
    assert masks.shape == (layers - 1, T, B, D * H)
    tm = (lambda a: a.swapaxes(0, 1)) if batch_first else (lambda a: a)
    r_out, r_st, cache = ref.forward(kind, {k: v.copy() for k, v in m.params.items()}, tm(x),
                                     num_layers=layers, hidden_size=H,
                                     bidirectional=bidirectional, lengths=lens,
                                     dropout_masks=masks)
    r_g = ref.backward(cache, tm(d_out))
    check_close(tm(out), r_out, np.float64, "dropout out")
    check_state_close(st, r_st, np.float64, "dropout state")
    check_close(tm(g.dx), r_g["dx"], np.float64, "dropout dx")
    check_state_close(g.dstate, r_g["dstate"], np.float64, "dropout dstate")
    for k, v in g.params.items():
        check_close(v, r_g["params"][k], np.float64, "dropout d" + k.split("_l")[0])
    check_close(g.dh_norm, r_g["dh_norm"], np.float64, "dropout dh_norm")
    # Something was dropped, and inference drops nothing.
    r_plain = ref.forward(kind, {k: v.copy() for k, v in m.params.items()}, tm(x),
                          num_layers=layers, hidden_size=H, bidirectional=bidirectional,
                          lengths=lens)[0]
    assert not np.allclose(r_out, r_plain)
    check_close(tm(m(x, lengths=lens)[0]), r_plain, np.float64, "dropout inference")


@pytest.mark.parametrize("kind", KINDS)
def test_finite_differences_with_a_fixed_mask(kind, rng):
    T, B = 4, 2
    m = model(kind, 3, bidirectional=True)
    x = rng.standard_normal((T, B, IN))
    r = rng.standard_normal((T, B, 2 * H))
    seed = 12345

    def loss():
        out, _, _ = m.forward(x, dropout_seed=seed)
        return float(np.sum(out * r))

    _, _, tape = m.forward(x, dropout_seed=seed)
    g = m.backward(tape, r)
    eps = 1e-6
    for name in ("weight_ih_l0", "weight_hh_l1_reverse", "weight_ih_l2"):
        p = m.params[name]
        for idx in [tuple(rng.integers(s) for s in p.shape) for _ in range(4)]:
            old = p[idx]
            p[idx] = old + eps
            up = loss()
            p[idx] = old - eps
            down = loss()
            p[idx] = old
            num = (up - down) / (2 * eps)
            assert abs(g.params[name][idx] - num) <= 1e-7 * max(1.0, abs(num)), (name, idx)
    for idx in [tuple(rng.integers(s) for s in x.shape) for _ in range(4)]:
        old = x[idx]
        x[idx] = old + eps
        up = loss()
        x[idx] = old - eps
        down = loss()
        x[idx] = old
        assert abs(g.dx[idx] - (up - down) / (2 * eps)) <= 1e-7 * max(1.0, abs(g.dx[idx]))


def test_mask_statistics():
    p = 0.3
    m = bptt.LSTM(3, 50, 3, bidirectional=True, dropout=p, dtype=np.float64)
    masks = m.dropout_masks(7, 200, 16)
    assert masks.shape == (2, 200, 16, 100)
    n = masks[0].size
    values = np.unique(masks)
    np.testing.assert_allclose(values, [0.0, 1 / (1 - p)], rtol=1e-15)
    for layer in range(2):
        kept = np.count_nonzero(masks[layer]) / n
        # Binomial(n, 1 - p): five standard deviations.
        assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
        assert abs(masks[layer].mean() - 1.0) < 5 * np.sqrt(p / (1 - p) / n)
        # Neighbours (along every axis) are uncorrelated.
        keep = (masks[layer] > 0).astype(np.float64)
        for axis in range(3):
            a = np.moveaxis(keep, axis, 0)
            c = np.corrcoef(a[1:].ravel(), a[:-1].ravel())[0, 1]
            assert abs(c) < 5 / np.sqrt(a[1:].size)
    # The two layers' masks, and other seeds' masks, are independent.
    both = np.mean((masks[0] > 0) & (masks[1] > 0))
    assert abs(both - (1 - p) ** 2) < 5 * np.sqrt((1 - p) ** 2 / n)
    assert not np.array_equal(masks, m.dropout_masks(8, 200, 16))
    np.testing.assert_array_equal(masks, m.dropout_masks(7, 200, 16))
    # float32 masks hold the same pattern.
    m32 = bptt.LSTM(3, 50, 3, bidirectional=True, dropout=p)
    np.testing.assert_array_equal(m32.dropout_masks(7, 200, 16) > 0, masks > 0)


def test_reproducible_from_seeds(rng):
    x = rng.standard_normal((5, 3, IN))
    a, b = model("gru", seed=11), model("gru", seed=11)
    outs_a = [a.forward(x)[0] for _ in range(3)]
    outs_b = [b.forward(x)[0] for _ in range(3)]
    for u, v in zip(outs_a, outs_b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(outs_a[0], outs_a[1])     # a new mask per call
    np.testing.assert_array_equal(a.forward(x, dropout_seed=5)[0],
                                  b.forward(x, dropout_seed=5)[0])
    # train=False and inference never drop.
    np.testing.assert_array_equal(a.forward(x, train=False)[0], a(x)[0])
    with pytest.raises(ValueError, match="dropout_seed"):
        a.forward(x, dropout_seed=-1)


def test_torch_with_the_same_masks(rng):
    torch = pytest.importorskip("torch")
    T, B, L, p = 6, 3, 3, 0.5
    m = bptt.LSTM(IN, H, L, bidirectional=True, dropout=p, dtype=np.float64, seed=2)
    torch.manual_seed(0)
    t_layers = [torch.nn.LSTM(IN if k == 0 else 2 * H, H, bidirectional=True).double()
                for k in range(L)]
    sd = {}
    for k, tl in enumerate(t_layers):
        for name, v in tl.state_dict().items():
            sd[name.replace("_l0", f"_l{k}")] = v.detach().numpy().copy()
    m.load_state_dict(sd)
    x = rng.standard_normal((T, B, IN))
    r = rng.standard_normal((T, B, 2 * H))
    masks = m.dropout_masks(99, T, B)
    tx = torch.tensor(x, requires_grad=True)
    h = tx
    for k, tl in enumerate(t_layers):
        h, _ = tl(h)
        if k < L - 1:
            h = h * torch.tensor(masks[k])
    (h * torch.tensor(r)).sum().backward()
    out, _, tape = m.forward(x, dropout_seed=99)
    g = m.backward(tape, r)
    np.testing.assert_allclose(out, h.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    for k, tl in enumerate(t_layers):
        for name, prm in tl.named_parameters():
            np.testing.assert_allclose(g.params[name.replace("_l0", f"_l{k}")],
                                       prm.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_torch_p0_and_eval_mode(kind, rng):
    torch = pytest.importorskip("torch")
    from test_state_dict import TORCH_KINDS

    cls_name, nonlin = TORCH_KINDS[kind]
    kwargs = {"num_layers": 2, "dropout": 0.5}
    if nonlin is not None:
        kwargs["nonlinearity"] = nonlin
    torch.manual_seed(0)
    tm = getattr(torch.nn, cls_name)(IN, H, **kwargs).double().eval()
    m = make_model(kind, IN, H, 2, dropout=0.5, dtype=np.float64)
    m.load_state_dict({k: v.detach().numpy().copy() for k, v in tm.state_dict().items()})
    x = rng.standard_normal((5, 2, IN))
    t_out = tm(torch.tensor(x))[0].detach().numpy()
    np.testing.assert_allclose(m(x)[0], t_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.forward(x, train=False)[0], t_out, rtol=1e-10, atol=1e-12)
    # p = 0 in training is no dropout at all.
    m0 = make_model(kind, IN, H, 2, dropout=0.0, dtype=np.float64)
    m0.load_state_dict(m.state_dict())
    tm.train()
    tm.dropout = 0.0
    t_out0 = tm(torch.tensor(x))[0].detach().numpy()
    np.testing.assert_allclose(m0.forward(x)[0], t_out0, rtol=1e-10, atol=1e-12)


def test_bad_dropout_and_pickle():
    with pytest.raises(ValueError, match="dropout"):
        bptt.GRU(IN, H, 2, dropout=1.5)
    with pytest.raises((TypeError, ValueError), match="dropout"):
        bptt.GRU(IN, H, 2, dropout="x")
    m = bptt.RNN(IN, H, 2, dropout=0.25, seed=1)
    m2 = pickle.loads(pickle.dumps(m))
    assert m2.dropout == 0.25 and "dropout=0.25" in repr(m2)
    np.testing.assert_array_equal(m.dropout_masks(3, 4, 2), m2.dropout_masks(3, 4, 2))
    # One layer: nothing to drop between.
    one = bptt.LSTM(IN, H, 1, dropout=0.5, dtype=np.float64)
    x = np.ones((3, 2, IN))
    np.testing.assert_array_equal(one.forward(x)[0], one(x)[0])
    assert one.dropout_masks(1, 3, 2).shape == (0, 3, 2, H)

