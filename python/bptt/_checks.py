"""Argument normalisation shared by the public classes: dtype and layout rules, messages.

Rules: arrays of the model's dtype that are C-contiguous pass through without a copy; any
other floating dtype or layout is converted once to the model's dtype; integer, bool,
complex and object arrays are a ``TypeError``. Every message names the argument.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def model_dtype(dtype: npt.DTypeLike) -> np.dtype[Any]:
    """The model dtype given as ``np.float32``/``"float64"``/...; float32 or float64 only."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from exc
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return dt


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def float_array(name: str, value: object, dtype: np.dtype, ndim: int, shape_text: str) -> np.ndarray:
    """``value`` as a C-contiguous array of ``dtype`` (no copy when it already is one)."""
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise TypeError(
            f"{name}: expected a floating-point array (converted to {dtype}), got dtype {arr.dtype}"
        )
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected shape {shape_text}, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


def lengths_array(value: object) -> np.ndarray:
    """``lengths`` as int64 of shape (B,); range checks happen in the core."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected an integer array of shape (B,), got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"lengths: expected shape (B,), got {arr.shape}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError("lengths: values too large")
    return np.ascontiguousarray(arr, dtype=np.int64)
