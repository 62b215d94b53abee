"""Pickling: what a pickle of a model, a ``Linear`` readout or an optimizer holds, and the
checks made when one is loaded.

Each class's ``__getstate__`` / ``__setstate__`` delegate here, so ``pickle``, ``joblib``,
``copy.deepcopy``, ``multiprocessing`` and Dask all use the same path. A pickle holds a
plain dict, never a compiled object::

    {"format": 1, "bptt": "0.1.0", "class": "LSTM",
     "config": {"kind": "lstm", "input_size": 3, ..., "dtype": "float32"},
     "params": {"weight_ih_l0": ndarray, ...},          # models and Linear
     "extra": {...}}                                    # attributes a subclass added

an optimizer ``{"format", "bptt", "class", "hyperparams", "params", "state", "extra"}``
(``params`` the live arrays it updates, ``state`` its step counts and moments).

- ``format`` is ``FORMAT``; a pickle with a larger one (made by a newer bptt) is refused
  with a ``ValueError`` that says so, rather than read wrongly. A later bptt that changes
  the layout raises ``FORMAT`` and keeps reading the older ones.
- Loading checks every array: exactly the keys the configuration implies, each of the
  model's dtype (``TypeError``) and shape (``ValueError``), so a pickle whose weights do not
  match its configuration is an error, never silently reinterpreted.
- The parameter arrays are pickled as they are (not copied), so pickling a model together
  with its optimizer, ``pickle.dumps((model, opt))``, gives back an optimizer that updates
  the loaded model's arrays, as before (pickle and ``deepcopy`` keep shared objects
  shared). ``copy.copy`` is shallow: the copy shares the parameter arrays.
- A ``Tape`` refuses to be pickled (its ``__reduce__`` in the compiled module raises a
  ``TypeError`` saying why): it lives in one process's memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core

if TYPE_CHECKING:
    from ._models import _Recurrent
    from .nn import Linear
    from .optim import Optimizer

__all__ = ["FORMAT", "build_model", "model_config"]

FORMAT = 1
"""The layout version written into every pickle; the largest one this bptt reads."""

_MODEL_KEYS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
               "bidirectional")

# Attribute names the library's own constructors set, per base class: everything else in
# an instance's __dict__ was added by a subclass or the user and travels as "extra".
_BASE_ATTRS: dict[type, frozenset[str]] = {}


def _base_attrs(base: type, probe: Any) -> frozenset[str]:
    if base not in _BASE_ATTRS:
        _BASE_ATTRS[base] = frozenset(vars(probe()))
    return _BASE_ATTRS[base]


def _header(obj: object, kind: str) -> dict[str, Any]:
    return {"format": FORMAT, "bptt": _core.__version__, "class": type(obj).__name__,
            "kind": kind}


def _check_header(state: Any, what: str, want_kind: str | None) -> dict[str, Any]:
    """The pickled dict, after checking it is one and that this bptt can read its format."""
    if not isinstance(state, Mapping) or "format" not in state:
        raise TypeError(f"cannot load a {what}: expected the state of a bptt pickle (a dict "
                         f"with a 'format' key), got {type(state).__name__}")
    fmt = state["format"]
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
        raise ValueError(f"cannot load a {what}: unknown pickle format {fmt!r}")
    if fmt > FORMAT:
        made_by = state.get("bptt", "a newer version")
        raise ValueError(f"cannot load a {what}: the pickle has format {fmt}, written by bptt "
                         f"{made_by}; this bptt ({_core.__version__}) reads formats up to "
                         f"{FORMAT}. Upgrade bptt to load it.")
    if want_kind is not None and state.get("kind") != want_kind:
        raise ValueError(f"cannot load a {what}: the pickle holds a {state.get('kind')!r}, "
                         f"not a {want_kind!r}")
    return dict(state)


def _live_array(what: str, name: str, value: Any, dtype: np.dtype[Any],
                shape: tuple[int, ...]) -> np.ndarray:
    """``value`` checked to be an array of exactly ``dtype`` and ``shape``; returned as it
    is (so shared arrays stay shared) unless it is read-only or not C-contiguous."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"cannot load a {what}: {name}: expected an ndarray, got "
                        f"{type(value).__name__}")
    if value.dtype != dtype:
        raise TypeError(f"cannot load a {what}: {name}: expected dtype {dtype} (the "
                        f"configuration's), got {value.dtype}")
    if value.shape != shape:
        raise ValueError(f"cannot load a {what}: {name}: expected shape {shape}, got "
                         f"{value.shape}")
    return np.require(value, requirements=["C", "A", "W"])


