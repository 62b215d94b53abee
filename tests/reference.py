"""Plain-NumPy reference for RNN / LSTM / GRU forward and backpropagation through time.

This module is the test oracle for the ``bptt`` package.  It is written
straight from the equations, one time step at a time, in float64, with no
attempt at speed and no code shared with the package.  Semantics follow
PyTorch's ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` exactly.

Cells (per time step; x: (B, I), h and c: (B, H); weights in PyTorch layout)
----------------------------------------------------------------------------
RNN  (kind "rnn_tanh" / "rnn_relu"; W_ih (H, I), W_hh (H, H), biases (H,))::

    h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh),   act = tanh or relu

LSTM (kind "lstm"; W_ih (4H, I), W_hh (4H, H), biases (4H,))::

    [a_i, a_f, a_g, a_o] = x W_ih^T + b_ih + h W_hh^T + b_hh
    i = sigmoid(a_i)   f = sigmoid(a_f)   g = tanh(a_g)   o = sigmoid(a_o)
    c' = f * c + i * g
    h' = o * tanh(c')

GRU  (kind "gru"; W_ih (3H, I), W_hh (3H, H), biases (3H,))::

    [gi_r, gi_z, gi_n] = x W_ih^T + b_ih
    [gh_r, gh_z, gh_n] = h W_hh^T + b_hh
    r  = sigmoid(gi_r + gh_r)
    z  = sigmoid(gi_z + gh_z)
    n  = tanh(gi_n + r * gh_n)          # b_hn sits inside the reset product
    h' = (1 - z) * n + z * h

Layers and directions
---------------------
Layer 0 reads x; layer l > 0 reads the output of layer l-1.  Direction 0
("forward") processes t = 0 .. T-1, direction 1 ("reverse", parameter keys
with suffix ``_reverse``) processes t = T-1 .. 0.  The output of a direction
at time t is its hidden state after processing time t; the output of a layer
is concat(forward_out, reverse_out) along the feature axis.  State index of
layer l, direction d is ``l * D + d`` (D = 2 if bidirectional else 1).

Variable lengths
----------------
mask[t, b] = (t < lengths[b]).  At every step of every layer/direction::

    state_t = cell(x_t, state_prev)   where mask[t, b]
    state_t = state_prev              otherwise (carried unchanged)
    out_t   = h_t                     where mask[t, b], else exactly 0

so the forward direction stops at b's last step and the reverse direction
carries its initial state through the padding and starts at lengths[b]-1.

Backward (manual BPTT)
----------------------
For each layer/direction, walking the steps in the opposite order of the
forward pass, with ``carried`` initialised to d_state::

    dh_t    = carried_h + mask[t] * d_out_t        (dh_norm[l*D+d, t] = ||dh_t||_F)
    rows with mask: back through the cell (chain rule, see *_cell_backward)
    rows without mask: the gradient is passed on unchanged (state was carried)

The gradient w.r.t. a layer's input becomes the d_out of the layer below
(split per direction along the feature axis).

Public interface: :func:`init_params`, :func:`forward`, :func:`backward`.
"""

from __future__ import annotations

import numpy as np

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
_NUM_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
_WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_LOCAL_NAMES = {
    "weight_ih": "W_ih",
    "weight_hh": "W_hh",
    "bias_ih": "b_ih",
    "bias_hh": "b_hh",
}


# ----------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------


def _sigmoid(a):
    # Exact identity sigmoid(a) = (1 + tanh(a / 2)) / 2; never overflows.
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _param_key(name, layer, direction):
    suffix = "_reverse" if direction == 1 else ""
    return f"{name}_l{layer}{suffix}"


def _param_names(bias):
    return _WEIGHT_NAMES if bias else _WEIGHT_NAMES[:2]


def _affine(x, weight, bias):
    """x @ weight^T (+ bias)."""
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y


def _linear_backward(d_gi, d_gh, x, h, w):
    """Backward of gi = x W_ih^T + b_ih and gh = h W_hh^T + b_hh.

    Returns (dx, dh, dw) where dw holds W_ih, W_hh, b_ih, b_hh gradients.
    """
    dw = {
        "W_ih": d_gi.T @ x,
        "W_hh": d_gh.T @ h,
        "b_ih": d_gi.sum(axis=0),
        "b_hh": d_gh.sum(axis=0),
    }
    dx = d_gi @ w["W_ih"]
    dh = d_gh @ w["W_hh"]
    return dx, dh, dw


