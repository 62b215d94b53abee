"""Property-based tests (hypothesis) over the whole public API.

1. Random configurations against the independent float64 NumPy reference
   (tests/reference.py): cell kind, sizes, layers, directions, layout (time-major or
   batch-first; C, Fortran or strided arrays, other float dtypes), lengths, dtype, initial
   state and memory budget. Outputs, final states and every gradient must match.
2. Random bad arguments against one rule: a clean ``ValueError``/``TypeError`` whose
   message names the argument (or a ``MemoryError`` stating the bytes), never another
   exception, and everything still works afterwards (the model gives the same outputs,
   the optimizer keeps its hyperparameters and state, the thread pool its size).

The examples are reproducible: tests/conftest.py loads a derandomized, database-less
hypothesis profile ("ci") unless ``HYPOTHESIS_PROFILE`` names another ("dev" explores
new random examples). Each test states its example count in ``@settings``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")

import bptt
from bptt import data, diagnostics, optim
from conftest import (
    KINDS,
    TOL,
    check_close,
    check_state_close,
    load_reference,
    make_model,
    random_state,
    state_parts,
    to_f64,
)
from hypothesis import given, settings
from hypothesis import strategies as st

# ---------------------------------------------------------------------------------------
# 1. Random configurations against the reference
# ---------------------------------------------------------------------------------------


@st.composite
def configurations(draw: Any) -> dict[str, Any]:
    T = draw(st.integers(1, 9), label="T")
    B = draw(st.integers(1, 4), label="B")
    cfg = {
        "kind": draw(st.sampled_from(KINDS), label="kind"),
        "num_layers": draw(st.integers(1, 3), label="num_layers"),
        "bidirectional": draw(st.booleans(), label="bidirectional"),
        "batch_first": draw(st.booleans(), label="batch_first"),
        "bias": draw(st.booleans(), label="bias"),
        "dtype": draw(st.sampled_from([np.float32, np.float64]), label="dtype"),
        "T": T,
        "B": B,
        "I": draw(st.integers(1, 6), label="input_size"),
        "H": draw(st.integers(1, 7), label="hidden_size"),
        # How x is handed over: as it is, or in a layout/dtype the package must convert.
        "layout": draw(st.sampled_from(["c", "fortran", "strided", "other_dtype"]),
                       label="layout"),
        "lengths": draw(st.none() | st.lists(st.integers(1, T), min_size=B, max_size=B),
                        label="lengths"),
        "with_state": draw(st.booleans(), label="with_state"),
        "with_d_state": draw(st.booleans(), label="with_d_state"),
        # None: full tape; a fraction f: the minimum budget + f * (full tape - minimum).
        "budget": draw(st.none() | st.floats(0.0, 1.0), label="budget"),
        "seed": draw(st.integers(0, 2**32 - 1), label="seed"),
    }
    return cfg


def _present(x: np.ndarray, layout: str, dtype: Any) -> np.ndarray:
    """``x`` (of the model's dtype) in the layout under test, same values."""
    if layout == "fortran":
        return np.asfortranarray(x)
    if layout == "strided":
        wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    if layout == "other_dtype":
        # float32 values are exact in float64; a float64 model gets float32-rounded values
        # converted back, which is what it then computes with.
        return x.astype(np.float64 if np.dtype(dtype) == np.float32 else np.float32)
    return x


def _minimum_budget(m: Any, x: np.ndarray, lengths: Any) -> int:
    with pytest.raises(ValueError, match="memory_budget") as err:
        m.forward(x, lengths=lengths, memory_budget=0)
    found = re.search(r"at least (\d+) bytes", str(err.value))
    assert found, str(err.value)
    return int(found.group(1))


@settings(max_examples=60, deadline=None)
@given(cfg=configurations())
def test_random_configurations_match_the_reference(cfg: dict[str, Any]) -> None:
    ref = load_reference()
    rng = np.random.default_rng(cfg["seed"])
    kind, L, bi, bf = cfg["kind"], cfg["num_layers"], cfg["bidirectional"], cfg["batch_first"]
    T, B, I, H, dt = cfg["T"], cfg["B"], cfg["I"], cfg["H"], np.dtype(cfg["dtype"])
    D = 2 if bi else 1
    m = make_model(kind, I, H, L, bias=cfg["bias"], batch_first=bf, bidirectional=bi,
                   dtype=dt, seed=int(rng.integers(2**31)))
    params64 = {k: v.astype(np.float64) for k, v in m.state_dict().items()}

    lead = (B, T) if bf else (T, B)
    x = rng.standard_normal(lead + (I,)).astype(dt)
    x_given = _present(x, cfg["layout"], dt)
    x_used = np.asarray(x_given, dtype=dt)      # what the model computes with
    x_before = x_given.copy()
    state = random_state(rng, kind, L, D, B, H, dt) if cfg["with_state"] else None
    d_out = rng.standard_normal(lead + (D * H,)).astype(dt)
    d_state = random_state(rng, kind, L, D, B, H, dt, 1.0) if cfg["with_d_state"] else None
    lengths = None if cfg["lengths"] is None else np.array(cfg["lengths"], dtype=np.int64)

    budget = None
    if cfg["budget"] is not None:
        smallest = _minimum_budget(m, x_given, lengths)
        full = m.forward(x_given, lengths=lengths)[2].nbytes
        budget = smallest + int(cfg["budget"] * max(full - smallest, 0))
    out, st_n, tape = m.forward(x_given, state, lengths=lengths, memory_budget=budget)
    g = m.backward(tape, d_out, d_state)

    tm = (lambda a: np.swapaxes(a, 0, 1)) if bf else (lambda a: a)
    r_out, r_st, cache = ref.forward(kind, params64, tm(x_used).astype(np.float64),
                                     to_f64(state), num_layers=L, hidden_size=H,
                                     bidirectional=bi, batch_first=False, lengths=lengths,
                                     bias=cfg["bias"])
    r_g = ref.backward(cache, tm(d_out).astype(np.float64), to_f64(d_state))

    # Under a budget, weight gradients are summed segment by segment: float32 rounding
    # differs from the full tape's by a few ulps more.
    tol = None if budget is None or dt == np.float64 else 3 * TOL[dt]
    assert out.dtype == dt and out.shape == lead + (D * H,)
    check_close(tm(out), r_out, dt, "out")
    check_state_close(st_n, r_st, dt, "state")
    assert g.dx.shape == x.shape and g.dx.dtype == dt
    check_close(tm(g.dx), r_g["dx"], dt, "dx", tol=tol)
    if g.dstate is not None:
        for part in state_parts(g.dstate):
            assert part.shape == (L * D, B, H)
        check_state_close(g.dstate, r_g["dstate"], dt, "dstate", tol=tol)
    assert set(g.params) == set(params64)
    for name, grad in g.params.items():
        check_close(grad, r_g["params"][name], dt, "d" + name.split("_l")[0], tol=tol)
    check_close(g.dh_norm, r_g["dh_norm"], dt, "dh_norm", tol=tol)

    # Inference gives the training forward's numbers; the caller's x is unchanged.
    inf_out, _ = m(x_given, state, lengths=lengths)
    check_close(inf_out, out, dt, "inference-vs-forward",
                tol=1e-12 if dt == np.float64 else 1e-6)
    np.testing.assert_array_equal(x_given, x_before)


# ---------------------------------------------------------------------------------------
# 2. Random bad arguments
# ---------------------------------------------------------------------------------------

_I64 = 2**63

# Values that are no real number (None included: use ``SOMETHING`` where None is allowed).
SOMETHING = st.sampled_from(["1", "fast", b"1", [], [1, 2], (1,), {}, {"a": 1}, object(), 1j,
                             np.array([1, 2]), np.array([[0.5]]), np.float64, print])
NOT_NUMBERS = SOMETHING | st.none()


def not_int() -> st.SearchStrategy[Any]:
    """Not an int: numbers of other types, booleans, non-numbers."""
    return (NOT_NUMBERS | st.booleans() | st.floats(allow_nan=True, allow_infinity=True)
            | st.sampled_from([np.float32(1.0), np.float64(2.0), 1.0 + 0j]))


def not_positive_int() -> st.SearchStrategy[Any]:
    return st.integers(max_value=0) | st.integers(-(2**200), -(2**62)) | not_int()


def not_size() -> st.SearchStrategy[Any]:
    """A bad model size: not a positive int, or one so large that nothing can hold it."""
    return not_positive_int() | st.integers(2**40, 2**200)


def not_flag() -> st.SearchStrategy[Any]:
    return (st.integers().filter(lambda v: v not in (0, 1)) | st.floats() | NOT_NUMBERS
            | st.text(max_size=5))


def not_nonnegative(*, inf: bool = False, none: bool = False) -> st.SearchStrategy[Any]:
    """Not a finite real number >= 0 (with ``inf``: nor +inf; with ``none``: nor None)."""
    specials = [float("nan"), -float("inf")] + ([] if inf else [float("inf")])
    return (st.floats(max_value=-1e-300) | st.sampled_from(specials)
            | st.integers(max_value=-1) | (SOMETHING if none else NOT_NUMBERS)
            | st.booleans())


def not_unit(closed: bool = False) -> st.SearchStrategy[Any]:
    """Not a number in [0, 1) ([0, 1] when closed)."""
    above = st.floats(min_value=1.0, exclude_min=closed, allow_nan=False)
    return not_nonnegative() | above | st.integers(min_value=2 if closed else 1)


def not_eps() -> st.SearchStrategy[Any]:
    """Not an eps: also positive numbers that round to 0 in float32."""
    return not_nonnegative() | st.floats(1e-300, 1e-46)


def not_budget() -> st.SearchStrategy[Any]:
    """Not a memory budget (None, no limit, is one)."""
    return (st.integers(max_value=-1) | st.integers(min_value=sys.maxsize + 1)
            | st.floats() | SOMETHING | st.booleans() | st.just(np.float64(1e6)))


def not_array(ndim: int) -> st.SearchStrategy[Any]:
    """Not a usable floating array of rank ``ndim`` (wrong rank, dtype or no array at
    all); never None, which some arguments allow."""
    bad_dtypes = st.sampled_from([np.int64, np.int8, np.bool_, np.complex128, object, "U3"])
    wrong_dtype = bad_dtypes.map(lambda dt: np.ones((2,) * ndim, dtype=dt))
    wrong_rank = st.integers(0, 5).filter(lambda n: n != ndim).map(
        lambda n: np.zeros((2,) * n))
    return (wrong_dtype | wrong_rank
            | st.sampled_from(["x", [[1.0], [1.0, 2.0]], {"a": 1}, object()]))


T, B, IN, H, L = 5, 2, 3, 4, 2


@dataclass
class Model:
    """A model, its inputs and its outputs before any bad call."""

    m: Any
    x: np.ndarray
    state: Any
    out: np.ndarray
    d_out: np.ndarray
    tape: Any

    def still_works(self) -> None:
        out, _ = self.m(self.x, self.state)
        np.testing.assert_array_equal(out, self.out)
        g = self.m.backward(self.tape, self.d_out)
        assert np.all(np.isfinite(g.dx))


_MODELS: dict[str, Model] = {}


def model(kind: str) -> Model:
    if kind not in _MODELS:
        rng = np.random.default_rng(7)
        m = make_model(kind, IN, H, L, bidirectional=True, dtype=np.float64, seed=3)
        x = rng.standard_normal((T, B, IN))
        state = random_state(rng, kind, L, 2, B, H, np.float64)
        out, _, tape = m.forward(x, state)
        _MODELS[kind] = Model(m, x, state, out, np.ones_like(out), tape)
    return _MODELS[kind]


@dataclass
class Case:
    """One argument of one call: ``call(value)`` must refuse every value ``bad`` draws
    with an error naming ``arg``."""

    label: str
    arg: str
    bad: st.SearchStrategy[Any]
    call: Callable[[Any], object]


def assert_refused(case: Case, value: Any) -> None:
    with pytest.raises((ValueError, TypeError, MemoryError)) as err:
        case.call(value)
    exc = err.value
    msg = str(exc)
    if isinstance(exc, MemoryError):
        assert re.search(r"\d+ bytes", msg), f"{case.label}: MemoryError without bytes: {msg!r}"
    else:
        assert type(exc) in (ValueError, TypeError), f"{case.label}: {type(exc).__name__}"
        assert re.search(rf"(?<![\w.]){re.escape(case.arg)}(?!\w)", msg), (
            f"{case.label}({value!r}): the message does not name {case.arg!r}: {msg!r}")


def check_cases(cases: list[Case], draw: Any) -> Case:
    case = draw(st.sampled_from(cases), label="case")
    value = draw(case.bad, label=case.label)
    assert_refused(case, value)
    return case


# ------------------------------------------------------------------ constructors
def _ctor(kind: str, name: str) -> Callable[[Any], object]:
    def call(value: Any) -> object:
        args = {"input_size": IN, "hidden_size": H, "num_layers": L, name: value}
        return make_model(kind, args.pop("input_size"), args.pop("hidden_size"),
                          args.pop("num_layers"), **args)
    return call


CONSTRUCTOR_CASES = [
    Case(f"{kind}.{arg}", arg, bad, _ctor(kind, arg))
    for kind in KINDS
    for arg, bad in [
        ("input_size", not_size()), ("hidden_size", not_size()), ("num_layers", not_size()),
        ("bias", not_flag()), ("batch_first", not_flag()), ("bidirectional", not_flag()),
        ("dtype", st.sampled_from([None, np.int32, np.float16, np.complex64, "int8",
                                   "nonsense", object, 3, np.bool_, np.array([1.0])])),
        ("seed", st.integers(max_value=-1) | st.floats() | st.text(max_size=3)
         | st.booleans() | st.sampled_from([[1.5], np.array([1.5]), object()])),
    ]
] + [
    Case("RNN.nonlinearity", "nonlinearity",
         st.text(max_size=6).filter(lambda s: s not in ("tanh", "relu")) | NOT_NUMBERS,
         lambda v: bptt.RNN(IN, H, nonlinearity=v)),
    Case("Linear.in_features", "in_features", not_size(), lambda v: bptt.Linear(v, 2)),
    Case("Linear.out_features", "out_features", not_size(), lambda v: bptt.Linear(2, v)),
    Case("Linear.bias", "bias", not_flag(), lambda v: bptt.Linear(2, 2, bias=v)),
    Case("Linear.seed", "seed", st.integers(max_value=-1) | st.floats(),
         lambda v: bptt.Linear(2, 2, seed=v)),
]


@settings(max_examples=150, deadline=None)
@given(draw=st.data())
def test_bad_constructor_arguments(draw: Any) -> None:
    check_cases(CONSTRUCTOR_CASES, draw.draw)
    make_model("lstm", IN, H, L).forward(np.zeros((T, B, IN)))   # construction still works


# ------------------------------------------------------------------ calls
def _call_cases(kind: str) -> list[Case]:
    def mm() -> Model:
        return model(kind)

    state_shape = (L * 2, B, H)

    def bad_states() -> st.SearchStrategy[Any]:
        arrays = not_array(3) | st.sampled_from(
            [np.zeros((L * 2, B + 1, H)), np.zeros((L * 2 - 1, B, H)), np.zeros(state_shape[1:])])
        if kind == "lstm":
            good = np.zeros(state_shape)
            return (arrays.map(lambda a: (good, a)) | arrays.map(lambda a: (a, good))
                    | st.sampled_from([good, (good,), (good, good, good), [good]]))
        return arrays | st.just((np.zeros(state_shape),) * 2)

    bad_x = not_array(3) | st.sampled_from(
        [None, np.zeros((T, B, IN + 1)), np.zeros((0, B, IN)), np.zeros((T, 0, IN)),
         np.zeros((T, B, IN), dtype=np.complex64)])
    bad_lengths = (st.lists(st.integers(), min_size=B, max_size=B).filter(
        lambda v: any(n < 1 or n > T for n in v)).map(lambda v: np.array(v, dtype=object)
                                                     if any(abs(n) >= _I64 for n in v)
                                                     else np.array(v))
        | st.sampled_from([np.array([1.0, 2.0]), np.array([True, True]), np.array([1, 2, 3]),
                           np.array([[1, 2]]), "ab", [[1], [1, 2]], np.array([T + 1, 1],
                                                                             dtype=np.uint64)]))
    return [
        Case(f"{kind}(x)", "x", bad_x, lambda v: mm().m(v)),
        Case(f"{kind}.forward(x)", "x", bad_x, lambda v: mm().m.forward(v)),
        Case(f"{kind}(state)", "state", bad_states(), lambda v: mm().m(mm().x, v)),
        Case(f"{kind}(lengths)", "lengths", bad_lengths,
             lambda v: mm().m(mm().x, lengths=v)),
        Case(f"{kind}.forward(memory_budget)", "memory_budget",
             not_budget() | st.integers(0, 100),  # below the smallest possible
             lambda v: mm().m.forward(mm().x, memory_budget=v)),
        Case(f"{kind}.backward(d_out)", "d_out",
             not_array(3) | st.just(np.zeros((T, B, 2 * H + 1))),
             lambda v: mm().m.backward(mm().tape, v)),
        Case(f"{kind}.backward(d_state)", "d_state", bad_states(),
             lambda v: mm().m.backward(mm().tape, mm().d_out, v)),
        Case(f"{kind}.backward(tape)", "tape",
             NOT_NUMBERS | st.sampled_from(["other_model"]),
             lambda v: mm().m.backward(
                 model("gru" if kind == "lstm" else "lstm").tape
                 if isinstance(v, str) and v == "other_model" else v, mm().d_out)),
        Case(f"{kind}.load_state_dict", "state_dict",
             NOT_NUMBERS.filter(lambda v: not isinstance(v, dict))
             | st.sampled_from(["drop", "extra", "shape", "int", "intkey"]).map(
                 lambda how: _bad_state_dict(mm().m, how)),
             lambda v: mm().m.load_state_dict(v)),
    ]


def _bad_state_dict(m: Any, how: str) -> Any:
    sd = m.state_dict()
    first = next(iter(sd))
    if how == "drop":
        del sd[first]
    elif how == "extra":
        sd["weight_ih_l9"] = sd[first]
    elif how == "shape":
        sd[first] = sd[first][:-1]
    elif how == "int":
        sd[first] = sd[first].astype(np.int64)
    else:
        sd[1] = sd[first]
    return _NamedDict(sd, first)


class _NamedDict(dict):  # type: ignore[type-arg]
    """A bad state dict that knows which key a message may name instead of
    ``state_dict`` (a key whose array has the wrong shape or dtype)."""

    def __init__(self, d: dict[Any, Any], key: str) -> None:
        super().__init__(d)
        self.key = key


CALL_CASES = [c for kind in KINDS for c in _call_cases(kind)]


@settings(max_examples=200, deadline=None)
@given(draw=st.data())
def test_bad_call_arguments(draw: Any) -> None:
    case = draw.draw(st.sampled_from(CALL_CASES), label="case")
    value = draw.draw(case.bad, label=case.label)
    if isinstance(value, _NamedDict):
        # A wrong array under a right key is named by its key.
        with pytest.raises((ValueError, TypeError)) as err:
            case.call(value)
        assert "state_dict" in str(err.value) or value.key in str(err.value), str(err.value)
    else:
        assert_refused(case, value)
    for kind in KINDS:
        if kind in _MODELS:
            _MODELS[kind].still_works()


# ------------------------------------------------------------------ optimizers
OPTIMIZERS: dict[str, tuple[Any, dict[str, st.SearchStrategy[Any]]]] = {
    "SGD": (optim.SGD, {"lr": not_nonnegative(), "momentum": not_nonnegative(),
                        "dampening": not_unit(closed=True), "weight_decay": not_nonnegative(),
                        "nesterov": not_flag()}),
    "RMSprop": (optim.RMSprop, {"lr": not_nonnegative(), "alpha": not_unit(),
                                "eps": not_eps(), "weight_decay": not_nonnegative(),
                                "momentum": not_nonnegative(), "centered": not_flag()}),
    "Adam": (optim.Adam, {"lr": not_nonnegative(), "eps": not_eps(),
                          "weight_decay": not_nonnegative(), "amsgrad": not_flag()}),
    "AdamW": (optim.AdamW, {"lr": not_nonnegative(), "eps": not_eps(),
                            "weight_decay": not_nonnegative(), "amsgrad": not_flag()}),
}
BAD_BETAS = (not_unit().map(lambda b: (0.9, b)) | not_unit().map(lambda b: (b, 0.999))
             | st.sampled_from([0.9, (0.9,), (0.9, 0.99, 0.999), "ab", None]))


def _optimizer_args() -> st.SearchStrategy[tuple[str, str, Any]]:
    options = []
    for name, (_, hyper) in OPTIMIZERS.items():
        for arg, bad in hyper.items():
            options.append(bad.map(lambda v, n=name, a=arg: (n, a, v)))
        if name.startswith("Adam"):
            options.append(BAD_BETAS.map(lambda v, n=name: (n, "betas", v)))
    return st.one_of(options)


@settings(max_examples=200, deadline=None)
@given(choice=_optimizer_args(), how=st.sampled_from(["assignment", "load"]))
def test_bad_optimizer_hyperparameters(choice: tuple[str, str, Any], how: str) -> None:
    """The constructor, an assignment and load_state_dict refuse a bad hyperparameter
    with the same message (one validator), and a refused change leaves the optimizer as
    it was."""
    name, arg, value = choice
    cls = OPTIMIZERS[name][0]
    w = np.linspace(-1.0, 1.0, 6, dtype=np.float32).reshape(2, 3)
    grads = {"w": np.full((2, 3), 0.5, dtype=np.float32)}
    with pytest.raises((ValueError, TypeError)) as first:
        cls({"w": w.copy()}, **{arg: value})
    said = str(first.value)
    assert re.search(rf"(?<![\w.]){re.escape(arg)}(?!\w)", said), said
    opt = cls({"w": w})
    opt.step(grads)
    before = opt.state_dict()
    with pytest.raises(type(first.value)) as again:
        if how == "assignment":
            setattr(opt, arg, value)
        else:
            sd = opt.state_dict()
            sd["hyperparams"][arg] = value
            opt.load_state_dict(sd)
    assert said in str(again.value)          # the same validator said it
    after = opt.state_dict()
    assert after["hyperparams"] == before["hyperparams"]
    np.testing.assert_equal(after["state"], before["state"])
    opt.step(grads)                          # and it still steps
    assert np.all(np.isfinite(w))


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(OPTIMIZERS)),
       how=st.sampled_from(["no_step", "neg_step", "float_step", "bool_step", "not_dict",
                            "unknown_buffer", "bad_shape", "int_buffer", "drop_primary",
                            "unknown_param", "state_none", "hyper_none", "none", "list",
                            "missing_hyper", "extra_hyper"]))
