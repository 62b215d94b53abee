"""Optimizers over dicts of NumPy arrays, updating them in place: ``SGD``, ``RMSprop``,
``Adam``, ``AdamW``.

The update formulas are PyTorch's (``torch.optim``, default single-tensor path), step by
step, so a run here and there follows the same trajectory up to float rounding::

    opt = bptt.optim.Adam({**model.params, **{"readout." + k: v for k, v in ro.params.items()}},
                          lr=1e-3)
    opt.step(grads)      # grads: dict with (a subset of) the same keys and shapes

Parameters are the live arrays (``model.params``): ``step`` writes into them. A key missing
from ``grads`` is skipped for that step (PyTorch's ``grad is None``): its state does not
advance. Arithmetic runs in each parameter's dtype. ``lr`` and the other hyperparameters
are plain attributes, so a schedule can change them between steps.

``state_dict()`` returns copies of the hyperparameters and of every per-parameter buffer
(step count, moments); ``load_state_dict`` restores them into an optimizer built over the
same keys, so training resumes exactly where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _persist
from ._checks import check_shape, finite_nonnegative, floating, unit_interval

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "RMSprop"]


class Optimizer:
    """Base class: holds the parameter dict, per-parameter state and hyperparameters.

    Subclasses define ``_defaults`` (hyperparameter names) and ``_update(name, p, g, st)``
    which changes ``p`` in place. Not used directly.
    """

    _hyper: tuple[str, ...] = ()

    def __init__(self, params: Mapping[str, np.ndarray]) -> None:
        if not isinstance(params, Mapping):
            raise TypeError(f"params: expected a dict of arrays (name -> ndarray), got "
                            f"{type(params).__name__}")
        if not params:
            raise ValueError("params: expected at least one parameter, got an empty dict")
        self.params: dict[str, np.ndarray] = {}
        for name, p in params.items():
            if not isinstance(p, np.ndarray):
                raise TypeError(f"params[{name!r}]: expected an ndarray, got "
                                f"{type(p).__name__}")
            if p.dtype.kind != "f":
                raise TypeError(f"params[{name!r}]: expected a floating-point array, got "
                                f"dtype {p.dtype}")
            if not p.flags.writeable:
                raise ValueError(f"params[{name!r}]: the array is read-only; optimizers "
                                 f"update parameters in place")
            self.params[name] = p
        self.state: dict[str, dict[str, Any]] = {}

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
            self._update(name, self.params[name], g, st)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, st: dict[str, Any]) -> None:
        raise NotImplementedError

    def hyperparams(self) -> dict[str, Any]:
        """The current hyperparameters, by name."""
        return {k: getattr(self, k) for k in self._hyper}

    def state_dict(self) -> dict[str, Any]:
        """``{"type", "hyperparams", "state"}``: copies of everything ``step`` depends on."""
        state = {name: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                        for k, v in st.items()} for name, st in self.state.items()}
        return {"type": type(self).__name__, "hyperparams": self.hyperparams(), "state": state}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores a ``state_dict()`` of the same optimizer type over the same keys."""
        if not isinstance(state_dict, Mapping) or not {"type", "hyperparams",
                                                        "state"} <= set(state_dict):
            raise ValueError("state_dict: expected the dict returned by state_dict() "
                             "(keys 'type', 'hyperparams', 'state')")
        if state_dict["type"] != type(self).__name__:
            raise ValueError(f"state_dict: made by {state_dict['type']}, not "
                             f"{type(self).__name__}")
        hyper = dict(state_dict["hyperparams"])
        if set(hyper) != set(self._hyper):
            raise ValueError(f"state_dict: expected hyperparameters {sorted(self._hyper)}, "
                             f"got {sorted(hyper)}")
        new_state: dict[str, dict[str, Any]] = {}
        for name, st in state_dict["state"].items():
            if name not in self.params:
                raise ValueError(f"state_dict: unknown parameter {name!r}")
            p = self.params[name]
            entry: dict[str, Any] = {}
            for k, v in st.items():
                if isinstance(v, np.ndarray):
                    check_shape(f"state_dict: {name}.{k}", v, p.shape)
                    entry[k] = v.astype(p.dtype, copy=True)
                else:
                    entry[k] = v
            new_state[name] = entry
        for k, v in hyper.items():
            setattr(self, k, tuple(v) if isinstance(v, list) else v)
        self.state = new_state

    def __getstate__(self) -> dict[str, Any]:
        """Hyperparameters + parameters + per-parameter state + a format version."""
        return _persist.optimizer_state(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuilds the optimizer from ``__getstate__``'s dict (checked)."""
        _persist.restore_optimizer(self, state)

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams().items())
        return f"{type(self).__name__}({len(self.params)} arrays, {hp})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (heavy-ball or Nesterov) and
    L2 weight decay, as ``torch.optim.SGD``::

        g = grad + weight_decay * p
        if momentum:  buf = g (first step)  else  buf = momentum * buf + (1 - dampening) * g
                      g = g + momentum * buf  (nesterov)  else  g = buf
        p -= lr * g
    """

    _hyper = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, params: Mapping[str, np.ndarray], lr: float = 1e-3, *,
                 momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(params)
        self.lr = finite_nonnegative("lr", lr)
        self.momentum = finite_nonnegative("momentum", momentum)
        self.dampening = finite_nonnegative("dampening", dampening)
        self.weight_decay = finite_nonnegative("weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov: requires momentum > 0 and dampening = 0")

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, st: dict[str, Any]) -> None:
        if self.weight_decay:
            g = g + p.dtype.type(self.weight_decay) * p
        if self.momentum:
            mom = p.dtype.type(self.momentum)
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = g.copy()
            else:
                buf *= mom
                buf += p.dtype.type(1.0 - self.dampening) * g
            g = g + mom * buf if self.nesterov else buf
        p -= p.dtype.type(self.lr) * g


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

    def __init__(self, params: Mapping[str, np.ndarray], lr: float = 1e-2, *,
                 alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False) -> None:
        super().__init__(params)
        self.lr = finite_nonnegative("lr", lr)
        self.alpha = finite_nonnegative("alpha", alpha)
        self.eps = finite_nonnegative("eps", eps)
        self.weight_decay = finite_nonnegative("weight_decay", weight_decay)
        self.momentum = finite_nonnegative("momentum", momentum)
        self.centered = bool(centered)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, st: dict[str, Any]) -> None:
        f = p.dtype.type
        if self.weight_decay:
            g = g + f(self.weight_decay) * p
        if "square_avg" not in st:
            st["square_avg"] = np.zeros_like(p)
            if self.momentum > 0:
                st["momentum_buffer"] = np.zeros_like(p)
            if self.centered:
                st["grad_avg"] = np.zeros_like(p)
        v = st["square_avg"]
        v *= f(self.alpha)
        v += f(1.0 - self.alpha) * g * g
        if self.centered:
            m = st["grad_avg"]
            m += f(1.0 - self.alpha) * (g - m)
            avg = np.sqrt(v - m * m) + f(self.eps)
        else:
            avg = np.sqrt(v) + f(self.eps)
        if self.momentum > 0:
            buf = st["momentum_buffer"]
            buf *= f(self.momentum)
            buf += g / avg
            p -= f(self.lr) * buf
        else:
            p -= f(self.lr) * (g / avg)


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (L2 weight decay added to the gradient)::

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2            (amsgrad: vmax = max(vmax, v), use vmax)
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    with ``t`` the parameter's step count (starting at 1).
    """

    _hyper = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    _decoupled = False

    def __init__(self, params: Mapping[str, np.ndarray], lr: float = 1e-3, *,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        super().__init__(params)
        self.lr = finite_nonnegative("lr", lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        self.betas = (unit_interval("betas[0]", betas[0]), unit_interval("betas[1]", betas[1]))
        self.eps = finite_nonnegative("eps", eps)
        self.weight_decay = finite_nonnegative("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, st: dict[str, Any]) -> None:
        f = p.dtype.type
        b1, b2 = self.betas
        if self.weight_decay:
            if self._decoupled:
                p *= f(1.0 - self.lr * self.weight_decay)
            else:
                g = g + f(self.weight_decay) * p
        if "exp_avg" not in st:
            st["exp_avg"] = np.zeros_like(p)
            st["exp_avg_sq"] = np.zeros_like(p)
            if self.amsgrad:
                st["max_exp_avg_sq"] = np.zeros_like(p)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m += f(1.0 - b1) * (g - m)
        v *= f(b2)
        v += f(1.0 - b2) * g * g
        t = st["step"]
        step_size = self.lr / (1.0 - b1 ** t)
        bc2_sqrt = math.sqrt(1.0 - b2 ** t)
        if self.amsgrad:
            vmax = st["max_exp_avg_sq"]
            np.maximum(vmax, v, out=vmax)
            denom = np.sqrt(vmax) / f(bc2_sqrt) + f(self.eps)
        else:
            denom = np.sqrt(v) / f(bc2_sqrt) + f(self.eps)
        p -= f(step_size) * (m / denom)


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