# ----------------------------------------------------------------------------
# Cell steps.  A state is a tuple: (h,) for RNN/GRU and (h, c) for LSTM.
# Each *_cell_forward returns (new_state, step_cache); each *_cell_backward
# takes the gradient w.r.t. new_state and returns (dx, d_prev_state, dw).
# ----------------------------------------------------------------------------


def rnn_cell_forward(x, state, w, nonlinearity):
    (h,) = state
    a = _affine(x, w["W_ih"], w["b_ih"]) + _affine(h, w["W_hh"], w["b_hh"])
    if nonlinearity == "tanh":
        h_new = np.tanh(a)
    else:
        h_new = np.maximum(a, 0.0)
    cache = {"x": x, "h": h, "a": a, "h_new": h_new, "nonlinearity": nonlinearity}
    return (h_new,), cache


def rnn_cell_backward(d_new_state, cache, w):
    (dh_new,) = d_new_state
    if cache["nonlinearity"] == "tanh":
        da = dh_new * (1.0 - cache["h_new"] ** 2)
    else:
        da = dh_new * (cache["a"] > 0.0)
    dx, dh, dw = _linear_backward(da, da, cache["x"], cache["h"], w)
    return dx, (dh,), dw


def lstm_cell_forward(x, state, w):
    h, c = state
    H = h.shape[1]
    gates = _affine(x, w["W_ih"], w["b_ih"]) + _affine(h, w["W_hh"], w["b_hh"])
    i = _sigmoid(gates[:, 0 * H : 1 * H])
    f = _sigmoid(gates[:, 1 * H : 2 * H])
    g = np.tanh(gates[:, 2 * H : 3 * H])
    o = _sigmoid(gates[:, 3 * H : 4 * H])
    c_new = f * c + i * g
    tanh_c_new = np.tanh(c_new)
    h_new = o * tanh_c_new
    cache = {
        "x": x,
        "h": h,
        "c": c,
        "i": i,
        "f": f,
        "g": g,
        "o": o,
        "tanh_c_new": tanh_c_new,
    }
    return (h_new, c_new), cache


def lstm_cell_backward(d_new_state, cache, w):
    dh_new, dc_new = d_new_state
    i, f, g, o = cache["i"], cache["f"], cache["g"], cache["o"]
    tanh_c_new = cache["tanh_c_new"]

    # h' = o * tanh(c')
    do = dh_new * tanh_c_new
    dc = dc_new + dh_new * o * (1.0 - tanh_c_new**2)  # total dL/dc'
    # c' = f * c + i * g
    di = dc * g
    df = dc * cache["c"]
    dg = dc * i
    dc_prev = dc * f
    # through the gate nonlinearities to the pre-activations
    da_i = di * i * (1.0 - i)
    da_f = df * f * (1.0 - f)
    da_g = dg * (1.0 - g**2)
    da_o = do * o * (1.0 - o)
    d_gates = np.concatenate([da_i, da_f, da_g, da_o], axis=1)

    dx, dh_prev, dw = _linear_backward(d_gates, d_gates, cache["x"], cache["h"], w)
    return dx, (dh_prev, dc_prev), dw


def gru_cell_forward(x, state, w):
    (h,) = state
    H = h.shape[1]
    gi = _affine(x, w["W_ih"], w["b_ih"])
    gh = _affine(h, w["W_hh"], w["b_hh"])
    gi_r, gi_z, gi_n = gi[:, 0:H], gi[:, H : 2 * H], gi[:, 2 * H : 3 * H]
    gh_r, gh_z, gh_n = gh[:, 0:H], gh[:, H : 2 * H], gh[:, 2 * H : 3 * H]
    r = _sigmoid(gi_r + gh_r)
    z = _sigmoid(gi_z + gh_z)
    n = np.tanh(gi_n + r * gh_n)
    h_new = (1.0 - z) * n + z * h
    cache = {"x": x, "h": h, "r": r, "z": z, "n": n, "gh_n": gh_n}
    return (h_new,), cache


