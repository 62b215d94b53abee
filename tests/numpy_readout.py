"""Plain-NumPy references for what the Rust core computes on top of the recurrent stack:
the linear readout, the losses, the embedding gradient and the optimizers' update steps.

These were bptt's implementations before the core took them over; they stay here as the
independent reference the tests compare the core with (float64 arithmetic for the losses,
the parameter's dtype for the optimizers, as before).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def linear_forward(x, w, b):
    y = x @ w.T
    if b is not None:
        y = y + b
    return y


def linear_backward(x, w, d_y, bias):
    dx = d_y @ w
    d2 = d_y.reshape(-1, w.shape[0])
    dw = d2.T @ x.reshape(-1, w.shape[1])
    return dx, dw, (d2.sum(axis=0) if bias else None)


def embedding_backward(ids, d_out, num_embeddings, padding_idx=None):
    g = np.zeros((num_embeddings, d_out.shape[-1]), dtype=d_out.dtype)
    np.add.at(g, ids.ravel(), d_out.reshape(-1, d_out.shape[-1]))
    if padding_idx is not None:
        g[padding_idx] = 0
    return g


def mse_loss(p, t, mask=None):
    if mask is None:
        n = p.size
        diff = p.astype(np.float64) - t
    else:
        sel = np.asarray(mask, dtype=np.float64)
        sel = sel.reshape(sel.shape + (1,) * (p.ndim - sel.ndim))
        n = round(float(sel.sum())) * int(np.prod(p.shape[mask.ndim:], dtype=np.int64))
        diff = np.where(sel > 0, p.astype(np.float64) - t, 0.0)
    if n == 0:
        return 0.0, np.zeros_like(p)
    return float(np.sum(diff * diff) / n), (diff * (2.0 / n)).astype(p.dtype)


def cross_entropy_loss(z, lab, mask=None):
    sel = None if mask is None else np.asarray(mask, dtype=bool)
    n = lab.size if sel is None else int(sel.sum())
    if n == 0:
        return 0.0, np.zeros_like(z)
    lab = np.where((lab < 0) | (lab >= z.shape[-1]), 0, lab).astype(np.intp)
    z64 = z.astype(np.float64)
    shifted = z64 - z64.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(logp, lab[..., None], axis=-1)[..., 0]
    if sel is not None:
        picked = np.where(sel, picked, 0.0)
    loss = float(-picked.sum() / n)
    grad = np.exp(logp)
    np.put_along_axis(grad, lab[..., None],
                      np.take_along_axis(grad, lab[..., None], axis=-1) - 1.0, axis=-1)
    grad /= n
    if sel is not None:
        grad *= sel[..., None]
    return loss, grad.astype(z.dtype)


def _buf(st: dict[str, Any], key: str, p: np.ndarray) -> np.ndarray:
    if st.get(key) is None:
        st[key] = np.zeros_like(p)
    return st[key]


def sgd_update(hp, p, g, st):
    if hp["weight_decay"]:
        g = g + p.dtype.type(hp["weight_decay"]) * p
    if hp["momentum"]:
        mom = p.dtype.type(hp["momentum"])
        buf = st.get("momentum_buffer")
        if buf is None:
            buf = st["momentum_buffer"] = g.copy()
        else:
            buf *= mom
            buf += p.dtype.type(1.0 - hp["dampening"]) * g
        g = g + mom * buf if hp["nesterov"] else buf
    p -= p.dtype.type(hp["lr"]) * g


def rmsprop_update(hp, p, g, st):
    f = p.dtype.type
    if hp["weight_decay"]:
        g = g + f(hp["weight_decay"]) * p
    v = _buf(st, "square_avg", p)
    v *= f(hp["alpha"])
    v += f(1.0 - hp["alpha"]) * g * g
    if hp["centered"]:
        m = _buf(st, "grad_avg", p)
        m += f(1.0 - hp["alpha"]) * (g - m)
        avg = np.sqrt(v - m * m) + f(hp["eps"])
    else:
        avg = np.sqrt(v) + f(hp["eps"])
    if hp["momentum"] > 0:
        buf = _buf(st, "momentum_buffer", p)
        buf *= f(hp["momentum"])
        buf += g / avg
        p -= f(hp["lr"]) * buf
    else:
        p -= f(hp["lr"]) * (g / avg)


def adam_update(hp, p, g, st, decoupled=False):
    f = p.dtype.type
    b1, b2 = hp["betas"]
    if hp["weight_decay"]:
        if decoupled:
            p *= f(1.0 - hp["lr"] * hp["weight_decay"])
        else:
            g = g + f(hp["weight_decay"]) * p
    m, v = _buf(st, "exp_avg", p), _buf(st, "exp_avg_sq", p)
    m += f(1.0 - b1) * (g - m)
    v *= f(b2)
    v += f(1.0 - b2) * g * g
    t = st["step"]
    step_size = hp["lr"] / (1.0 - b1 ** t)
    bc2_sqrt = math.sqrt(1.0 - b2 ** t)
    if hp["amsgrad"]:
        vmax = _buf(st, "max_exp_avg_sq", p)
        np.maximum(vmax, v, out=vmax)
        denom = np.sqrt(vmax) / f(bc2_sqrt) + f(hp["eps"])
    else:
        denom = np.sqrt(v) / f(bc2_sqrt) + f(hp["eps"])
    p -= f(step_size) * (m / denom)


def reference_step(opt, params, grads, states):
    """One step of the NumPy reference of ``opt``'s type and hyperparameters over
    ``params`` (updated in place) with per-parameter ``states`` (dicts, updated)."""
    hp = opt.hyperparams()
    kind = type(opt).__name__
    for name, g in grads.items():
        st = states.setdefault(name, {"step": 0})
        st["step"] += 1
        p = params[name]
        g = np.asarray(g).astype(p.dtype, copy=False)
        if kind == "SGD":
            sgd_update(hp, p, g, st)
        elif kind == "RMSprop":
            rmsprop_update(hp, p, g, st)
        else:
            adam_update(hp, p, g, st, decoupled=(kind == "AdamW"))