def test_bad_optimizer_state_dict(name: str, how: str) -> None:
    cls = OPTIMIZERS[name][0]
    w = np.ones((2, 3), dtype=np.float64)
    opt = cls({"w": w})
    opt.step({"w": np.full((2, 3), 0.1)})
    sd: Any = opt.state_dict()
    entry = sd["state"]["w"]
    buffer = next((k for k in entry if k != "step"), None)
    if how == "no_step":
        del entry["step"]
    elif how == "neg_step":
        entry["step"] = -1
    elif how == "float_step":
        entry["step"] = 1.5
    elif how == "bool_step":
        entry["step"] = True
    elif how == "not_dict":
        sd["state"]["w"] = [1, 2]
    elif how == "unknown_buffer":
        entry["velocity"] = np.zeros((2, 3))
    elif how == "bad_shape" and buffer is not None:
        entry[buffer] = np.zeros((3, 2))
    elif how == "int_buffer" and buffer is not None:
        entry[buffer] = np.zeros((2, 3), dtype=np.int64)
    elif how == "drop_primary" and name != "SGD":
        del entry[buffer]
    elif how == "unknown_param":
        sd["state"]["v"] = dict(entry)
    elif how == "state_none":
        sd["state"] = None
    elif how == "hyper_none":
        sd["hyperparams"] = None
    elif how == "none":
        sd = None
    elif how == "list":
        sd = [sd]
    elif how == "missing_hyper":
        sd["hyperparams"].pop("lr")
    elif how == "extra_hyper":
        sd["hyperparams"]["warmup"] = 3
    else:
        return  # no such buffer for this optimizer
    before = opt.state_dict()
    with pytest.raises((ValueError, TypeError), match="state_dict"):
        opt.load_state_dict(sd)
    np.testing.assert_equal(opt.state_dict(), before)


