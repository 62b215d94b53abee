"""Argument checks shared by the public classes and functions: every message names the
argument, what was expected and what was given.

Array rules: arrays of the model's dtype that are C-contiguous pass through without a copy;
any other floating dtype or layout is converted once to the model's dtype; integer, bool,
complex and object arrays are a ``TypeError``; a wrong shape is a ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ---------------------------------------------------------------------- scalars
def model_dtype(dtype: npt.DTypeLike) -> np.dtype[Any]:
    """The model dtype given as ``np.float32``/``"float64"``/...; float32 or float64 only
    (not None, which NumPy would read as float64 while bptt's default is float32)."""
    if dtype is None:
        raise TypeError("dtype: expected float32 or float64, got None")
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError) as exc:
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


def nonnegative_int(name: str, value: object) -> int:
    """``value`` as an int >= 0, else a clear ``TypeError``/``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {value}")
    return int(value)


def flag(name: str, value: object) -> bool:
    """A switch: ``True``/``False`` (Python or NumPy bools; the ints 0 and 1 too)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    given = repr(value) if isinstance(value, numbers.Number) else type(value).__name__
    raise TypeError(f"{name}: expected True or False, got {given}")


def choice(name: str, value: object, options: Sequence[str]) -> str:
    """One of the strings ``options``."""
    expected = " or ".join(repr(o) for o in options)
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__}")
    if value not in options:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value


def rng_from_seed(value: object) -> np.random.Generator:
    """``seed``: None (fresh entropy), an int >= 0, a ``SeedSequence``, or a NumPy
    ``Generator`` (used as it is: drawing from it advances it)."""
    if isinstance(value, np.random.Generator):
        return value
    if isinstance(value, np.random.SeedSequence):
        return np.random.default_rng(value)
    if value is None or (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
        if value is not None and value < 0:
            raise ValueError(f"seed: expected an int >= 0, got {value}")
        return np.random.default_rng(None if value is None else int(value))
    raise TypeError(f"seed: expected an int >= 0, a numpy Generator or None, got "
                    f"{type(value).__name__}")


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


def unit_interval(name: str, value: object, *, closed: bool = False) -> float:
    """A real number in [0, 1) (or [0, 1] when ``closed``), as a float."""
    v = real_number(name, value)
    if not (0.0 <= v < 1.0 or (closed and v == 1.0)):
        raise ValueError(f"{name}: expected a number in [0, 1{']' if closed else ')'}, "
                         f"got {value}")
    return v


def budget_bytes(value: object) -> int | None:
    """``memory_budget``: None, or an int number of bytes from 0 to ``sys.maxsize``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"memory_budget: expected an int number of bytes or None, got "
                        f"{type(value).__name__}")
    n = int(value)
    if not 0 <= n <= sys.maxsize:
        raise ValueError(f"memory_budget: expected a number of bytes from 0 to {sys.maxsize} "
                         f"(None for no limit), got {n}")
    return n


# ---------------------------------------------------------------------- memory
#: Rough bytes of Python objects per parameter array (the ndarray, its name, dict and
#: list entries), counted with the data when deciding whether parameters can fit.
_ARRAY_OVERHEAD = 256


def memory_limit() -> int | None:
    """The most memory this process can have, in bytes: the smallest of the physical
    memory and the soft ``RLIMIT_AS`` / ``RLIMIT_DATA`` limits; None when none is known."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    try:
        import resource
    except ImportError:
        pass
    else:
        for which in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
            soft = resource.getrlimit(which)[0]
            if soft != resource.RLIM_INFINITY:
                limits.append(soft)
    positive = [n for n in limits if n > 0]
    return min(positive) if positive else None


def check_memory(what: str, nbytes: int, detail: str, overhead: int = 0) -> None:
    """Refuses, before anything is allocated, ``nbytes`` for ``detail`` (e.g. "the
    parameters (...)") of ``what`` (the call, with its arguments) when they cannot exist:
    a ``ValueError`` beyond what a process can address, a ``MemoryError`` stating the
    bytes when more than this process can have (``memory_limit()``; ``overhead`` bytes of
    Python objects are counted with them)."""
    if nbytes > sys.maxsize:
        raise ValueError(f"{what}: {detail} would need {nbytes} bytes, more than a process "
                         f"can address ({sys.maxsize})")
    limit = memory_limit()
    if limit is not None and nbytes + overhead > limit:
        raise MemoryError(f"cannot allocate {nbytes} bytes for {detail} of {what}: this "
                          f"process can have at most {limit} bytes")


def check_parameter_memory(what: str, n_values: int, n_arrays: int, dtype: np.dtype) -> None:
    """``check_memory`` for ``n_values`` parameters of ``dtype`` in ``n_arrays`` arrays;
    ``what`` names the model and its sizes (``"LSTM(input_size=1, ...)"``)."""
    check_memory(what, n_values * dtype.itemsize,
                 f"the parameters ({n_values} {dtype} values in {n_arrays} arrays)",
                 n_arrays * _ARRAY_OVERHEAD)


# ---------------------------------------------------------------------- arrays
def floating(name: str, value: object, dtype: npt.DTypeLike | None = None, *,
             hint: str = "") -> np.ndarray:
    """``value`` as an array of a floating dtype, converted to ``dtype`` when one is given
    (no copy when it already has it). ``hint`` is inserted into the ``TypeError``'s
    message after "expected a floating-point array"."""
    arr = as_array(name, value, f"a floating-point array{hint}")
    if arr.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array{hint}, got dtype {arr.dtype}")
    return arr if dtype is None else arr.astype(dtype, copy=False)


def as_array(name: str, value: object, expected: str) -> np.ndarray:
    """``np.asarray(value)``; what NumPy cannot make an array of (ragged nested lists, ...)
    is a ``ValueError`` naming ``name``."""
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name}: expected {expected}, got a {type(value).__name__} that "
                         f"NumPy cannot make an array of ({exc})") from exc


