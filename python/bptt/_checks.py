"""Argument checks shared by the public classes and functions: every message names the
argument, what was expected and what was given.

Array rules: arrays of the model's dtype that are C-contiguous pass through without a copy;
any other floating dtype or layout is converted once to the model's dtype; integer, bool,
complex and object arrays are a ``TypeError``; a wrong shape is a ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------- scalars
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
    """An int (or NumPy integer, not bool) >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def real_number(name: str, value: object) -> float:
    """A real number (int, float or NumPy scalar, not bool) as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    return float(value)


def finite_nonnegative(name: str, value: object) -> float:
    """A finite real number >= 0, as a float."""
    v = real_number(name, value)
    if not (v >= 0.0 and math.isfinite(v)):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value}")
    return v


def unit_interval(name: str, value: object) -> float:
    """A real number in [0, 1), as a float."""
    v = finite_nonnegative(name, value)
    if v >= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value}")
    return v


def budget_bytes(value: object) -> int | None:
    """``memory_budget``: None, or an int number of bytes >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"memory_budget: expected an int number of bytes or None, got "
                        f"{type(value).__name__}")
    if value < 0:
        raise ValueError(f"memory_budget: expected a non-negative number of bytes, got {value}")
    return int(value)


# ---------------------------------------------------------------------- arrays
def floating(name: str, value: object, dtype: npt.DTypeLike | None = None, *,
             hint: str = "") -> np.ndarray:
    """``value`` as an array of a floating dtype, converted to ``dtype`` when one is given
    (no copy when it already has it). ``hint`` is inserted into the ``TypeError``'s
    message after "expected a floating-point array"."""
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array{hint}, got dtype {arr.dtype}")
    return arr if dtype is None else arr.astype(dtype, copy=False)


def check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    """``ValueError`` unless ``arr`` has exactly ``shape``."""
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")


def float_array(name: str, value: object, dtype: np.dtype, ndim: int, shape_text: str) -> np.ndarray:
    """``value`` as a C-contiguous array of ``dtype`` (no copy when it already is one)."""
    arr = floating(name, value, hint=f" (converted to {dtype})")
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


def bool_array(name: str, value: object, shape: tuple[int, ...]) -> np.ndarray | None:
    """A bool (or integer) array of ``shape`` as bool; None stays None."""
    if value is None:
        return None
    a = np.asarray(value)
    if a.dtype.kind not in "biu":
        raise TypeError(f"{name}: expected a bool array of shape {shape}, got dtype {a.dtype}")
    check_shape(name, a, shape)
    return a.astype(bool)


def mask_array(mask: object, lead_shape: tuple[int, ...]) -> np.ndarray:
    """A loss ``mask`` (not None) as a float64 0/1 array of shape ``lead_shape``."""
    m = np.asarray(mask)
    if m.dtype.kind not in "biuf":
        raise TypeError(f"mask: expected a bool or 0/1 array, got dtype {m.dtype}")
    check_shape("mask", m, lead_shape)
    if m.dtype.kind != "b" and m.size and not np.all((m == 0) | (m == 1)):
        raise ValueError("mask: expected only 0/1 (or bool) values")
    return m.astype(np.float64)