# ------------------------------------------------------------------ TBPTT
def _tbptt(**kwargs: Any) -> Any:
    m = bptt.RNN(2, 3, seed=0)
    ro = bptt.Linear(3, 1, seed=0)
    base: dict[str, Any] = {"k1": 2}
    base.update(kwargs)
    return bptt.TBPTT(m, ro, bptt.mse_loss, None, **base)


_STREAM_X = np.zeros((4, 2, 2))
_STREAM_Y = np.zeros((4, 2, 1))

TBPTT_CASES = [
    Case("TBPTT.k1", "k1", not_positive_int(), lambda v: _tbptt(k1=v)),
    Case("TBPTT.k2", "k2", not_positive_int().filter(lambda v: v is not None) | st.just(1),
         lambda v: _tbptt(k1=2, k2=v)),
    Case("TBPTT.clip_norm", "clip_norm", not_nonnegative(inf=True, none=True) | st.just(0.0),
         lambda v: _tbptt(clip_norm=v)),
    Case("TBPTT.clip_value", "clip_value", not_nonnegative(inf=True, none=True),
         lambda v: _tbptt(clip_value=v)),
    Case("TBPTT.memory_budget", "memory_budget", not_budget(),
         lambda v: _tbptt(memory_budget=v)),
    Case("TBPTT.error_if_nonfinite", "error_if_nonfinite", not_flag(),
         lambda v: _tbptt(error_if_nonfinite=v)),
    Case("TBPTT.readout", "readout", st.integers(1, 8).filter(lambda n: n != 3),
         lambda v: bptt.TBPTT(bptt.RNN(2, 3), bptt.Linear(v, 1), k1=2)),
    Case("TBPTT.train(x)", "x", not_array(3) | st.just(np.zeros((4, 2, 3))),
         lambda v: _tbptt().train(v, _STREAM_Y)),
    Case("TBPTT.train(y)", "y", st.sampled_from([np.zeros((3, 2, 1)), np.zeros(4),
                                                 np.zeros((4, 2, 2)), [[1], [1, 2]], None]),
         lambda v: _tbptt().train(_STREAM_X, v)),
    Case("TBPTT.train(state)", "state",
         not_array(3) | st.sampled_from([np.zeros((1, 2, 3), dtype=np.complex128),
                                         np.zeros((1, 3, 3)), (np.zeros((1, 2, 3)),) * 2]),
         lambda v: _tbptt().train(_STREAM_X, _STREAM_Y, state=v)),
    Case("TBPTT.train(mask)", "mask",
         st.sampled_from([np.zeros((4, 3), bool), np.zeros((4, 2)), np.zeros((4, 2), complex),
                          "mask", [[1], [1, 2]]]),
         lambda v: _tbptt().train(_STREAM_X, _STREAM_Y, mask=v)),
    Case("TBPTT.train(resets)", "resets",
         st.sampled_from([np.zeros((4, 3), bool), np.zeros((4, 2)), np.zeros(4, bool)]),
         lambda v: _tbptt().train(_STREAM_X, _STREAM_Y, resets=v)),
    Case("TBPTT.train(keep_grads)", "keep_grads", not_flag(),
         lambda v: _tbptt().train(_STREAM_X, _STREAM_Y, keep_grads=v)),
]