def check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    """``ValueError`` unless ``arr`` has exactly ``shape``."""
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")


def float_array(name: str, value: object, dtype: np.dtype, ndim: int, shape_text: str) -> np.ndarray:
    """``value`` as a C-contiguous array of ``dtype`` (no copy when it already is one)."""
    if (isinstance(value, np.ndarray) and value.dtype == dtype and value.ndim == ndim
            and value.flags.c_contiguous):
        return value  # the common case, without building the messages below
    arr = floating(name, value, hint=f" (converted to {dtype})")
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected shape {shape_text}, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


def lengths_array(value: object) -> np.ndarray:
    """``lengths`` as int64 of shape (B,); range checks happen in the core."""
    arr = as_array("lengths", value, "an integer array of shape (B,)")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected an integer array of shape (B,), got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"lengths: expected shape (B,), got {arr.shape}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"lengths: expected values in [1, T], got {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def bool_array(name: str, value: object, shape: tuple[int, ...]) -> np.ndarray | None:
    """A bool (or integer) array of ``shape`` as bool; None stays None."""
    if value is None:
        return None
    a = as_array(name, value, f"a bool array of shape {shape}")
    if a.dtype.kind not in "biu":
        raise TypeError(f"{name}: expected a bool array of shape {shape}, got dtype {a.dtype}")
    check_shape(name, a, shape)
    return a.astype(bool)


def mask_array(mask: object, lead_shape: tuple[int, ...]) -> np.ndarray:
    """A loss ``mask`` (not None) as a float64 0/1 array of shape ``lead_shape``."""
    m = as_array("mask", mask, "a bool or 0/1 array")
    if m.dtype.kind not in "biuf":
        raise TypeError(f"mask: expected a bool or 0/1 array, got dtype {m.dtype}")
    check_shape("mask", m, lead_shape)
    if m.dtype.kind != "b" and m.size and not np.all((m == 0) | (m == 1)):
        raise ValueError("mask: expected only 0/1 (or bool) values")
    return m.astype(np.float64)


def state_parts(name: str, state: Any, has_cell_state: bool) -> list[tuple[str, Any]]:
    """The arrays of a recurrent state with the names errors give them: ``[(name, h)]``, or
    ``[(name[0], h), (name[1], c)]`` for an LSTM; a structure that does not fit the cell is
    a clear error."""
    if has_cell_state:
        if not isinstance(state, (tuple, list)):
            raise TypeError(f"{name}: expected a tuple (h, c) for an LSTM, got "
                            f"{type(state).__name__}")
        if len(state) != 2:
            raise ValueError(f"{name}: expected a tuple (h, c) for an LSTM, got "
                             f"{len(state)} item(s)")
        return [(f"{name}[0]", state[0]), (f"{name}[1]", state[1])]
    if isinstance(state, (tuple, list)):
        raise TypeError(f"{name}: expected a single array h, got {type(state).__name__}")
    return [(name, state)]