def gru_cell_backward(d_new_state, cache, w):
    (dh_new,) = d_new_state
    h, r, z, n, gh_n = cache["h"], cache["r"], cache["z"], cache["n"], cache["gh_n"]

    # h' = (1 - z) * n + z * h
    dn = dh_new * (1.0 - z)
    dz = dh_new * (h - n)
    dh_direct = dh_new * z
    # n = tanh(gi_n + r * gh_n)
    da_n = dn * (1.0 - n**2)
    dr = da_n * gh_n
    d_gh_n = da_n * r
    # r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z)
    da_r = dr * r * (1.0 - r)
    da_z = dz * z * (1.0 - z)

    d_gi = np.concatenate([da_r, da_z, da_n], axis=1)
    d_gh = np.concatenate([da_r, da_z, d_gh_n], axis=1)
    dx, dh_through_gates, dw = _linear_backward(d_gi, d_gh, cache["x"], h, w)
    return dx, (dh_direct + dh_through_gates,), dw


def _cell_forward(kind, x, state, w):
    if kind == "rnn_tanh":
        return rnn_cell_forward(x, state, w, "tanh")
    if kind == "rnn_relu":
        return rnn_cell_forward(x, state, w, "relu")
    if kind == "lstm":
        return lstm_cell_forward(x, state, w)
    return gru_cell_forward(x, state, w)


def _cell_backward(kind, d_new_state, cache, w):
    if kind in ("rnn_tanh", "rnn_relu"):
        return rnn_cell_backward(d_new_state, cache, w)
    if kind == "lstm":
        return lstm_cell_backward(d_new_state, cache, w)
    return gru_cell_backward(d_new_state, cache, w)


# ----------------------------------------------------------------------------
# One layer, one direction: the time loop
# ----------------------------------------------------------------------------


def _time_order(T, reverse):
    return list(range(T - 1, -1, -1)) if reverse else list(range(T))


def _direction_forward(kind, w, inp, state0, mask, reverse, probe=None):
    """Run one layer/direction over time.

    inp: (T, B, I); state0: tuple of (B, H); mask: (T, B) bool.
    probe: optional {t: (B, H) array} added to h right after the step at
    time t (test hook: the gradient w.r.t. it is dL/dh_t).
    Returns out (T, B, H), final state tuple, per-step caches (indexed by t).
    """
    T, B, _ = inp.shape
    H = state0[0].shape[1]
    out = np.zeros((T, B, H))
    step_caches = [None] * T
    state = state0
    for t in _time_order(T, reverse):
        m = mask[t][:, None]
        new_state, step_caches[t] = _cell_forward(kind, inp[t], state, w)
        state = tuple(np.where(m, s_new, s_old) for s_new, s_old in zip(new_state, state))
        if probe is not None and t in probe:
            state = (state[0] + probe[t],) + state[1:]
        out[t] = np.where(m, state[0], 0.0)
    return out, state, step_caches


def _direction_backward(kind, w, step_caches, d_out, d_state_final, mask, reverse):
    """BPTT for one layer/direction.

    d_out: (T, B, H) gradient w.r.t. this direction's output;
    d_state_final: tuple of (B, H), gradient w.r.t. its final state.
    Returns d_inp (T, B, I), d_state0 tuple, dw dict, dh_norm (T,).
    """
    T = d_out.shape[0]
    d_inp = None
    dw_total = None
    dh_norm = np.zeros(T)
    carried = d_state_final
    # Walk the steps in the opposite order of the forward pass.
    for t in reversed(_time_order(T, reverse)):
        m = mask[t][:, None]
        dh_t = carried[0] + np.where(m, d_out[t], 0.0)
        dh_norm[t] = np.linalg.norm(dh_t)
        d_state_t = (dh_t,) + carried[1:]

        # Valid rows go back through the cell; padded rows carried the state.
        d_into_cell = tuple(np.where(m, g, 0.0) for g in d_state_t)
        d_passed_on = tuple(np.where(m, 0.0, g) for g in d_state_t)
        dx_t, d_prev, dw = _cell_backward(kind, d_into_cell, step_caches[t], w)
        carried = tuple(a + b for a, b in zip(d_prev, d_passed_on))

        if d_inp is None:
            d_inp = np.zeros((T,) + dx_t.shape)
            dw_total = {k: np.zeros_like(v) for k, v in dw.items()}
        d_inp[t] = dx_t
        for k in dw_total:
            dw_total[k] += dw[k]
    return d_inp, carried, dw_total, dh_norm


# ----------------------------------------------------------------------------
# Orchestration over layers and directions
# ----------------------------------------------------------------------------