@settings(max_examples=120, deadline=None)
@given(draw=st.data())
def test_bad_tbptt_arguments(draw: Any) -> None:
    check_cases(TBPTT_CASES, draw.draw)
    assert _tbptt().train(_STREAM_X, _STREAM_Y).losses.shape == (2,)


# ------------------------------------------------------------------ everything else
def _threads(v: Any) -> object:
    before = bptt.get_num_threads()
    try:
        return bptt.set_num_threads(v)
    finally:
        assert bptt.get_num_threads() == before


OTHER_CASES = [
    Case("set_num_threads", "n", not_positive_int() | st.integers(10**5, 2**200), _threads),
    Case("clip_grad_norm.max_norm", "max_norm", not_nonnegative(inf=True) | st.just(0.0),
         lambda v: bptt.clip_grad_norm({"w": np.ones(3)}, v)),
    Case("clip_grad_norm.error_if_nonfinite", "error_if_nonfinite", not_flag(),
         lambda v: bptt.clip_grad_norm({"w": np.ones(3)}, 1.0, error_if_nonfinite=v)),
    Case("clip_grad_value", "clip_value", not_nonnegative(inf=True),
         lambda v: bptt.clip_grad_value({"w": np.ones(3)}, v)),
    Case("adding_problem.batch_size", "batch_size", not_positive_int(),
         lambda v: data.adding_problem(v, 8)),
    Case("adding_problem.seq_len", "seq_len", not_positive_int() | st.just(1),
         lambda v: data.adding_problem(2, v)),
    Case("adding_problem.placement", "placement",
         st.text(max_size=8).filter(lambda s: s not in data.ADDING_PLACEMENTS) | NOT_NUMBERS,
         lambda v: data.adding_problem(2, 8, placement=v)),
    Case("adding_problem.seed", "seed", st.integers(max_value=-1) | st.floats(),
         lambda v: data.adding_problem(2, 8, seed=v)),
    Case("adding_problem.dtype", "dtype", st.sampled_from([None, np.int32, "float16", 3]),
         lambda v: data.adding_problem(2, 8, dtype=v)),
    Case("copy_task.batch_first", "batch_first", not_flag(),
         lambda v: data.copy_task(2, 3, batch_first=v)),
    Case("mse_loss.target", "target", st.sampled_from([np.zeros((2, 2)), np.zeros(3, int),
                                                       None, "t"]),
         lambda v: bptt.mse_loss(np.zeros((2, 3)), v)),
    Case("mse_loss.mask", "mask",
         st.sampled_from([[[1], [1, 2]], np.zeros(3), np.full(2, 0.5), "m", np.zeros((2, 4))]),
         lambda v: bptt.mse_loss(np.zeros((2, 3)), np.zeros((2, 3)), v)),
    Case("diagnostics.summarize.dh_norm", "dh_norm",
         st.sampled_from([[[1.0], [1.0, 2.0]], "x", np.ones((2, 2), complex),
                          np.zeros((2, 2, 2)), np.zeros((2, 0)), None]),
         lambda v: diagnostics.summarize(v)),
    Case("diagnostics.summarize.bidirectional", "bidirectional", not_flag(),
         lambda v: diagnostics.summarize(np.ones((2, 3)), v)),
    Case("cross_entropy_loss.labels", "labels",
         st.sampled_from([np.zeros(2), np.array([0, 5]), np.array([-1, 0]), np.zeros(3, int)]),
         lambda v: bptt.cross_entropy_loss(np.zeros((2, 4)), v)),
]


@settings(max_examples=120, deadline=None)
@given(draw=st.data())
def test_bad_arguments_elsewhere(draw: Any) -> None:
    check_cases(OTHER_CASES, draw.draw)
