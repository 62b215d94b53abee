"""Readout layer and losses for training recurrent models: ``Linear``, ``mse_loss``,
``cross_entropy_loss``.

Each is one call into the Rust core (``src/readout.rs``: the matrix products through its
GEMM entry point, the loss and its gradient in one fused pass), with the GIL released and
on bptt's thread pool; Python only checks and reshapes. They work on sequences
``(T, B, F)``, flat batches ``(N, F)``, or any number of leading axes ``(..., F)``.

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

from . import _core, _persist
from ._base import Identity, Parametrized
from ._checks import (
    as_array,
    check_parameter_memory,
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
        x = np.ascontiguousarray(self._input("x", x, self.in_features))
        y = _core.linear_forward(x.reshape(-1, self.in_features), self._params["weight"],
                                 self._params.get("bias"))
        return y.reshape(x.shape[:-1] + (self.out_features,)), LinearCache(x, self._identity)

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
        d2 = np.ascontiguousarray(d_y).reshape(-1, self.out_features)
        dx, dw, db = _core.linear_backward(x.reshape(-1, self.in_features),
                                           self._params["weight"], d2, self.bias)
        grads = {"weight": dw}
        if db is not None:
            grads["bias"] = db
        return dx.reshape(x.shape), grads

    def __getstate__(self) -> dict[str, Any]:
        """Configuration + parameters + a format version (see ``bptt._persist``)."""
        return _persist.linear_state(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuilds the layer from ``__getstate__``'s dict (checked)."""
        _persist.restore_linear(self, state)

    def __repr__(self) -> str:
        return (f"Linear({self.in_features}, {self.out_features}, bias={self.bias}, "
                f"dtype={self.dtype.name})")


def _core_dtype(arr: np.ndarray) -> np.ndarray:
    """``arr`` C-contiguous in float32 or float64 (float16 and other floats: float32)."""
    dt = arr.dtype if arr.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    return np.ascontiguousarray(arr, dtype=dt)


def _row_mask(mask: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """A loss ``mask`` over a prefix of ``shape`` as a flat C-contiguous bool array (one
    entry per row of the rest), and the number of values per row."""
    m = as_array("mask", mask, "a bool or 0/1 array")
    if m.ndim > len(shape) or m.shape != shape[:m.ndim]:
        raise ValueError(f"mask: expected shape of a prefix of {shape}, got {m.shape}")
    sel = mask_array(m, m.shape)
    return np.ascontiguousarray(sel.ravel() > 0), int(np.prod(shape[m.ndim:], dtype=np.int64))


def mse_loss(pred: Any, target: Any, mask: Any = None) -> tuple[float, np.ndarray]:
    """Mean squared error and its gradient: ``loss, d_pred = mse_loss(pred, target, mask)``.

    ``loss = sum_selected (pred - target)**2 / n`` where ``n`` counts the selected elements
    (all of them without a mask; with ``mask`` over the leading axes, the selected positions
    times the size of the remaining axes). ``d_pred = 2 (pred - target) / n`` at selected
    elements, 0 elsewhere. ``target`` has ``pred``'s shape or broadcasts to it as in NumPy
    (a scalar, ``(F,)`` against ``(..., F)``); values at unselected positions are ignored,
    NaN included. Computed in the Rust core (float64 sums).
    """
    p = floating("pred", pred)
    t = floating("target", target)
    if t.shape != p.shape:
        try:
            t = np.broadcast_to(t, p.shape)
        except ValueError:
            hint = ""
            if p.ndim >= 1 and p.shape[-1] == 1 and t.shape == p.shape[:-1]:
                hint = (f"; add the trailing axis (target[..., None]): NumPy would broadcast "
                        f"a {t.shape} target against a {p.shape} pred to a matrix")
            raise ValueError(f"target: expected shape {p.shape} (that of pred, or one that "
                             f"broadcasts to it), got {t.shape}{hint}") from None
    if p.size == 0:
        return 0.0, np.zeros_like(p)
    pc = _core_dtype(p)
    if mask is None:
        sel, width = None, (p.shape[-1] if p.ndim else 1)
    else:
        sel, width = _row_mask(mask, p.shape)
    loss, grad = _core.mse_loss(pc, np.ascontiguousarray(t, dtype=pc.dtype), width, sel)
    return float(loss), grad.reshape(p.shape).astype(p.dtype, copy=False)


def cross_entropy_loss(logits: Any, labels: Any, mask: Any = None) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy with integer labels: ``loss, d_logits``.

    ``logits`` (..., C), ``labels`` (...) integers in ``[0, C)``; ``mask`` (...) optional.
    ``loss = -mean_selected log softmax(logits)[label]`` in nats (divide by ``ln 2`` for
    bits); ``d_logits = (softmax(logits) - onehot(label)) / n`` at selected positions, 0
    elsewhere, ``n`` the number of selected positions. Labels at unselected positions are
    not checked (padding may hold anything, e.g. -1). One fused pass in the Rust core
    (log-softmax and its gradient together, rows split over the thread pool; the loss is
    summed in float64).
    """
    z = floating("logits", logits)
    if z.ndim < 1:
        raise ValueError(f"logits: expected shape (..., C), got {z.shape}")
    lab = as_array("labels", labels, "an integer array")
    if lab.dtype.kind not in "iu":
        raise TypeError(f"labels: expected an integer array, got dtype {lab.dtype}")
    if lab.shape != z.shape[:-1]:
        raise ValueError(f"labels: expected shape {z.shape[:-1]} (the leading axes of logits "
                         f"{z.shape}), got {lab.shape}")
    if lab.dtype == np.uint64 and lab.size and lab.max() > np.iinfo(np.int64).max:
        lab = np.minimum(lab, np.iinfo(np.int64).max)
    sel = None
    if mask is not None:
        sel = np.ascontiguousarray(mask_array(mask, z.shape[:-1]).ravel() > 0)
    if z.size == 0:
        return 0.0, np.zeros_like(z)
    zc = _core_dtype(z)
    loss, grad = _core.cross_entropy_loss(zc, np.ascontiguousarray(lab.ravel(), dtype=np.int64),
                                          z.shape[-1], sel)
    return float(loss), grad.reshape(z.shape).astype(z.dtype, copy=False)
