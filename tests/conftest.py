"""Shared helpers for the bptt test suite.

- ``make_model``: build a ``bptt`` model from a kind name
  (``rnn_tanh``, ``rnn_relu``, ``lstm``, ``gru``).
- ``load_reference``: the independent plain-NumPy reference in ``tests/reference.py``,
  loaded by path so it works whether or not ``tests`` is a package.
- ``random_state`` / ``to_f64`` / ``state_parts``: state helpers that understand the
  LSTM ``(h, c)`` tuple.
- ``check_close``: normwise comparison ``max|a - b| <= tol * max|b|`` that also records
  the largest error seen per dtype and quantity; the maxima are printed in the terminal
  summary at the end of the session.
- hypothesis profiles (test_properties.py): "ci", the default, is derandomized and keeps
  no example database, so every run tries the same examples; ``HYPOTHESIS_PROFILE=dev``
  draws new random examples (and remembers failures in .hypothesis/) to look for more.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parent

try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # the property tests skip themselves
    pass
else:
    _hypothesis_settings.register_profile("ci", derandomize=True, database=None,
                                          print_blob=True)
    _hypothesis_settings.register_profile("dev", derandomize=False)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}

# Tolerances against the float64 reference, by model dtype:
#     max|a - b| <= TOL * max|b| + ATOL
# The normwise term is the real check. The small absolute term only matters when a quantity
# is tiny because of cancellation (e.g. an almost dead ReLU stack whose only nonzero output
# is ~1e-3): there f32 rounding of the O(1) intermediate terms, not the result's size, sets
# the error, and a perturbation of the inputs by one f32 ulp moves the exact answer by more
# than 1e-5 of max|b|.
TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
ATOL = {np.dtype(np.float64): 1e-13, np.dtype(np.float32): 1e-6}

# Largest normwise errors seen: {dtype name: {quantity: (error, test id)}}.
MAX_ERRORS: dict[str, dict[str, tuple[float, str]]] = {}

_reference = None


def load_reference():
    """Import tests/reference.py by path (skip if it is not written yet)."""
    global _reference
    if _reference is None:
        path = TESTS_DIR / "reference.py"
        if not path.exists():
            pytest.skip("tests/reference.py does not exist yet")
        spec = importlib.util.spec_from_file_location("bptt_tests_reference", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _reference = module
    return _reference


def make_model(kind, input_size, hidden_size, num_layers=1, **kwargs):
    import bptt

    if kind == "rnn_tanh":
        return bptt.RNN(input_size, hidden_size, num_layers, nonlinearity="tanh", **kwargs)
    if kind == "rnn_relu":
        return bptt.RNN(input_size, hidden_size, num_layers, nonlinearity="relu", **kwargs)
    if kind == "lstm":
        return bptt.LSTM(input_size, hidden_size, num_layers, **kwargs)
    if kind == "gru":
        return bptt.GRU(input_size, hidden_size, num_layers, **kwargs)
    raise AssertionError(f"unknown kind {kind}")


def random_state(rng, kind, num_layers, num_dirs, batch, hidden, dtype, scale=0.5):
    shape = (num_layers * num_dirs, batch, hidden)
    h = (scale * rng.standard_normal(shape)).astype(dtype)
    if kind == "lstm":
        c = (scale * rng.standard_normal(shape)).astype(dtype)
        return (h, c)
    return h


def state_parts(state):
    """The arrays of a state (or state gradient) as a tuple."""
    if isinstance(state, tuple):
        return state
    return (state,)


def map_state(fn, state):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(fn(s) for s in state)
    return fn(state)


def to_f64(state):
    return map_state(lambda a: np.asarray(a, dtype=np.float64), state)


def copy_state(state):
    return map_state(lambda a: np.array(a, copy=True), state)


def param_names(num_layers, bidirectional, bias=True):
    """PyTorch's parameter names, in PyTorch's order."""
    names = []
    for layer in range(num_layers):
        for suffix in ("", "_reverse") if bidirectional else ("",):
            names += [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
            if bias:
                names += [f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
    return names


def param_shapes(kind, input_size, hidden_size, num_layers, bidirectional, bias=True):
    gates = GATES[kind] * hidden_size
    num_dirs = 2 if bidirectional else 1
    shapes = {}
    for name in param_names(num_layers, bidirectional, bias):
        layer = int(name.split("_l")[1].split("_")[0])
        if name.startswith("weight_ih"):
            in_size = input_size if layer == 0 else num_dirs * hidden_size
            shapes[name] = (gates, in_size)
        elif name.startswith("weight_hh"):
            shapes[name] = (gates, hidden_size)
        else:
            shapes[name] = (gates,)
    return shapes


def _test_id():
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    return current.rsplit(" ", 1)[0]


def rel_error(actual, expected):
    """Normwise relative error max|a - e| / max|e| (absolute when e is all zero)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    diff = np.abs(actual - expected)
    if not np.all(np.isfinite(diff)):
        return float("inf")
    err = float(np.max(diff)) if diff.size else 0.0
    return err / scale if scale > 0 else err