def _check_keys(what: str, got: Any, want: list[str]) -> Mapping[str, Any]:
    if not isinstance(got, Mapping):
        raise TypeError(f"cannot load a {what}: params: expected a dict of arrays, got "
                         f"{type(got).__name__}")
    missing = [k for k in want if k not in got]
    unknown = sorted(str(k) for k in got if k not in want)
    if missing or unknown:
        raise ValueError(f"cannot load a {what}: params: missing keys {missing}, unknown "
                         f"keys {unknown}")
    return got


# --------------------------------------------------------------------------- models
def model_config(model: _Recurrent[Any]) -> dict[str, Any]:
    """The constructor arguments of ``model`` and its cell kind, as plain values."""
    cfg: dict[str, Any] = {k: getattr(model, k) for k in _MODEL_KEYS}
    cfg["dtype"] = model.dtype.name
    cfg["kind"] = model._cell
    if model.proj_size:
        cfg["proj_size"] = model.proj_size
    if model.dropout:
        cfg["dropout"] = model.dropout
    return cfg


def _recurrent_base(model: Any) -> tuple[type, Any]:
    from ._models import RNN, _Recurrent

    if isinstance(model, RNN):
        return RNN, lambda: RNN(1, 1)
    return _Recurrent, lambda: _Recurrent(1, 1)


def model_state(model: _Recurrent[Any]) -> dict[str, Any]:
    """What a pickle of ``model`` holds (``__getstate__``)."""
    base, probe = _recurrent_base(model)
    state = _header(model, model._cell)
    state["config"] = model_config(model)
    state["params"] = dict(model._params)
    state["extra"] = {k: v for k, v in vars(model).items()
                      if k not in _base_attrs(base, probe) and k != "proj_size"}
    # Where the stream of dropout seeds (forward calls without dropout_seed) stands, so
    # that a restored model continues it instead of starting over.
    state["dropout_rng"] = model._dropout_rng.bit_generator.state
    return state


def _construct(model: Any, cfg: Mapping[str, Any], what: str) -> None:
    """Runs the library constructor of ``model``'s base class with ``cfg``."""
    from ._models import RNN, _Recurrent

    try:
        args = [cfg[k] for k in ("input_size", "hidden_size", "num_layers")]
        kw = {k: cfg[k] for k in ("bias", "batch_first", "bidirectional", "dtype")}
        kw["dropout"] = cfg.get("dropout", 0.0)
        kind = cfg["kind"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"cannot load a {what}: config: expected the keys of "
                         f"{sorted(_MODEL_KEYS + ('dtype', 'kind'))}, got "
                         f"{sorted(cfg) if isinstance(cfg, Mapping) else cfg!r}") from exc
    if isinstance(model, RNN):
        if kind not in ("rnn_tanh", "rnn_relu"):
            raise ValueError(f"cannot load a {what}: the pickle holds a {kind!r} model")
        RNN.__init__(model, *args, nonlinearity=kind[4:], seed=0, **kw)
    else:
        if kind != model._cell:
            raise ValueError(f"cannot load a {what}: the pickle holds a {kind!r} model, not "
                             f"{model._cell!r}")
        model.proj_size = cfg.get("proj_size", 0)
        _Recurrent.__init__(model, *args, seed=0, **kw)


def _install(model: _Recurrent[Any], params: Any, what: str) -> None:
    """Makes the arrays in ``params`` (checked against the freshly constructed model's
    names and shapes) the model's live parameters."""
    shapes = {k: v.shape for k, v in model._params.items()}
    _check_keys(what, params, model._names)
    model._params = {name: _live_array(what, name, params[name], model.dtype, shapes[name])
                     for name in model._names}
    model._weights = [model._params[k] for k in model._names]


def restore_model(model: _Recurrent[Any], state: Any) -> None:
    """Rebuilds ``model`` (a bare instance) from a pickle's state (``__setstate__``)."""
    what = type(model).__name__
    st = _check_header(state, what, None)
    _construct(model, st.get("config", {}), what)
    _install(model, st.get("params"), what)
    vars(model).update(st.get("extra") or {})
    rng = st.get("dropout_rng")
    if rng is not None:  # absent from pickles of earlier versions
        try:
            model._dropout_rng.bit_generator.state = rng
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot load a {what}: dropout_rng: expected the state of "
                             f"a NumPy {type(model._dropout_rng.bit_generator).__name__} "
                             f"bit generator ({exc})") from exc