def _make_mask(lengths, T, B):
    if lengths is None:
        return np.ones((T, B), dtype=bool)
    lengths = np.asarray(lengths)
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {lengths.shape}")
    if not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError("lengths must be integers")
    if np.any(lengths < 1) or np.any(lengths > T):
        raise ValueError(f"lengths must satisfy 1 <= lengths[b] <= T={T}, got {lengths}")
    return np.arange(T)[:, None] < lengths[None, :]


def _layer_weights(params, layer, direction, bias):
    w = {"b_ih": None, "b_hh": None}
    for name in _param_names(bias):
        w[_LOCAL_NAMES[name]] = params[_param_key(name, layer, direction)]
    return w


def _state_components(kind):
    return 2 if kind == "lstm" else 1


def _split_state(kind, state, n, B, H, what):
    """Turn user state (None, h, or (h, c)) into a list of n tuples of (B, H)."""
    ncomp = _state_components(kind)
    if state is None:
        comps = [None] * ncomp
    elif kind == "lstm":
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"LSTM {what} must be a tuple (h, c)")
        comps = list(state)
    else:
        comps = [state]
    arrays = []
    for comp in comps:
        if comp is None:
            arrays.append(np.zeros((n, B, H)))
        else:
            a = np.array(comp, dtype=np.float64)
            if a.shape != (n, B, H):
                raise ValueError(f"{what} must have shape {(n, B, H)}, got {a.shape}")
            arrays.append(a)
    return [tuple(a[idx] for a in arrays) for idx in range(n)]


def _join_state(kind, per_index):
    """Inverse of _split_state: list of tuples -> h or (h, c), stacked."""
    stacked = tuple(np.stack([s[k] for s in per_index]) for k in range(_state_components(kind)))
    return stacked if kind == "lstm" else stacked[0]


def _forward(
    kind,
    params,
    x,
    state,
    *,
    num_layers,
    hidden_size,
    bidirectional,
    batch_first,
    lengths,
    bias,
    probe,
    dropout_masks=None,
):
    _check_kind(kind)
    H = hidden_size
    D = 2 if bidirectional else 1
    x = np.array(x, dtype=np.float64)  # copy: the cache must not alias the caller's arrays
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D, got shape {x.shape}")
    if batch_first:
        x = x.transpose(1, 0, 2)
    T, B, input_size = x.shape
    mask = _make_mask(lengths, T, B)

    G = _NUM_GATES[kind] * H
    expected = {}
    for layer in range(num_layers):
        in_size = input_size if layer == 0 else D * H
        for d in range(D):
            shapes = {
                "weight_ih": (G, in_size),
                "weight_hh": (G, H),
                "bias_ih": (G,),
                "bias_hh": (G,),
            }
            for name in _param_names(bias):
                expected[_param_key(name, layer, d)] = shapes[name]
    if set(params) != set(expected):
        raise ValueError(f"parameter keys {sorted(params)} != expected {sorted(expected)}")
    p64 = {}
    for key, shape in expected.items():
        p64[key] = np.array(params[key], dtype=np.float64)
        if p64[key].shape != shape:
            raise ValueError(f"{key} must have shape {shape}, got {p64[key].shape}")

    states0 = _split_state(kind, state, num_layers * D, B, H, "state")
    final_states = [None] * (num_layers * D)
    dir_caches = {}
    inp = x
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            idx = layer * D + d
            w = _layer_weights(p64, layer, d, bias)
            probe_ld = None if probe is None else probe.get((layer, d))
            out_d, final_states[idx], steps = _direction_forward(
                kind, w, inp, states0[idx], mask, reverse=(d == 1), probe=probe_ld
            )
            outs.append(out_d)
            dir_caches[idx] = {"w": w, "steps": steps, "in_size": inp.shape[2]}
        inp = np.concatenate(outs, axis=2)
        if dropout_masks is not None and layer < num_layers - 1:
            # Dropout between layers: the layer above reads the masked output.
            inp = inp * dropout_masks[layer]
    out = inp
    if batch_first:
        out = out.transpose(1, 0, 2)

    cache = {
        "kind": kind,
        "num_layers": num_layers,
        "hidden_size": H,
        "D": D,
        "batch_first": batch_first,
        "bias": bias,
        "T": T,
        "B": B,
        "input_size": input_size,
        "mask": mask,
        "param_shapes": expected,
        "dir_caches": dir_caches,
        "dropout_masks": dropout_masks,
    }
    return np.ascontiguousarray(out), _join_state(kind, final_states), cache


