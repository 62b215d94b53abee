"""Optimizers over dicts of NumPy arrays, updating them in place: ``SGD``, ``RMSprop``,
``Adam``, ``AdamW``. The update arithmetic runs in the Rust core (GIL released, large
parameters split over bptt's thread pool); Python keeps the state and the checks.

The update formulas are PyTorch's (``torch.optim``, default single-tensor path), step by
step, so a run here and there follows the same trajectory up to float rounding::

    opt = bptt.optim.Adam({**model.params, **{"readout." + k: v for k, v in ro.params.items()}},
                          lr=1e-3)
    opt.step(grads)      # grads: dict with (a subset of) the same keys and shapes

Parameters are the live arrays (``model.params``): ``step`` writes into them. A key missing
from ``grads`` is skipped for that step (PyTorch's ``grad is None``): its state does not
advance. Arithmetic runs in each parameter's dtype: float32 or float64 (float16
parameters are a ``TypeError``: their updates would lose small steps, and ``eps`` rounds
to 0). ``lr`` and the other hyperparameters are attributes, so a schedule can change them
between steps; every value is checked where it is given (constructor, assignment,
``load_state_dict``) by one validator per optimizer, with a ``ValueError``/``TypeError``
naming the hyperparameter.

``state_dict()`` returns copies of the hyperparameters and of every per-parameter buffer
(step count, moments); ``load_state_dict`` restores them into an optimizer built over the
same keys, so training resumes exactly where it stopped.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _core, _persist
from ._checks import check_shape, finite_nonnegative, flag, floating, unit_interval

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "RMSprop"]


class Optimizer:
    """Base class: holds the parameter dict, per-parameter state and hyperparameters.

    Subclasses define ``_hyper`` (hyperparameter names), ``_check_hyper`` (validates a
    complete set), ``_buffers`` / ``_primary`` (the per-parameter buffers a state may hold
    / must hold once a parameter has stepped) and ``_update(name, p, g, st)``, which
    changes ``p`` in place. Not used directly.

    ``_check_hyper`` is the one validator of the hyperparameters: the constructor, an
    assignment such as ``opt.lr = 1e-4`` and ``load_state_dict`` all go through it, so a
    bad value (``lr=-1``, ``lr=nan``, ``lr="fast"``, ``betas=(2.0, -1.0)``) is refused
    where it is given, with the same message, and the optimizer is left unchanged.
    """

    _hyper: tuple[str, ...] = ()
    _buffers: tuple[str, ...] = ()
    _primary: tuple[str, ...] = ()

    def __init__(self, params: Mapping[str, np.ndarray]) -> None:
        if not isinstance(params, Mapping):
            raise TypeError(f"params: expected a dict of arrays (name -> ndarray), got "
                            f"{type(params).__name__}")
        if not params:
            raise ValueError("params: expected at least one parameter, got an empty dict")
        self.params: dict[str, np.ndarray] = {}
        seen: dict[int, str] = {}
        for name, p in params.items():
            if not isinstance(p, np.ndarray):
                raise TypeError(f"params[{name!r}]: expected an ndarray, got "
                                f"{type(p).__name__}")
            if p.dtype.kind != "f":
                raise TypeError(f"params[{name!r}]: expected a floating-point array, got "
                                f"dtype {p.dtype}")
            if p.dtype.itemsize < 4:
                # eps (1e-8) rounds to 0 in float16, so a zero gradient gives 0/0, and
                # updates smaller than float16's spacing are lost.
                raise TypeError(f"params[{name!r}]: expected a float32 or float64 array, got "
                                f"dtype {p.dtype} (optimizer arithmetic in {p.dtype} loses "
                                f"small updates; keep float32 parameters and cast copies)")
            if not p.flags.writeable:
                raise ValueError(f"params[{name!r}]: the array is read-only; optimizers "
                                 f"update parameters in place")
            if id(p) in seen:
                raise ValueError(f"params[{name!r}]: the same array as params[{seen[id(p)]!r}]; "
                                 f"each parameter must appear once")
            seen[id(p)] = name
            self.params[name] = p
        self.state: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ hyperparameters
    def _check_hyper(self, hp: dict[str, Any]) -> dict[str, Any]:
        """Validates a complete set of hyperparameters; returns it normalised (floats,
        bools, tuples). Raises ``TypeError``/``ValueError`` naming the hyperparameter."""
        raise NotImplementedError

    def _set_hyper(self, hp: Mapping[str, Any]) -> None:
        """Validates ``hp`` (exactly the names in ``_hyper``) and sets it; on an error
        nothing changes."""
        checked = self._check_hyper(dict(hp))
        for k, v in checked.items():
            object.__setattr__(self, k, v)

    def __setattr__(self, name: str, value: Any) -> None:
        # A schedule assigns hyperparameters between steps (opt.lr = ...): the same
        # validator as the constructor's, on the whole set with the new value in it.
        if name in self._hyper and name in self.__dict__:
            self._set_hyper({**self.hyperparams(), name: value})
        else:
            object.__setattr__(self, name, value)

    def _eps(self, value: object) -> float:
        """``eps``: a finite number >= 0; when not 0, one that every parameter's dtype can
        hold (an eps that silently rounds to 0 turns a zero gradient into 0/0 = NaN)."""
        eps = finite_nonnegative("eps", value)
        for p in self.params.values():
            if eps > 0 and not p.dtype.type(eps) > 0:
                raise ValueError(f"eps: expected 0 or a number that {p.dtype} can hold "
                                 f"(at least {np.finfo(p.dtype).smallest_subnormal}), got "
                                 f"{value}")
        return eps

    # ------------------------------------------------------------------ stepping
    def _grad(self, name: str, g: Any) -> np.ndarray:
        if name not in self.params:
            raise ValueError(f"grads: unknown key {name!r}; the optimizer holds "
                             f"{sorted(self.params)}")
        p = self.params[name]
        arr = floating(f"grads[{name!r}]", g)
        check_shape(f"grads[{name!r}]", arr, p.shape)
        return arr.astype(p.dtype, copy=False)

    def step(self, grads: Mapping[str, Any]) -> None:
        """One update of every parameter whose key is in ``grads`` (in place).

        ``grads`` maps parameter names to gradient arrays of the same shapes (any floating
        dtype; converted to the parameter's). The arrays in ``grads`` are not modified.
        """
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads: expected a dict of arrays, got {type(grads).__name__}")
        checked = [(name, self._grad(name, g)) for name, g in grads.items()]
        for name, g in checked:
            st = self.state.setdefault(name, {"step": 0})
            st["step"] += 1
            p = self.params[name]
            if p.flags.c_contiguous:
                self._update(name, p, np.ascontiguousarray(g), st)
            else:
                # The core updates C-contiguous arrays; a strided view is updated through
                # a contiguous copy.
                q = np.ascontiguousarray(p)
                self._update(name, q, np.ascontiguousarray(g), st)
                p[...] = q

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, st: dict[str, Any]) -> None:
        raise NotImplementedError

    @staticmethod
    def _buffer(st: dict[str, Any], key: str, p: np.ndarray) -> np.ndarray:
        """The buffer ``st[key]``, made (zeros) the first time it is needed: on the first
        step, or when a hyperparameter that needs it is switched on later."""
        buf = st.get(key)
        if buf is None:
            buf = st[key] = np.zeros(p.shape, dtype=p.dtype)
        elif not buf.flags.c_contiguous:
            buf = st[key] = np.ascontiguousarray(buf)
        return buf

    # ------------------------------------------------------------------ state
    def hyperparams(self) -> dict[str, Any]:
        """The current hyperparameters, by name."""
        return {k: getattr(self, k) for k in self._hyper}

    def state_dict(self) -> dict[str, Any]:
        """``{"type", "hyperparams", "state"}``: copies of everything ``step`` depends on."""
        state = {name: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                        for k, v in st.items()} for name, st in self.state.items()}
        return {"type": type(self).__name__, "hyperparams": self.hyperparams(), "state": state}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores a ``state_dict()`` of the same optimizer type over the same keys.

        Everything is checked before anything changes: the hyperparameters by the same
        validator as the constructor's, and for every parameter its ``step`` (an int >= 0)
        and buffers (known names, floating arrays of the parameter's shape)."""
        what = "the dict returned by an optimizer's state_dict() (keys 'type', " \
               "'hyperparams', 'state')"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: expected {what}, got {type(state_dict).__name__}")
        missing = [k for k in ("type", "hyperparams", "state") if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict: expected {what}, missing {missing}")
        if state_dict["type"] != type(self).__name__:
            raise ValueError(f"state_dict: made by {state_dict['type']}, not "
                             f"{type(self).__name__}")
        hyper = state_dict["hyperparams"]
        if not isinstance(hyper, Mapping):
            raise TypeError(f"state_dict['hyperparams']: expected a dict, got "
                            f"{type(hyper).__name__}")
        if set(hyper) != set(self._hyper):
            raise ValueError(f"state_dict['hyperparams']: expected the keys "
                             f"{sorted(self._hyper)}, got {sorted(map(str, hyper))}")
        try:
            checked = self._check_hyper(dict(hyper))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"state_dict['hyperparams']: {exc}") from exc
        states = state_dict["state"]
        if not isinstance(states, Mapping):
            raise TypeError(f"state_dict['state']: expected a dict (parameter name -> dict), "
                            f"got {type(states).__name__}")
        new_state = {name: self._load_entry(name, st) for name, st in states.items()}
        self._set_hyper(checked)
        self.state = new_state

    def _load_entry(self, name: Any, st: Any) -> dict[str, Any]:
        where = f"state_dict['state'][{name!r}]"
        if name not in self.params:
            raise ValueError(f"{where}: unknown parameter; the optimizer holds "
                             f"{sorted(self.params)}")
        if not isinstance(st, Mapping):
            raise TypeError(f"{where}: expected a dict with 'step' and buffers, got "
                            f"{type(st).__name__}")
        if "step" not in st:
            raise ValueError(f"{where}: missing 'step' (the number of steps taken)")
        if isinstance(st["step"], bool) or not isinstance(st["step"], numbers.Integral):
            raise TypeError(f"{where}['step']: expected an int >= 0, got "
                            f"{type(st['step']).__name__}")
        step = int(st["step"])
        if step < 0:
            raise ValueError(f"{where}['step']: expected an int >= 0, got {step}")
        unknown = sorted(str(k) for k in st if k != "step" and k not in self._buffers)
        if unknown:
            raise ValueError(f"{where}: unknown buffers {unknown}; {type(self).__name__} "
                             f"keeps {list(self._buffers)}")
        absent = [k for k in self._primary if k not in st]
        if step > 0 and absent:
            raise ValueError(f"{where}: missing buffers {absent} after {step} step(s)")
        p = self.params[name]
        entry: dict[str, Any] = {"step": step}
        for k in self._buffers:
            if k in st:
                arr = floating(f"{where}[{k!r}]", st[k])
                check_shape(f"{where}[{k!r}]", arr, p.shape)
                entry[k] = arr.astype(p.dtype, copy=True)
        return entry

    def __getstate__(self) -> dict[str, Any]:
        """Hyperparameters + parameters + per-parameter state + a format version."""
        return _persist.optimizer_state(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuilds the optimizer from ``__getstate__``'s dict (checked)."""
        _persist.restore_optimizer(self, state)

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams().items())
        return f"{type(self).__name__}({len(self.params)} arrays, {hp})"


def _pair(name: str, value: object) -> tuple[object, object]:
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name}: expected a pair (beta1, beta2), got {type(value).__name__}")
    if len(value) != 2:
        raise ValueError(f"{name}: expected a pair (beta1, beta2), got {len(value)} item(s)")
    return value[0], value[1]


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (heavy-ball or Nesterov) and
    L2 weight decay, as ``torch.optim.SGD``::

        g = grad + weight_decay * p
        if momentum:  buf = g (first step)  else  buf = momentum * buf + (1 - dampening) * g
                      g = g + momentum * buf  (nesterov)  else  g = buf
        p -= lr * g
    """

    _hyper = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    _buffers = ("momentum_buffer",)
    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool

    def __init__(self, params: Mapping[str, np.ndarray], lr: float = 1e-3, *,
                 momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(params)
        self._set_hyper({"lr": lr, "momentum": momentum, "dampening": dampening,
                         "weight_decay": weight_decay, "nesterov": nesterov})

    def _check_hyper(self, hp: dict[str, Any]) -> dict[str, Any]:
        out = {"lr": finite_nonnegative("lr", hp["lr"]),
               "momentum": finite_nonnegative("momentum", hp["momentum"]),
               "dampening": unit_interval("dampening", hp["dampening"], closed=True),
               "weight_decay": finite_nonnegative("weight_decay", hp["weight_decay"]),
               "nesterov": flag("nesterov", hp["nesterov"])}
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError(f"nesterov: requires momentum > 0 and dampening = 0, got "
                             f"momentum={out['momentum']}, dampening={out['dampening']}")
        return out

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, st: dict[str, Any]) -> None:
        buf = None
        first = False
        if self.momentum:
            first = st.get("momentum_buffer") is None
            buf = self._buffer(st, "momentum_buffer", p)
        _core.sgd_step(p, g, buf, first, self.lr, self.momentum, self.dampening,
                       self.weight_decay, self.nesterov)


class RMSprop(Optimizer):
    """RMSprop as ``torch.optim.RMSprop``::

        g = grad + weight_decay * p
        v = alpha * v + (1 - alpha) * g**2
        centered: m = alpha * m + (1 - alpha) * g;  avg = sqrt(v - m**2) + eps
        else:     avg = sqrt(v) + eps
        momentum: buf = momentum * buf + g / avg;  p -= lr * buf
        else:     p -= lr * g / avg
    """

    _hyper = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
    _buffers = ("square_avg", "momentum_buffer", "grad_avg")
    _primary = ("square_avg",)
    lr: float
    alpha: float
    eps: float
    weight_decay: float
    momentum: float
    centered: bool

    def __init__(self, params: Mapping[str, np.ndarray], lr: float = 1e-2, *,
                 alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False) -> None:
        super().__init__(params)
        self._set_hyper({"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay,
                         "momentum": momentum, "centered": centered})

    def _check_hyper(self, hp: dict[str, Any]) -> dict[str, Any]:
        return {"lr": finite_nonnegative("lr", hp["lr"]),
                "alpha": unit_interval("alpha", hp["alpha"]),
                "eps": self._eps(hp["eps"]),
                "weight_decay": finite_nonnegative("weight_decay", hp["weight_decay"]),
                "momentum": finite_nonnegative("momentum", hp["momentum"]),
                "centered": flag("centered", hp["centered"])}

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, st: dict[str, Any]) -> None:
        v = self._buffer(st, "square_avg", p)
        m = self._buffer(st, "grad_avg", p) if self.centered else None
        buf = self._buffer(st, "momentum_buffer", p) if self.momentum > 0 else None
        _core.rmsprop_step(p, g, v, m, buf, self.lr, self.alpha, self.eps, self.weight_decay,
                           self.momentum, self.centered)


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (L2 weight decay added to the gradient)::

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2            (amsgrad: vmax = max(vmax, v), use vmax)
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    with ``t`` the parameter's step count (starting at 1).
    """

    _hyper = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    _buffers = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _primary = ("exp_avg", "exp_avg_sq")
    _decoupled = False
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    amsgrad: bool

    def __init__(self, params: Mapping[str, np.ndarray], lr: float = 1e-3, *,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        super().__init__(params)
        self._set_hyper({"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                         "amsgrad": amsgrad})

    def _check_hyper(self, hp: dict[str, Any]) -> dict[str, Any]:
        b1, b2 = _pair("betas", hp["betas"])
        return {"lr": finite_nonnegative("lr", hp["lr"]),
                "betas": (unit_interval("betas[0]", b1), unit_interval("betas[1]", b2)),
                "eps": self._eps(hp["eps"]),
                "weight_decay": finite_nonnegative("weight_decay", hp["weight_decay"]),
                "amsgrad": flag("amsgrad", hp["amsgrad"])}

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, st: dict[str, Any]) -> None:
        m, v = self._buffer(st, "exp_avg", p), self._buffer(st, "exp_avg_sq", p)
        vmax = self._buffer(st, "max_exp_avg_sq", p) if self.amsgrad else None
        b1, b2 = self.betas
        _core.adam_step(p, g, m, v, vmax, self.lr, b1, b2, self.eps, self.weight_decay,
                        self._decoupled, self.amsgrad, st["step"])


class AdamW(Adam):
    """AdamW as ``torch.optim.AdamW``: Adam with decoupled weight decay, applied first::

        p *= 1 - lr * weight_decay
        (then Adam's update without weight decay in the gradient)

    Same arguments as ``Adam``; ``weight_decay`` defaults to 0.01 as in PyTorch.
    """

    _decoupled = True

    def __init__(self, params: Mapping[str, np.ndarray], lr: float = 1e-3, *,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False) -> None:
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)