def build_model(config: Mapping[str, Any]) -> _Recurrent[Any]:
    """A new model of ``config`` (from ``model_config``), parameters initialised with seed 0."""
    from ._models import GRU, LSTM, RNN

    kind = config["kind"]
    kw = {k: config[k] for k in ("bias", "batch_first", "bidirectional", "dtype")}
    kw["dropout"] = config.get("dropout", 0.0)
    args = (config["input_size"], config["hidden_size"], config["num_layers"])
    if kind in ("rnn_tanh", "rnn_relu"):
        return RNN(*args, nonlinearity=kind[4:], seed=0, **kw)
    if kind == "lstm":
        return LSTM(*args, proj_size=config.get("proj_size", 0), seed=0, **kw)
    if kind == "gru":
        return GRU(*args, seed=0, **kw)
    raise ValueError(f"config: unknown cell kind {kind!r}")


# --------------------------------------------------------------------------- Linear
def linear_config(layer: Linear) -> dict[str, Any]:
    """The constructor arguments of a ``Linear`` layer as plain values."""
    return {"in_features": layer.in_features, "out_features": layer.out_features,
            "bias": layer.bias, "dtype": layer.dtype.name}


def linear_state(layer: Linear) -> dict[str, Any]:
    """What a pickle of a ``Linear`` layer holds (``__getstate__``)."""
    from .nn import Linear

    state = _header(layer, "linear")
    state["config"] = linear_config(layer)
    state["params"] = dict(layer._params)
    state["extra"] = {k: v for k, v in vars(layer).items()
                      if k not in _base_attrs(Linear, lambda: Linear(1, 1))}
    return state


def restore_linear(layer: Linear, state: Any) -> None:
    """Rebuilds a ``Linear`` layer (a bare instance) from a pickle's state."""
    from .nn import Linear

    what = type(layer).__name__
    st = _check_header(state, what, "linear")
    cfg = st.get("config", {})
    try:
        Linear.__init__(layer, cfg["in_features"], cfg["out_features"], bias=cfg["bias"],
                        dtype=cfg["dtype"], seed=0)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"cannot load a {what}: config: expected in_features, "
                         f"out_features, bias and dtype, got {cfg!r}") from exc
    names = list(layer._params)
    shapes = {k: v.shape for k, v in layer._params.items()}
    params = _check_keys(what, st.get("params"), names)
    layer._params = {k: _live_array(what, k, params[k], layer.dtype, shapes[k]) for k in names}
    vars(layer).update(st.get("extra") or {})


# --------------------------------------------------------------------------- optimizers
def optimizer_state(opt: Optimizer) -> dict[str, Any]:
    """What a pickle of an optimizer holds (``__getstate__``)."""
    state = _header(opt, "optimizer")
    state["hyperparams"] = opt.hyperparams()
    state["params"] = dict(opt.params)
    state["state"] = opt.state
    known = {"params", "state", *opt._hyper}
    state["extra"] = {k: v for k, v in vars(opt).items() if k not in known}
    return state


def restore_optimizer(opt: Optimizer, state: Any) -> None:
    """Rebuilds an optimizer (a bare instance) from a pickle's state (``__setstate__``)."""
    from .optim import Optimizer

    what = type(opt).__name__
    st = _check_header(state, what, "optimizer")
    params = st.get("params")
    if not isinstance(params, Mapping):
        raise TypeError(f"cannot load a {what}: params: expected a dict of arrays, got "
                         f"{type(params).__name__}")
    live = {}
    for name, p in params.items():
        if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
            raise TypeError(f"cannot load a {what}: params[{name!r}]: expected a "
                            f"floating-point ndarray, got {getattr(p, 'dtype', type(p))}")
        live[name] = _live_array(what, f"params[{name!r}]", p, p.dtype, p.shape)
    Optimizer.__init__(opt, live)
    per_param = st.get("state") or {}
    for name, entry in per_param.items():
        p = live.get(name)
        if p is None:
            raise ValueError(f"cannot load a {what}: state for unknown parameter {name!r}")
        for k, v in entry.items():
            if isinstance(v, np.ndarray) and v.dtype != p.dtype:
                raise TypeError(f"cannot load a {what}: state[{name!r}][{k!r}]: expected "
                                f"dtype {p.dtype} (the parameter's), got {v.dtype}")
    # Checks the type, the hyperparameter names and every buffer's shape; copies buffers.
    opt.load_state_dict({"type": st.get("class"), "hyperparams": st.get("hyperparams", {}),
                         "state": per_param})
    vars(opt).update(st.get("extra") or {})