def init_params(
    kind,
    input_size,
    hidden_size,
    num_layers=1,
    bidirectional=False,
    bias=True,
    seed=0,
    dtype=np.float64,
):
    """PyTorch-named parameters drawn from U(-1/sqrt(H), 1/sqrt(H)).

    Drawn with numpy.random.default_rng(seed) in the order: layer, direction,
    then weight_ih, weight_hh, bias_ih, bias_hh.
    """
    _check_kind(kind)
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(hidden_size)
    G = _NUM_GATES[kind] * hidden_size
    D = 2 if bidirectional else 1
    params = {}
    for layer in range(num_layers):
        in_size = input_size if layer == 0 else D * hidden_size
        for d in range(D):
            shapes = {
                "weight_ih": (G, in_size),
                "weight_hh": (G, hidden_size),
                "bias_ih": (G,),
                "bias_hh": (G,),
            }
            for name in _param_names(bias):
                params[_param_key(name, layer, d)] = rng.uniform(-k, k, size=shapes[name]).astype(
                    dtype
                )
    return params


def forward(
    kind,
    params,
    x,
    state=None,
    *,
    num_layers,
    hidden_size,
    bidirectional=False,
    batch_first=False,
    lengths=None,
    bias=True,
    dropout_masks=None,
):
    """Forward pass.  Returns (out, final_state, cache); see the module docstring.

    ``dropout_masks``: optional (num_layers - 1, T, B, D*H) time-major factors; the output
    of layer l is multiplied by ``dropout_masks[l]`` before layer l + 1 reads it (the final
    states and the last layer's output are not masked).
    """
    return _forward(
        kind,
        params,
        x,
        state,
        num_layers=num_layers,
        hidden_size=hidden_size,
        bidirectional=bidirectional,
        batch_first=batch_first,
        lengths=lengths,
        bias=bias,
        probe=None,
        dropout_masks=None if dropout_masks is None else np.asarray(dropout_masks, np.float64),
    )


def backward(cache, d_out, d_state=None):
    """Manual BPTT.  Returns {"dx", "dstate", "params", "dh_norm"}."""
    kind = cache["kind"]
    L, H, D = cache["num_layers"], cache["hidden_size"], cache["D"]
    T, B = cache["T"], cache["B"]
    mask = cache["mask"]

    d_out = np.array(d_out, dtype=np.float64)
    expected_out = (B, T, D * H) if cache["batch_first"] else (T, B, D * H)
    if d_out.shape != expected_out:
        raise ValueError(f"d_out must have shape {expected_out}, got {d_out.shape}")
    if cache["batch_first"]:
        d_out = d_out.transpose(1, 0, 2)
    d_final = _split_state(kind, d_state, L * D, B, H, "d_state")

    grads = {key: np.zeros(shape) for key, shape in cache["param_shapes"].items()}
    d_state0 = [None] * (L * D)
    dh_norm = np.zeros((L * D, T))

    d_layer_out = d_out  # gradient w.r.t. the output of the current layer, (T, B, D*H)
    for layer in reversed(range(L)):
        d_layer_in = None
        for d in range(D):
            idx = layer * D + d
            dc = cache["dir_caches"][idx]
            d_inp, d_state0[idx], dw, dh_norm[idx] = _direction_backward(
                kind,
                dc["w"],
                dc["steps"],
                d_layer_out[:, :, d * H : (d + 1) * H],
                d_final[idx],
                mask,
                reverse=(d == 1),
            )
            # Both directions read the same layer input: their gradients add.
            d_layer_in = d_inp if d_layer_in is None else d_layer_in + d_inp
            for name in _param_names(cache["bias"]):
                grads[_param_key(name, layer, d)] += dw[_LOCAL_NAMES[name]]
        if cache.get("dropout_masks") is not None and layer > 0:
            d_layer_in = d_layer_in * cache["dropout_masks"][layer - 1]
        d_layer_out = d_layer_in

    dx = d_layer_out
    if cache["batch_first"]:
        dx = dx.transpose(1, 0, 2)
    return {
        "dx": np.ascontiguousarray(dx),
        "dstate": _join_state(kind, d_state0),
        "params": grads,
        "dh_norm": dh_norm,
    }
