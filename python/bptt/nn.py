"""Readout layer and losses for training recurrent models: ``Linear``, ``mse_loss``,
``cross_entropy_loss``.

These are whole-array NumPy operations (one matrix product per call, never a loop over time
steps); the recurrent work stays in the Rust core. They work on sequences ``(T, B, F)``,
flat batches ``(N, F)``, or any number of leading axes ``(..., F)``.

Conventions
-----------
- ``Linear``: ``y = x W^T + b`` with ``W`` (out_features, in_features) under PyTorch's names
  ``weight`` and ``bias`` and PyTorch's initialisation ``U(-1/sqrt(in), 1/sqrt(in))``.
- Losses return ``(loss, d_pred)``: the loss as a Python float (accumulated in float64) and
  its gradient with respect to the prediction, in the prediction's dtype. Both are means
  over the selected elements (PyTorch's ``reduction="mean"``).
- ``mask`` (optional) selects positions over the leading axes, for padding or for losses
  that only exist at some time steps: a bool (or 0/1) array shaped like the leading axes
  of the prediction (``(T, B)`` for a ``(T, B, F)`` prediction). Unselected positions add
  nothing to the loss and get a zero gradient. A mask that selects nothing gives a loss of
  0.0 and a zero gradient (not NaN), so empty padded batches need no special case.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _persist
from ._base import Identity, Parametrized
from ._checks import (
    as_array,
    check_parameter_memory,
    check_shape,
    flag,
    floating,
    mask_array,
    model_dtype,
    positive_int,
)

__all__ = ["Linear", "LinearCache", "cross_entropy_loss", "mse_loss"]


class LinearCache:
    """What ``Linear.forward`` keeps for ``Linear.backward``: the input (in the layer's
    dtype) and the identity of the layer that made it (as a ``Tape`` holds its model's)."""

    __slots__ = ("owner", "x")

    def __init__(self, x: np.ndarray, owner: Identity) -> None:
        self.x = x
        self.owner = owner


class Linear(Parametrized):
    """Fully connected readout ``y = x W^T + b`` over the last axis.

    ``Linear(in_features, out_features, *, bias=True, dtype=np.float32, seed=None)``.
    Parameters ``weight`` (out_features, in_features) and ``bias`` (out_features,), both
    initialised ``U(-1/sqrt(in_features), 1/sqrt(in_features))`` as in PyTorch.

    ``x`` may have any leading axes: ``(T, B, in_features)`` for a sequence,
    ``(N, in_features)`` for a batch; other floating dtypes are converted to the layer's.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 dtype: Any = np.float32, seed: int | None = None) -> None:
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        self.bias = flag("bias", bias)
        self.dtype = model_dtype(dtype)
        check_parameter_memory(
            f"Linear(in_features={self.in_features}, out_features={self.out_features})",
            self.out_features * (self.in_features + self.bias), 1 + self.bias, self.dtype)
        shapes: dict[str, tuple[int, ...]] = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        super().__init__(shapes, 1.0 / math.sqrt(self.in_features), self.dtype, seed)

    # ------------------------------------------------------------------ running
    def _input(self, name: str, x: Any, width: int) -> np.ndarray:
        arr = floating(name, x, self.dtype)
        if arr.ndim < 1 or arr.shape[-1] != width:
            raise ValueError(f"{name}: expected shape (..., {width}), got {arr.shape}")
        return arr

    def __call__(self, x: Any) -> np.ndarray:
        """``y = x W^T + b`` (no cache kept)."""
        return self.forward(x)[0]

    def forward(self, x: Any) -> tuple[np.ndarray, LinearCache]:
        """``y, cache = layer.forward(x)``: ``y`` has shape ``(..., out_features)``;
        ``cache`` feeds ``backward``."""
        x = self._input("x", x, self.in_features)
        y = x @ self._params["weight"].T
        if self.bias:
            y += self._params["bias"]
        return y, LinearCache(x, self._identity)

    def backward(self, cache: LinearCache, d_y: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``dx, grads = layer.backward(cache, d_y)``.

        ``d_y`` is ``dL/dy`` (shape of ``y``); ``dx`` is ``dL/dx`` (shape of ``x``) and
        ``grads`` holds ``dL/dweight`` and ``dL/dbias`` under the parameter names. Uses the
        parameters as they are now (do not update them between forward and backward).
        """
        if not isinstance(cache, LinearCache):
            raise TypeError(f"cache: expected the LinearCache returned by forward(), got "
                            f"{type(cache).__name__}")
        if cache.owner is not self._identity:
            raise ValueError("cache: it was made by another Linear layer")
        x = cache.x
        d_y = self._input("d_y", d_y, self.out_features)
        if d_y.shape[:-1] != x.shape[:-1]:
            raise ValueError(f"d_y: expected shape {x.shape[:-1] + (self.out_features,)}, "
                             f"got {d_y.shape}")
        w = self._params["weight"]
        dx = d_y @ w
        d2 = d_y.reshape(-1, self.out_features)
        grads = {"weight": d2.T @ x.reshape(-1, self.in_features)}
        if self.bias:
            grads["bias"] = d2.sum(axis=0)
        return dx, grads

    def __getstate__(self) -> dict[str, Any]:
        """Configuration + parameters + a format version (see ``bptt._persist``)."""
        return _persist.linear_state(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuilds the layer from ``__getstate__``'s dict (checked)."""
        _persist.restore_linear(self, state)

    def __repr__(self) -> str:
        return (f"Linear({self.in_features}, {self.out_features}, bias={self.bias}, "
                f"dtype={self.dtype.name})")


def mse_loss(pred: Any, target: Any, mask: Any = None) -> tuple[float, np.ndarray]:
    """Mean squared error and its gradient: ``loss, d_pred = mse_loss(pred, target, mask)``.

    ``loss = sum_selected (pred - target)**2 / n`` where ``n`` counts the selected elements
    (all of them without a mask; with ``mask`` over the leading axes, the selected positions
    times the size of the remaining axes). ``d_pred = 2 (pred - target) / n`` at selected
    elements, 0 elsewhere. ``target`` must have ``pred``'s shape (values at unselected
    positions are ignored, NaN included).
    """
    p = floating("pred", pred)
    t = floating("target", target)
    if t.shape != p.shape:
        raise ValueError(f"target: expected shape {p.shape} (that of pred), got {t.shape}")
    if mask is None:
        n = p.size
        diff = p.astype(np.float64) - t
        sel = None
    else:
        m = as_array("mask", mask, "a bool or 0/1 array")
        lead = p.shape[:m.ndim] if m.ndim <= p.ndim else None
        if lead is None:
            raise ValueError(f"mask: expected shape of a prefix of {p.shape}, got {m.shape}")
        sel = mask_array(mask, lead).reshape(lead + (1,) * (p.ndim - len(lead)))
        n = round(float(sel.sum())) * int(np.prod(p.shape[len(lead):], dtype=np.int64))
        diff = np.where(sel > 0, p.astype(np.float64) - t, 0.0)
    if n == 0:
        return 0.0, np.zeros_like(p)
    loss = float(np.sum(diff * diff) / n)
    return loss, (diff * (2.0 / n)).astype(p.dtype)


def cross_entropy_loss(logits: Any, labels: Any, mask: Any = None) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy with integer labels: ``loss, d_logits``.

    ``logits`` (..., C), ``labels`` (...) integers in ``[0, C)``; ``mask`` (...) optional.
    ``loss = -mean_selected log softmax(logits)[label]`` in nats (divide by ``ln 2`` for
    bits); ``d_logits = (softmax(logits) - onehot(label)) / n`` at selected positions, 0
    elsewhere, ``n`` the number of selected positions. Labels at unselected positions are
    not checked (padding may hold anything, e.g. -1).
    """
    z = floating("logits", logits)
    if z.ndim < 1:
        raise ValueError(f"logits: expected shape (..., C), got {z.shape}")
    lab = as_array("labels", labels, "an integer array")
    if lab.dtype.kind not in "iu":
        raise TypeError(f"labels: expected an integer array, got dtype {lab.dtype}")
    check_shape("labels", lab, z.shape[:-1])
    n_classes = z.shape[-1]
    sel = None if mask is None else np.greater(mask_array(mask, z.shape[:-1]), 0)
    bad = (lab < 0) | (lab >= n_classes)
    if sel is not None:
        bad &= sel
    if np.any(bad):
        raise ValueError(f"labels: expected values in [0, {n_classes}), got "
                         f"{lab[bad].ravel()[0]}")
    n = lab.size if sel is None else int(sel.sum())
    if n == 0:
        return 0.0, np.zeros_like(z)
    lab = np.where(bad | ((lab < 0) | (lab >= n_classes)), 0, lab).astype(np.intp)
    z64 = z.astype(np.float64)
    shifted = z64 - z64.max(axis=-1, keepdims=True)
    logsum = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    logp = shifted - logsum
    picked = np.take_along_axis(logp, lab[..., None], axis=-1)[..., 0]
    if sel is not None:
        picked = np.where(sel, picked, 0.0)
    loss = float(-picked.sum() / n)
    grad = np.exp(logp)
    np.put_along_axis(grad, lab[..., None],
                      np.take_along_axis(grad, lab[..., None], axis=-1) - 1.0, axis=-1)
    grad /= n
    if sel is not None:
        grad *= sel[..., None]
    return loss, grad.astype(z.dtype)
