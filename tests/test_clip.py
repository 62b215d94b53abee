"""Gradient clipping semantics: global L2 norm over all arrays, in place, PyTorch's rule."""

from __future__ import annotations

import math

import bptt
import numpy as np
import pytest
from bptt.clip import grad_norm


def grads_345():
    # global norm sqrt(3^2 + 4^2 + 12^2) = 13
    return {"a": np.array([3.0, 4.0]), "b": np.array([[12.0]], dtype=np.float32)}


def test_returns_norm_before_clipping_and_scales_all_arrays():
    g = grads_345()
    total = bptt.clip_grad_norm(g, 1.0)
    assert total == pytest.approx(13.0)
    coef = 1.0 / (13.0 + 1e-6)
    np.testing.assert_allclose(g["a"], [3 * coef, 4 * coef], rtol=1e-12)
    np.testing.assert_allclose(g["b"], [[12 * coef]], rtol=1e-6)
    assert g["b"].dtype == np.float32
    assert grad_norm(g) == pytest.approx(1.0, rel=1e-6)
    assert grad_norm(g) < 1.0  # PyTorch's +1e-6 keeps it just under


def test_below_threshold_untouched():
    g = grads_345()
    total = bptt.clip_grad_norm(g, 13.5)
    assert total == pytest.approx(13.0)
    np.testing.assert_array_equal(g["a"], [3.0, 4.0])
    np.testing.assert_array_equal(g["b"], [[12.0]])


def test_iterable_of_arrays_and_direction_kept():
    a, b = np.array([6.0, -8.0]), np.array([0.0])
    total = bptt.clip_grad_norm([a, b], 5.0)
    assert total == pytest.approx(10.0)
    np.testing.assert_allclose(a / np.linalg.norm(a), [0.6, -0.8])
    np.testing.assert_allclose(np.linalg.norm(a), 5.0, rtol=1e-6)


def test_works_on_backward_output():
    m = bptt.LSTM(3, 4, seed=1)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    out, _, tape = m.forward(x)
    g = m.backward(tape, np.ones_like(out) * 10)
    expect = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in g.params.values()))
    total = bptt.clip_grad_norm(g.params, 0.5)
    assert total == pytest.approx(expect, rel=1e-6)
    assert grad_norm(g.params) == pytest.approx(0.5, rel=1e-5)


def test_nonfinite_raises_and_leaves_grads():
    g = {"a": np.array([1.0, np.nan]), "b": np.array([2.0])}
    with pytest.raises(FloatingPointError, match="nan"):
        bptt.clip_grad_norm(g, 1.0, error_if_nonfinite=True)
    assert g["b"][0] == 2.0 and g["a"][0] == 1.0


def test_nonfinite_without_error_follows_pytorch():
    g = {"a": np.array([1.0, np.nan]), "b": np.array([2.0])}
    total = bptt.clip_grad_norm(g, 1.0)
    assert math.isnan(total)
    assert np.all(np.isnan(g["a"])) and np.isnan(g["b"][0])
    g = {"a": np.array([1.0, np.inf])}
    total = bptt.clip_grad_norm(g, 1.0)
    assert math.isinf(total)
    assert g["a"][0] == 0.0 and np.isnan(g["a"][1])


def test_clip_value():
    g = {"a": np.array([-3.0, 0.5, 2.0, np.nan])}
    bptt.clip_grad_value(g, 1.0)
    np.testing.assert_array_equal(g["a"][:3], [-1.0, 0.5, 1.0])
    assert np.isnan(g["a"][3])
    h = [np.array([[5.0, -0.1]], dtype=np.float32)]
    bptt.clip_grad_value(h, 0.2)
    np.testing.assert_allclose(h[0], [[0.2, -0.1]])
    assert h[0].dtype == np.float32


def test_errors():
    with pytest.raises(ValueError, match="max_norm"):
        bptt.clip_grad_norm({"a": np.ones(2)}, 0.0)
    with pytest.raises(TypeError, match="max_norm"):
        bptt.clip_grad_norm({"a": np.ones(2)}, "1")
    with pytest.raises(TypeError, match="ndarray"):
        bptt.clip_grad_norm({"a": [1.0, 2.0]}, 1.0)
    with pytest.raises(TypeError, match="int64"):
        bptt.clip_grad_norm([np.ones(2, dtype=np.int64)], 1.0)
    with pytest.raises(TypeError, match="grads"):
        bptt.clip_grad_value(3.0, 1.0)
    with pytest.raises(ValueError, match="clip_value"):
        bptt.clip_grad_value({"a": np.ones(2)}, -1.0)


def test_error_if_nonfinite_must_be_a_switch():
    with pytest.raises(TypeError, match="error_if_nonfinite: expected True or False, got str"):
        bptt.clip_grad_norm(grads_345(), 1.0, error_if_nonfinite="no")
