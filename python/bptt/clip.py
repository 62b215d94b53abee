"""Gradient clipping, in place: ``clip_grad_norm`` (global L2 norm) and ``clip_grad_value``.

Both take the gradients as a dict of arrays (e.g. ``g.params``) or any iterable of arrays,
and change the arrays themselves, as ``torch.nn.utils.clip_grad_norm_`` /
``clip_grad_value_`` change ``.grad``. Exploding gradients in recurrent networks come from
the product of many Jacobians in BPTT; clipping the global norm (Pascanu et al., 2013)
bounds the step without changing its direction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ._checks import flag, real_number

__all__ = ["clip_grad_norm", "clip_grad_value", "grad_norm"]


def _arrays(grads: Any) -> list[np.ndarray]:
    if isinstance(grads, np.ndarray):
        items = [grads]
    elif isinstance(grads, Mapping):
        items = list(grads.values())
    elif isinstance(grads, Iterable):
        items = list(grads)
    else:
        raise TypeError(f"grads: expected a dict or an iterable of arrays, got "
                        f"{type(grads).__name__}")
    for i, g in enumerate(items):
        if not isinstance(g, np.ndarray):
            raise TypeError(f"grads: item {i} is a {type(g).__name__}, expected an ndarray "
                            f"(clipping works in place)")
        if g.dtype.kind != "f":
            raise TypeError(f"grads: item {i} has dtype {g.dtype}, expected floating point")
    return items


def grad_norm(grads: Any) -> float:
    """Global L2 norm ``sqrt(sum over arrays of sum(g**2))``, accumulated in float64.
    Nothing is changed. ``grads`` as for ``clip_grad_norm``."""
    total = 0.0
    for g in _arrays(grads):
        g64 = g.astype(np.float64, copy=False).ravel()
        # Not np.dot: NumPy hands a long dot product to OpenBLAS, whose threads then spin
        # for ~0.1 s, holding a core that bptt's next call counts as busy and so leaves
        # idle (a clipped 2-thread training step ran at its 1-thread speed).
        total += float(np.einsum("i,i->", g64, g64))
    return math.sqrt(total)


def clip_grad_norm(grads: Any, max_norm: float, *, error_if_nonfinite: bool = False) -> float:
    """Scales all gradients in place so that their global L2 norm is at most ``max_norm``.

    ``total = sqrt(sum over all arrays of sum(g**2))`` (in float64). When
    ``total > max_norm``, every array is multiplied by ``max_norm / (total + 1e-6)``
    (PyTorch's formula, so the clipped norm is a hair under ``max_norm``); otherwise nothing
    changes. Returns ``total``, the norm *before* clipping.

    A non-finite total (a NaN or Inf somewhere) raises ``FloatingPointError`` when
    ``error_if_nonfinite`` is true, leaving the gradients untouched; otherwise the
    gradients are scaled as PyTorch does (by NaN for a NaN total, by 0 for an infinite
    one, so NaN/Inf entries become NaN), and the non-finite total is returned so the
    caller can skip the step.
    """
    max_norm = real_number("max_norm", max_norm)
    if not max_norm > 0:
        raise ValueError(f"max_norm: expected a positive number, got {max_norm}")
    error_if_nonfinite = flag("error_if_nonfinite", error_if_nonfinite)
    arrays = _arrays(grads)
    total = grad_norm(arrays)
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise FloatingPointError(
                f"clip_grad_norm: the total norm of the gradients is {total}; set "
                f"error_if_nonfinite=False to clip anyway")
        coef = 0.0 if math.isinf(total) else math.nan
    else:
        coef = max_norm / (total + 1e-6)
        if coef >= 1.0:
            return total
    for g in arrays:
        with np.errstate(invalid="ignore"):
            g *= g.dtype.type(coef)
    return total


def clip_grad_value(grads: Any, clip_value: float) -> None:
    """Clamps every gradient element in place to ``[-clip_value, clip_value]``
    (``clip_value >= 0``). NaN entries stay NaN. ``grads`` as for ``clip_grad_norm``."""
    clip_value = real_number("clip_value", clip_value)
    if not clip_value >= 0:
        raise ValueError(f"clip_value: expected a number >= 0, got {clip_value}")
    for g in _arrays(grads):
        np.clip(g, -clip_value, clip_value, out=g)
