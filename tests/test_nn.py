"""Readout layer and losses: values against direct formulas, gradients by central finite
differences in float64, masks, dtypes and errors."""

from __future__ import annotations

import math

import bptt
import numpy as np
import pytest

EPS = 1e-6


def fd(f, a, eps=EPS):
    """Central finite differences of scalar f() with respect to array a (in place)."""
    g = np.zeros_like(a, dtype=np.float64)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + eps
        up = f()
        a[i] = old - eps
        down = f()
        a[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


@pytest.mark.parametrize("shape", [(4, 3, 5), (7, 5), (5,)], ids=["TBF", "NF", "F"])
def test_linear_forward_and_gradients(shape, rng):
    lin = bptt.Linear(5, 2, dtype=np.float64, seed=3)
    x = rng.standard_normal(shape)
    w = rng.standard_normal(shape[:-1] + (2,))     # loss = sum(w * y)
    y, cache = lin.forward(x)
    np.testing.assert_allclose(y, x @ lin.params["weight"].T + lin.params["bias"], rtol=1e-14)
    dx, grads = lin.backward(cache, w)
    assert dx.shape == x.shape
    assert set(grads) == {"weight", "bias"}

    def loss():
        return float(np.sum(w * lin(x)))

    np.testing.assert_allclose(dx, fd(loss, x), rtol=1e-7, atol=1e-8)
    p = lin.params
    np.testing.assert_allclose(grads["weight"], fd(loss, p["weight"]), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(grads["bias"], fd(loss, p["bias"]), rtol=1e-7, atol=1e-8)


def test_linear_init_names_and_state_dict():
    lin = bptt.Linear(16, 3, seed=0)
    assert lin.params["weight"].shape == (3, 16) and lin.params["bias"].shape == (3,)
    assert lin.params["weight"].dtype == np.float32
    k = 1 / math.sqrt(16)
    assert np.abs(lin.params["weight"]).max() <= k and np.abs(lin.params["bias"]).max() <= k
    assert np.abs(lin.params["weight"]).max() > 0.5 * k
    np.testing.assert_array_equal(bptt.Linear(16, 3, seed=0).params["weight"],
                                  lin.params["weight"])
    sd = lin.state_dict()
    sd["weight"][:] = 0
    assert np.abs(lin.params["weight"]).max() > 0          # copies
    lin.load_state_dict(sd)
    assert np.all(lin.params["weight"] == 0)               # loaded into the live arrays
    nob = bptt.Linear(4, 2, bias=False)
    assert set(nob.params) == {"weight"}
    with pytest.raises(ValueError, match="missing keys"):
        nob.load_state_dict({})
    with pytest.raises(ValueError, match=r"weight: expected shape \(2, 4\)"):
        nob.load_state_dict({"weight": np.zeros((4, 2))})


def test_linear_dtype_and_errors():
    lin = bptt.Linear(3, 2)
    y = lin(np.ones((2, 3), dtype=np.float64))
    assert y.dtype == np.float32
    with pytest.raises(TypeError, match="x: expected a floating-point array"):
        lin(np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 3\), got \(2, 4\)"):
        lin(np.ones((2, 4)))
    _, cache = lin.forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match="d_y"):
        lin.backward(cache, np.ones((3, 2)))
    with pytest.raises(ValueError, match="another Linear"):
        bptt.Linear(3, 2).backward(cache, np.ones((2, 2)))
    with pytest.raises(TypeError, match="out_features"):
        bptt.Linear(3, 2.0)
    with pytest.raises(TypeError, match="dtype"):
        bptt.Linear(3, 2, dtype=np.int32)


def test_linear_cache_belongs_to_its_layer():
    import copy

    lin = bptt.Linear(3, 2, seed=0)
    _, cache = lin.forward(np.ones((2, 3)))
    # A deep copy is another layer (same weights now, not necessarily later).
    with pytest.raises(ValueError, match="another Linear"):
        copy.deepcopy(lin).backward(cache, np.ones((2, 2)))

    def orphan_cache():
        layer = bptt.Linear(3, 2, seed=0)
        return layer.forward(np.ones((2, 3)))[1]

    # A cache outlives its layer; the next layer built often takes the freed layer's
    # memory, and so its id(), yet must not take the cache.
    cache = orphan_cache()
    other = bptt.Linear(3, 2)
    with pytest.raises(ValueError, match="another Linear"):
        other.backward(cache, np.ones((2, 2)))


@pytest.mark.parametrize("masked", [False, True])
def test_mse_loss_value_and_gradient(masked, rng):
    pred = rng.standard_normal((4, 3, 2))
    target = rng.standard_normal((4, 3, 2))
    mask = rng.random((4, 3)) < 0.5 if masked else None
    if masked:
        mask[0, 0] = True
        target[~mask] = np.nan                       # ignored where unselected
    loss, d = bptt.mse_loss(pred, target, mask)
    sel = np.ones((4, 3), bool) if mask is None else mask
    expect = np.mean((pred[sel] - target[sel]) ** 2)
    assert loss == pytest.approx(expect, rel=1e-14)
    np.testing.assert_allclose(d, fd(lambda: bptt.mse_loss(pred, target, mask)[0], pred),
                               rtol=1e-7, atol=1e-9)
    if masked:
        assert np.all(d[~mask] == 0)


def test_mse_empty_mask_and_dtype():
    loss, d = bptt.mse_loss(np.ones((2, 1), np.float32), np.zeros((2, 1)), np.zeros(2, bool))
    assert loss == 0.0 and np.all(d == 0) and d.dtype == np.float32
    loss, d = bptt.mse_loss(np.ones((2, 1), np.float32), np.zeros((2, 1)))
    assert loss == 1.0 and d.dtype == np.float32
    with pytest.raises(ValueError, match="target"):
        bptt.mse_loss(np.ones((2, 1)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="mask"):
        bptt.mse_loss(np.ones((2, 1)), np.ones((2, 1)), np.ones(3, bool))
    with pytest.raises(TypeError, match="pred"):
        bptt.mse_loss(np.ones((2, 1), np.int64), np.ones((2, 1)))


@pytest.mark.parametrize("masked", [False, True])
def test_cross_entropy_value_and_gradient(masked, rng):
    logits = 3 * rng.standard_normal((5, 2, 4))
    labels = rng.integers(0, 4, size=(5, 2))
    mask = None
    if masked:
        mask = rng.random((5, 2)) < 0.6
        mask[0, 0] = True
        labels[~mask] = -1                           # padding labels are not checked
    loss, d = bptt.cross_entropy_loss(logits, labels, mask)
    sel = np.ones((5, 2), bool) if mask is None else mask
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, np.where(sel, labels, 0)[..., None], -1)[..., 0]
    assert loss == pytest.approx(-picked[sel].mean(), rel=1e-13)
    num = fd(lambda: bptt.cross_entropy_loss(logits, labels, mask)[0], logits)
    np.testing.assert_allclose(d, num, rtol=1e-6, atol=1e-9)


def test_cross_entropy_uniform_and_stability():
    loss, _ = bptt.cross_entropy_loss(np.zeros((3, 8)), np.array([0, 5, 7]))
    assert loss == pytest.approx(math.log(8))
    loss, d = bptt.cross_entropy_loss(np.array([[1000.0, 0.0]], dtype=np.float32),
                                      np.array([1]))
    assert loss == pytest.approx(1000.0) and np.all(np.isfinite(d)) and d.dtype == np.float32
    with pytest.raises(TypeError, match="labels"):
        bptt.cross_entropy_loss(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 3\)"):
        bptt.cross_entropy_loss(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels: expected shape"):
        bptt.cross_entropy_loss(np.zeros((2, 3)), np.array([0]))


def test_readout_on_model_output_chain(rng):
    """Readout + loss + model backward compose: the whole chain by finite differences."""
    m = bptt.GRU(2, 3, dtype=np.float64, seed=0)
    lin = bptt.Linear(3, 4, dtype=np.float64, seed=1)
    x = rng.standard_normal((4, 2, 2))
    labels = rng.integers(0, 4, size=(4, 2))

    def loss():
        out, _ = m(x)
        return bptt.cross_entropy_loss(lin(out), labels)[0]

    out, _, tape = m.forward(x)
    y, cache = lin.forward(out)
    _, d_y = bptt.cross_entropy_loss(y, labels)
    d_out, _ = lin.backward(cache, d_y)
    g = m.backward(tape, d_out)
    w = m.params["weight_hh_l0"]
    np.testing.assert_allclose(g.params["weight_hh_l0"], fd(loss, w), rtol=1e-6, atol=1e-9)
