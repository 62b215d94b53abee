"""The readout, losses, embedding gradient and optimizer steps computed by the Rust core,
against the plain-NumPy references of ``numpy_readout`` (bptt's former implementations)
and, for the losses, against central finite differences in float64; plus thread-count
independence and the errors of the low-level entry points."""

from __future__ import annotations

import bptt
import numpy as np
import numpy_readout as ref
import pytest
from bptt import _core

TOL = {np.float32: 2e-6, np.float64: 1e-13}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 4, 7), (9, 7), (7,)], ids=["TBF", "NF", "F"])
def test_linear_matches_reference(dtype, shape, rng):
    lin = bptt.Linear(7, 5, dtype=dtype, seed=1)
    x = rng.standard_normal(shape).astype(dtype)
    y, cache = lin.forward(x)
    w, b = lin.params["weight"], lin.params["bias"]
    np.testing.assert_allclose(y, ref.linear_forward(x, w, b), rtol=TOL[dtype] * 10,
                               atol=TOL[dtype] * 10)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, g = lin.backward(cache, dy)
    rdx, rdw, rdb = ref.linear_backward(x, w, dy, True)
    for got, want in ((dx, rdx), (g["weight"], rdw), (g["bias"], rdb)):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)


def test_linear_without_bias_and_strided_input(rng):
    lin = bptt.Linear(4, 3, bias=False, dtype=np.float64, seed=0)
    x = rng.standard_normal((5, 8))[:, ::2]          # not contiguous
    y, cache = lin.forward(x)
    np.testing.assert_allclose(y, x @ lin.params["weight"].T, rtol=1e-14)
    dx, g = lin.backward(cache, np.ones_like(y))
    assert set(g) == {"weight"}
    np.testing.assert_allclose(dx, np.ones_like(y) @ lin.params["weight"], rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_cross_entropy_matches_reference(dtype, masked, rng):
    T, B, C = 9, 5, 31
    z = (3 * rng.standard_normal((T, B, C))).astype(dtype)
    lab = rng.integers(0, C, (T, B))
    mask = rng.random((T, B)) < 0.6 if masked else None
    if masked:
        lab = np.where(mask, lab, -7)        # unselected labels are never read
    loss, grad = bptt.cross_entropy_loss(z, lab, mask)
    rloss, rgrad = ref.cross_entropy_loss(z, lab, mask)
    assert grad.dtype == dtype and grad.shape == z.shape
    assert abs(loss - rloss) <= TOL[dtype] * abs(rloss)
    np.testing.assert_allclose(grad, rgrad, rtol=TOL[dtype] * 10, atol=TOL[dtype] / (T * B))


def test_cross_entropy_gradient_by_finite_differences(rng):
    z = rng.standard_normal((4, 3, 6))
    lab = rng.integers(0, 6, (4, 3))
    mask = rng.random((4, 3)) < 0.7
    _, grad = bptt.cross_entropy_loss(z, lab, mask)
    eps = 1e-6
    fd = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[i] += eps
        zm[i] -= eps
        fd[i] = (bptt.cross_entropy_loss(zp, lab, mask)[0]
                 - bptt.cross_entropy_loss(zm, lab, mask)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


def test_cross_entropy_extreme_logits_stay_finite():
    z = np.array([[1e4, -1e4, 0.0], [-50.0, -50.0, -50.0]], dtype=np.float32)
    loss, grad = bptt.cross_entropy_loss(z, np.array([1, 2]))
    rloss, rgrad = ref.cross_entropy_loss(z, np.array([1, 2]))
    assert np.isfinite(loss) and abs(loss - rloss) < 1e-3
    np.testing.assert_allclose(grad, rgrad, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_mse_matches_reference_and_finite_differences(dtype, masked, rng):
    p = rng.standard_normal((6, 4, 3)).astype(dtype)
    t = rng.standard_normal((6, 4, 3)).astype(dtype)
    mask = rng.random((6, 4)) < 0.5 if masked else None
    loss, grad = bptt.mse_loss(p, t, mask)
    rloss, rgrad = ref.mse_loss(p, t, mask)
    assert abs(loss - rloss) <= 1e-12 * abs(rloss)
    np.testing.assert_allclose(grad, rgrad, rtol=TOL[dtype], atol=1e-12)
    if dtype == np.float64:
        eps = 1e-6
        i = (2, 1, 0)
        pp, pm = p.copy(), p.copy()
        pp[i] += eps
        pm[i] -= eps
        fd = (bptt.mse_loss(pp, t, mask)[0] - bptt.mse_loss(pm, t, mask)[0]) / (2 * eps)
        assert abs(fd - grad[i]) < 1e-8


def test_mse_broadcasts_targets_like_numpy_or_explains():
    p = np.arange(6.0).reshape(3, 2)
    loss, grad = bptt.mse_loss(p, np.array([1.0, 2.0]))
    rloss, rgrad = ref.mse_loss(p, np.broadcast_to(np.array([1.0, 2.0]), p.shape))
    assert loss == pytest.approx(rloss) and np.allclose(grad, rgrad)
    assert bptt.mse_loss(p, 0.0)[0] == pytest.approx(np.mean(p ** 2))
    with pytest.raises(ValueError, match=r"target: expected shape \(3, 1\).*target\[\.\.\., None\]"):
        bptt.mse_loss(np.zeros((3, 1)), np.zeros(3))
    with pytest.raises(ValueError, match=r"target: expected shape \(3, 2\)"):
        bptt.mse_loss(p, np.zeros(3))


@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding_gradient_matches_scatter_add(padding_idx, rng):
    emb = bptt.Embedding(7, 4, padding_idx=padding_idx, dtype=np.float64, seed=0)
    ids = rng.integers(0, 7, (5, 3))
    out, cache = emb.forward(ids)
    np.testing.assert_array_equal(out, emb.params["weight"][ids])
    d = rng.standard_normal(out.shape)
    g = emb.backward(cache, d)["weight"]
    pad = None if padding_idx is None else padding_idx % 7
    np.testing.assert_allclose(g, ref.embedding_backward(ids, d, 7, pad), rtol=1e-14)
    # by finite differences of L = sum(d * out)
    w = emb.params["weight"]
    i = (int(ids[0, 0]), 1)
    old = w[i]
    w[i] = old + 1e-6
    up = np.sum(d * emb(ids))
    w[i] = old - 1e-6
    down = np.sum(d * emb(ids))
    w[i] = old
    want = 0.0 if i[0] == pad else (up - down) / 2e-6
    assert abs(g[i] - want) < 1e-8


OPTIMIZERS = [
    lambda p: bptt.optim.SGD(p, lr=0.1),
    lambda p: bptt.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
    lambda p: bptt.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    lambda p: bptt.optim.RMSprop(p, lr=0.01),
    lambda p: bptt.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True, weight_decay=0.1),
    lambda p: bptt.optim.Adam(p, lr=0.01),
    lambda p: bptt.optim.Adam(p, lr=0.01, weight_decay=0.1, amsgrad=True),
    lambda p: bptt.optim.AdamW(p, lr=0.01),
    lambda p: bptt.optim.AdamW(p, lr=0.01, weight_decay=0.1, amsgrad=True),
]


@pytest.mark.parametrize("make", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizer_steps_match_reference(make, dtype, rng):
    shapes = {"a": (70_000,), "b": (3, 5), "c": (1,)}   # "a": split over the pool
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    mirror = {k: v.copy() for k, v in params.items()}
    opt = make(params)
    states: dict = {}
    for step in range(4):
        grads = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
        if step == 2:
            del grads["b"]                 # a missing key: no step for it
        opt.step(grads)
        ref.reference_step(opt, mirror, grads, states)
        for k in shapes:
            np.testing.assert_allclose(params[k], mirror[k], rtol=TOL[dtype] * 10,
                                       atol=TOL[dtype] * 10)
    for k, st in states.items():
        for name, buf in st.items():
            if name != "step":
                np.testing.assert_allclose(opt.state[k][name], buf, rtol=TOL[dtype] * 10,
                                           atol=TOL[dtype] * 10)


def test_optimizer_updates_a_strided_parameter(rng):
    base = rng.standard_normal((4, 6))
    view = base[:, ::2]
    opt = bptt.optim.Adam({"w": view}, lr=0.1)
    before = base.copy()
    opt.step({"w": np.ones((4, 3))})
    assert np.all(base[:, ::2] < before[:, ::2]) and np.array_equal(base[:, 1::2],
                                                                    before[:, 1::2])


def test_results_do_not_depend_on_the_number_of_threads(rng):
    z = rng.standard_normal((3000, 103)).astype(np.float32)
    lab = rng.integers(0, 103, 3000)
    p0 = rng.standard_normal(200_000).astype(np.float32)
    g = rng.standard_normal(200_000).astype(np.float32)
    n0 = bptt.get_num_threads()
    out = []
    try:
        for n in (1, 3):
            bptt.set_num_threads(n)
            p = p0.copy()
            bptt.optim.Adam({"p": p}).step({"p": g})
            out.append((bptt.cross_entropy_loss(z, lab), p))
    finally:
        bptt.set_num_threads(n0)
    (l1, g1), p1 = out[0]
    (l3, g3), p3 = out[1]
    assert l1 == l3
    np.testing.assert_array_equal(g1, g3)
    np.testing.assert_array_equal(p1, p3)


def test_low_level_errors_name_the_argument():
    z = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 3\), got 3"):
        _core.cross_entropy_loss(z, np.array([0, 3]), 3)
    with pytest.raises(TypeError, match="logits: expected a numpy array of dtype float32 or"):
        _core.cross_entropy_loss(z.astype(np.int32), np.array([0, 1]), 3)
    with pytest.raises(TypeError, match="labels: expected a 1-d numpy array of dtype int64"):
        _core.cross_entropy_loss(z, np.array([0.0, 1.0]), 3)
    with pytest.raises(ValueError, match=r"mask: expected shape \(2,\)"):
        _core.cross_entropy_loss(z, np.array([0, 1]), 3, np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="x: expected shape"):
        _core.linear_forward(np.zeros((2, 4)), np.zeros((3, 5)))
    p = np.zeros(4)
    with pytest.raises(ValueError, match=r"grad: expected shape \(4,\)"):
        _core.sgd_step(p, np.zeros(3), None, False, 0.1, 0.0, 0.0, 0.0, False)
    with pytest.raises(ValueError, match="param: expected a C-contiguous array"):
        _core.sgd_step(np.zeros(8)[::2], np.zeros(4), None, False, 0.1, 0.0, 0.0, 0.0, False)
    with pytest.raises(ValueError, match="momentum_buffer: required when momentum > 0"):
        _core.sgd_step(p, np.zeros(4), None, False, 0.1, 0.9, 0.0, 0.0, False)
    with pytest.raises(ValueError, match="x: expected token ids in \\[0, 3\\), got 5"):
        _core.embedding_backward(np.array([0, 5]), np.zeros((2, 2)), 3)