def check_close(actual, expected, dtype, what, tol=None, atol=None):
    """Assert max|a - e| <= tol * max|e| + atol; record the normwise error for the summary.

    Without ``tol`` the dtype's reference tolerances apply (TOL, ATOL); with ``tol`` and no
    ``atol`` the check is purely normwise.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (
        f"{what}: shape {actual.shape} != expected {expected.shape}"
    )
    dtype = np.dtype(dtype)
    if tol is None:
        tol, atol = TOL[dtype], ATOL[dtype] if atol is None else atol
    atol = 0.0 if atol is None else atol
    err = rel_error(actual, expected)
    table = MAX_ERRORS.setdefault(dtype.name, {})
    if what not in table or err > table[what][0]:
        table[what] = (err, _test_id())
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    max_diff = float(np.max(diff)) if diff.size else 0.0
    if not (np.all(np.isfinite(diff)) and max_diff <= tol * scale + atol):
        where = np.unravel_index(int(np.nanargmax(diff)), diff.shape) if diff.size else ()
        raise AssertionError(
            f"{what}: max|diff| {max_diff:.3e} > {tol:.1e} * max|expected| + {atol:.1e} "
            f"(normwise relative error {err:.3e}; "
            f"worst at index {where}: got {actual[where]!r}, expected {expected[where]!r}; "
            f"max|expected| = {scale:.3e})"
        )
    return err


def check_state_close(actual, expected, dtype, what, tol=None, atol=None):
    a_parts, e_parts = state_parts(actual), state_parts(expected)
    assert len(a_parts) == len(e_parts), f"{what}: structure differs"
    names = ("h", "c")
    for i, (a, e) in enumerate(zip(a_parts, e_parts, strict=True)):
        check_close(a, e, dtype, f"{what}.{names[i]}", tol, atol)


def pytest_terminal_summary(terminalreporter):
    if not MAX_ERRORS:
        return
    terminalreporter.section("bptt: max normwise relative errors max|a - b| / max|b|")
    for dtype_name in sorted(MAX_ERRORS):
        table = MAX_ERRORS[dtype_name]
        overall = max(table.values(), key=lambda v: v[0])
        terminalreporter.write_line(f"{dtype_name}: overall max {overall[0]:.3e} ({overall[1]})")
        for what in sorted(table):
            err, test = table[what]
            terminalreporter.write_line(f"    {what:<28s} {err:.3e}  {test}")


@pytest.fixture
def rng(request):
    """A generator seeded from the test id, so every test is reproducible."""
    # hash() of str is salted per process; crc32 is stable.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Makes ``import matplotlib`` fail for the duration of a test."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    for mod in [k for k in sys.modules if k == "matplotlib" or k.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", fake_import)
