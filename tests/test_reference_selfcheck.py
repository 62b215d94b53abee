"""Self-checks of tests/reference.py (the NumPy oracle), independent of the package.

* backward() against central finite differences of forward(), float64, for
  every cell kind and option (layers, bidirectional, batch_first, lengths,
  bias, given/absent initial state, given/absent d_state);
* dh_norm against finite differences w.r.t. a perturbation of h_t;
* forward semantics: a hand-written single step per cell, padding equals
  running the truncated sequence alone, the reverse direction equals a
  forward pass over the flipped sequence, batch_first is a transpose.
"""

import numpy as np
import pytest
import reference as ref

KINDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
EPS = 1e-6
RTOL = 1e-6
ATOL = 1e-8


def _case(**options):
    return options


# Each case covers several options at once so the whole file stays fast.
# (No case combines bias=False with a zero initial state: for rnn_relu that puts
# pre-activations exactly on the relu kink, where finite differences are invalid;
# the kink convention is checked separately in test_relu_gradient_at_zero_is_zero.)
CASES = {
    "plain": _case(
        T=3, B=2, I=2, H=2, num_layers=1, bidirectional=False, batch_first=False,
        lengths=None, bias=True, state=True, d_state=True,
    ),
    "deep_bi_lengths": _case(
        T=4, B=3, I=2, H=2, num_layers=2, bidirectional=True, batch_first=False,
        lengths=[4, 1, 2], bias=True, state=True, d_state=True,
    ),
    "deep_bf_nobias_lengths": _case(
        T=3, B=2, I=3, H=2, num_layers=2, bidirectional=False, batch_first=True,
        lengths=[2, 3], bias=False, state=True, d_state=False,
    ),
    "bi_bf_nostate_nodstate": _case(
        T=3, B=2, I=2, H=3, num_layers=1, bidirectional=True, batch_first=True,
        lengths=[1, 3], bias=True, state=False, d_state=False,
    ),
    "bi_nobias": _case(
        T=2, B=2, I=2, H=2, num_layers=2, bidirectional=True, batch_first=False,
        lengths=None, bias=False, state=True, d_state=True,
    ),
}  # fmt: skip

_MAX_REL_ERR = {"value": 0.0}


def _record_rel_err(analytic, numeric):
    analytic, numeric = np.asarray(analytic), np.asarray(numeric)
    denom = np.maximum(np.abs(analytic) + np.abs(numeric), 1e-6)
    err = float(np.max(np.abs(analytic - numeric) / denom)) if analytic.size else 0.0
    _MAX_REL_ERR["value"] = max(_MAX_REL_ERR["value"], err)


def _make_problem(kind, case, seed=0):
    c = CASES[case]
    rng = np.random.default_rng(seed + 100)
    D = 2 if c["bidirectional"] else 1
    n = c["num_layers"] * D
    params = ref.init_params(
        kind, c["I"], c["H"], c["num_layers"], c["bidirectional"], c["bias"], seed=seed
    )
    x_shape = (c["B"], c["T"], c["I"]) if c["batch_first"] else (c["T"], c["B"], c["I"])
    x = rng.standard_normal(x_shape)
    state = None
    d_state = None
    shape = (n, c["B"], c["H"])
    if c["state"]:
        state = rng.uniform(-0.8, 0.8, shape)
        if kind == "lstm":
            state = (state, rng.uniform(-0.8, 0.8, shape))
    if c["d_state"]:
        d_state = rng.standard_normal(shape)
        if kind == "lstm":
            d_state = (d_state, rng.standard_normal(shape))
    out_shape = x_shape[:2] + (D * c["H"],)
    d_out = rng.standard_normal(out_shape)
    lengths = None if c["lengths"] is None else np.array(c["lengths"], dtype=np.int64)
    kwargs = {
        "num_layers": c["num_layers"],
        "hidden_size": c["H"],
        "bidirectional": c["bidirectional"],
        "batch_first": c["batch_first"],
        "lengths": lengths,
        "bias": c["bias"],
    }
    return params, x, state, d_out, d_state, kwargs


def _state_parts(state):
    if state is None:
        return []
    return list(state) if isinstance(state, tuple) else [state]


def _loss(kind, params, x, state, d_out, d_state, kwargs, probe=None):
    """L = <out, d_out> + <final_state, d_state>, whose gradient backward() computes."""
    if probe is None:
        out, final, _ = ref.forward(kind, params, x, state, **kwargs)
    else:
        out, final, _ = ref._forward(kind, params, x, state, probe=probe, **kwargs)
    total = np.sum(out * d_out)
    for f, g in zip(_state_parts(final), _state_parts(d_state)):
        total += np.sum(f * g)
    return total


def _numeric_grad(array, loss_fn):
    """Central differences of loss_fn() w.r.t. every element of `array` (perturbed in place)."""
    grad = np.zeros_like(array)
    for idx in np.ndindex(array.shape):
        orig = array[idx]
        array[idx] = orig + EPS
        plus = loss_fn()
        array[idx] = orig - EPS
        minus = loss_fn()
        array[idx] = orig
        grad[idx] = (plus - minus) / (2 * EPS)
    return grad


def _check(analytic, numeric, what):
    _record_rel_err(analytic, numeric)
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL, err_msg=what)


# ----------------------------------------------------------------------------
# Gradient checks
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", KINDS)
def test_backward_matches_finite_differences(kind, case):
    params, x, state, d_out, d_state, kwargs = _make_problem(kind, case)
    _, _, cache = ref.forward(kind, params, x, state, **kwargs)
    grads = ref.backward(cache, d_out, d_state)

    def loss():
        return _loss(kind, params, x, state, d_out, d_state, kwargs)

    _check(grads["dx"], _numeric_grad(x, loss), "dx")
    assert grads["dx"].dtype == np.float64

    assert sorted(grads["params"]) == sorted(params)
    for key, value in params.items():
        assert grads["params"][key].shape == value.shape
        _check(grads["params"][key], _numeric_grad(value, loss), key)

    # Gradient w.r.t. the initial state (zeros when state=None).
    D = 2 if kwargs["bidirectional"] else 1
    shape = (
        kwargs["num_layers"] * D,
        d_out.shape[0] if kwargs["batch_first"] else d_out.shape[1],
        kwargs["hidden_size"],
    )
    if state is None:
        state_arrays = [np.zeros(shape) for _ in range(2 if kind == "lstm" else 1)]
        state_for_loss = tuple(state_arrays) if kind == "lstm" else state_arrays[0]
    else:
        state_arrays = _state_parts(state)
        state_for_loss = state
    dstate = _state_parts(grads["dstate"])
    assert (kind == "lstm") == isinstance(grads["dstate"], tuple)
    assert len(dstate) == len(state_arrays)
    for k, (arr, dk) in enumerate(zip(state_arrays, dstate)):
        num = _numeric_grad(
            arr, lambda: _loss(kind, params, x, state_for_loss, d_out, d_state, kwargs)
        )
        _check(dk, num, f"dstate[{k}]")

    # Padded positions: dx exactly zero, d_out there ignored.
    if kwargs["lengths"] is not None:
        lengths = kwargs["lengths"]
        T = x.shape[1] if kwargs["batch_first"] else x.shape[0]
        pad = np.arange(T)[:, None] >= lengths[None, :]  # (T, B)
        if kwargs["batch_first"]:
            pad = pad.T
        assert np.all(grads["dx"][pad] == 0.0)
        d_out_noisy = d_out.copy()
        d_out_noisy[pad] = 1e3
        again = ref.backward(cache, d_out_noisy, d_state)
        np.testing.assert_array_equal(again["dx"], grads["dx"])
        np.testing.assert_array_equal(again["dh_norm"], grads["dh_norm"])


@pytest.mark.parametrize("case", ["plain", "deep_bi_lengths", "bi_bf_nostate_nodstate"])
@pytest.mark.parametrize("kind", KINDS)
def test_dh_norm_matches_finite_differences(kind, case):
    """dh_norm[l*D+d, t] = ||dL/dh_t||, h_t the hidden state after the step at time t."""
    params, x, state, d_out, d_state, kwargs = _make_problem(kind, case, seed=1)
    _, _, cache = ref.forward(kind, params, x, state, **kwargs)
    dh_norm = ref.backward(cache, d_out, d_state)["dh_norm"]
    D = 2 if kwargs["bidirectional"] else 1
    T, B = (x.shape[1], x.shape[0]) if kwargs["batch_first"] else x.shape[:2]
    H = kwargs["hidden_size"]
    assert dh_norm.shape == (kwargs["num_layers"] * D, T)
    numeric = np.zeros_like(dh_norm)
    for layer in range(kwargs["num_layers"]):
        for d in range(D):
            for t in range(T):
                delta = np.zeros((B, H))
                probe = {(layer, d): {t: delta}}

                def loss(probe=probe):
                    return _loss(kind, params, x, state, d_out, d_state, kwargs, probe)

                g = _numeric_grad(delta, loss)
                numeric[layer * D + d, t] = np.linalg.norm(g)
    _check(dh_norm, numeric, "dh_norm")
    assert np.all(dh_norm > 0)


# ----------------------------------------------------------------------------
# Forward semantics
# ----------------------------------------------------------------------------


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


@pytest.mark.parametrize("kind", KINDS)
def test_single_step_matches_written_out_equations(kind):
    rng = np.random.default_rng(5)
    B, I, H = 3, 4, 2
    p = ref.init_params(kind, I, H, seed=3)
    x = rng.standard_normal((1, B, I))
    h = rng.standard_normal((1, B, H))
    c = rng.standard_normal((1, B, H))
    state = (h, c) if kind == "lstm" else h
    out, final, _ = ref.forward(kind, p, x, state, num_layers=1, hidden_size=H)
    Wi, Wh, bi, bh = (
        p["weight_ih_l0"],
        p["weight_hh_l0"],
        p["bias_ih_l0"],
        p["bias_hh_l0"],
    )
    xs, hs, cs = x[0], h[0], c[0]
    gi = np.einsum("gi,bi->bg", Wi, xs) + bi
    gh = np.einsum("gh,bh->bg", Wh, hs) + bh
    if kind == "rnn_tanh":
        expected_h = np.tanh(gi + gh)
    elif kind == "rnn_relu":
        expected_h = np.where(gi + gh > 0, gi + gh, 0.0)
    elif kind == "lstm":
        a = gi + gh
        i, f, g, o = (
            _sig(a[:, :H]),
            _sig(a[:, H : 2 * H]),
            np.tanh(a[:, 2 * H : 3 * H]),
            _sig(a[:, 3 * H :]),
        )
        expected_c = f * cs + i * g
        expected_h = o * np.tanh(expected_c)
        np.testing.assert_allclose(final[1][0], expected_c, rtol=1e-13, atol=1e-14)
    else:
        r = _sig(gi[:, :H] + gh[:, :H])
        z = _sig(gi[:, H : 2 * H] + gh[:, H : 2 * H])
        n = np.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])  # b_hn inside the reset product
        expected_h = (1 - z) * n + z * hs
    np.testing.assert_allclose(out[0], expected_h, rtol=1e-13, atol=1e-14)
    final_h = final[0] if kind == "lstm" else final
    np.testing.assert_allclose(final_h[0], expected_h, rtol=1e-13, atol=1e-14)


def test_gru_reset_gate_multiplies_hidden_bias():
    """Moving b_hn into b_in must change the GRU output (b_hn is inside r * (...))."""
    H, I = 2, 2
    p = ref.init_params("gru", I, H, seed=0)
    x = np.ones((1, 1, I))
    h = np.full((1, 1, H), 0.5)
    out1, _, _ = ref.forward("gru", p, x, h, num_layers=1, hidden_size=H)
    q = {k: v.copy() for k, v in p.items()}
    q["bias_ih_l0"][2 * H :] += q["bias_hh_l0"][2 * H :]
    q["bias_hh_l0"][2 * H :] = 0.0
    out2, _, _ = ref.forward("gru", q, x, h, num_layers=1, hidden_size=H)
    assert not np.allclose(out1, out2)


@pytest.mark.parametrize("kind", KINDS)
def test_lengths_equal_running_each_sequence_alone(kind):
    rng = np.random.default_rng(7)
    T, B, I, H, L = 5, 3, 2, 3, 2
    lengths = np.array([2, 5, 1])
    p = ref.init_params(kind, I, H, L, bidirectional=True, seed=2)
    kw = {"num_layers": L, "hidden_size": H, "bidirectional": True}
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((2 * L, B, H))
    c0 = rng.standard_normal((2 * L, B, H))
    d_out = rng.standard_normal((T, B, 2 * H))
    d_h = rng.standard_normal((2 * L, B, H))
    d_c = rng.standard_normal((2 * L, B, H))

    def st(h, c):
        return (h, c) if kind == "lstm" else h

    out, final, cache = ref.forward(kind, p, x, st(h0, c0), lengths=lengths, **kw)
    g = ref.backward(cache, d_out, st(d_h, d_c))
    param_sum = {k: np.zeros_like(v) for k, v in p.items()}
    for b in range(B):
        n = lengths[b]
        sl = slice(b, b + 1)
        out_b, final_b, cache_b = ref.forward(kind, p, x[:n, sl], st(h0[:, sl], c0[:, sl]), **kw)
        np.testing.assert_allclose(out[:n, b], out_b[:, 0], rtol=1e-12, atol=1e-14)
        assert np.all(out[n:, b] == 0.0)
        for f, fb in zip(_state_parts(final), _state_parts(final_b)):
            np.testing.assert_allclose(f[:, b], fb[:, 0], rtol=1e-12, atol=1e-14)
        g_b = ref.backward(cache_b, d_out[:n, sl], st(d_h[:, sl], d_c[:, sl]))
        np.testing.assert_allclose(g["dx"][:n, b], g_b["dx"][:, 0], rtol=1e-10, atol=1e-12)
        assert np.all(g["dx"][n:, b] == 0.0)
        for ds, dsb in zip(_state_parts(g["dstate"]), _state_parts(g_b["dstate"])):
            np.testing.assert_allclose(ds[:, b], dsb[:, 0], rtol=1e-10, atol=1e-12)
        for k in param_sum:
            param_sum[k] += g_b["params"][k]
    for k, expected in param_sum.items():
        np.testing.assert_allclose(g["params"][k], expected, rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("kind", KINDS)
def test_reverse_direction_is_forward_over_flipped_time(kind):
    rng = np.random.default_rng(11)
    T, B, I, H = 4, 2, 3, 2
    p = ref.init_params(kind, I, H, 1, bidirectional=True, seed=4)
    x = rng.standard_normal((T, B, I))
    out, final, _ = ref.forward(kind, p, x, num_layers=1, hidden_size=H, bidirectional=True)
    fwd_p = {k: v for k, v in p.items() if not k.endswith("_reverse")}
    rev_p = {k.removesuffix("_reverse"): v for k, v in p.items() if k.endswith("_reverse")}
    out_f, final_f, _ = ref.forward(kind, fwd_p, x, num_layers=1, hidden_size=H)
    out_r, final_r, _ = ref.forward(kind, rev_p, x[::-1], num_layers=1, hidden_size=H)
    np.testing.assert_allclose(out[:, :, :H], out_f, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(out[:, :, H:], out_r[::-1], rtol=1e-13, atol=1e-15)
    for f, ff, fr in zip(_state_parts(final), _state_parts(final_f), _state_parts(final_r)):
        np.testing.assert_allclose(f[0], ff[0], rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(f[1], fr[0], rtol=1e-13, atol=1e-15)
    # The reverse output at t=0 is the reverse final state.
    h_final = final[0] if kind == "lstm" else final
    np.testing.assert_allclose(out[0, :, H:], h_final[1], rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_first_is_a_transpose_and_types(kind):
    rng = np.random.default_rng(13)
    T, B, I, H = 3, 2, 2, 2
    p32 = ref.init_params(kind, I, H, 2, bidirectional=True, seed=6, dtype=np.float32)
    assert all(v.dtype == np.float32 for v in p32.values())
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = np.array([3, 2])
    kw = {"num_layers": 2, "hidden_size": H, "bidirectional": True, "lengths": lengths}
    out, final, cache = ref.forward(kind, p32, x, **kw)
    out_bf, final_bf, cache_bf = ref.forward(
        kind, p32, x.transpose(1, 0, 2), batch_first=True, **kw
    )
    assert out.dtype == np.float64 and out.shape == (T, B, 2 * H)
    np.testing.assert_array_equal(out_bf, out.transpose(1, 0, 2))
    for f, fb in zip(_state_parts(final), _state_parts(final_bf)):
        assert f.dtype == np.float64 and f.shape == (4, B, H)
        np.testing.assert_array_equal(f, fb)
    d_out = rng.standard_normal(out.shape)
    g = ref.backward(cache, d_out)
    g_bf = ref.backward(cache_bf, d_out.transpose(1, 0, 2))
    np.testing.assert_array_equal(g_bf["dx"], g["dx"].transpose(1, 0, 2))
    np.testing.assert_array_equal(g_bf["dh_norm"], g["dh_norm"])
    for k in p32:
        assert g["params"][k].dtype == np.float64
        np.testing.assert_array_equal(g_bf["params"][k], g["params"][k])


@pytest.mark.parametrize("kind", KINDS)
def test_none_state_equals_zeros(kind):
    rng = np.random.default_rng(17)
    T, B, I, H = 3, 2, 2, 2
    p = ref.init_params(kind, I, H, seed=8)
    x = rng.standard_normal((T, B, I))
    z = np.zeros((1, B, H))
    zs = (z, z) if kind == "lstm" else z
    out_none, _, cache_none = ref.forward(kind, p, x, None, num_layers=1, hidden_size=H)
    out_zero, _, cache_zero = ref.forward(kind, p, x, zs, num_layers=1, hidden_size=H)
    np.testing.assert_array_equal(out_none, out_zero)
    d_out = rng.standard_normal(out_none.shape)
    g1 = ref.backward(cache_none, d_out, None)
    g2 = ref.backward(cache_zero, d_out, zs)
    np.testing.assert_array_equal(g1["dx"], g2["dx"])
    for a, b in zip(_state_parts(g1["dstate"]), _state_parts(g2["dstate"])):
        np.testing.assert_array_equal(a, b)


def test_relu_gradient_at_zero_is_zero():
    """At pre-activation exactly 0 the relu derivative is taken as 0 (PyTorch's convention)."""
    p = ref.init_params("rnn_relu", 2, 3, bias=False)
    x = np.zeros((2, 1, 2))
    out, _, cache = ref.forward("rnn_relu", p, x, None, num_layers=1, hidden_size=3, bias=False)
    assert np.all(out == 0.0)
    g = ref.backward(cache, np.ones_like(out), np.ones((1, 1, 3)))
    assert np.all(g["dx"] == 0.0)
    assert np.all(g["dstate"] == 0.0)
    assert all(np.all(v == 0.0) for v in g["params"].values())
    np.testing.assert_allclose(g["dh_norm"], [[np.sqrt(3.0), np.sqrt(12.0)]])


def test_init_params_keys_shapes_and_range():
    p = ref.init_params("lstm", 5, 4, num_layers=2, bidirectional=True, seed=1)
    expected = {}
    for layer, in_size in ((0, 5), (1, 8)):
        for sfx in ("", "_reverse"):
            expected[f"weight_ih_l{layer}{sfx}"] = (16, in_size)
            expected[f"weight_hh_l{layer}{sfx}"] = (16, 4)
            expected[f"bias_ih_l{layer}{sfx}"] = (16,)
            expected[f"bias_hh_l{layer}{sfx}"] = (16,)
    assert {k: v.shape for k, v in p.items()} == expected
    assert all(np.all(np.abs(v) <= 0.5) for v in p.values())
    again = ref.init_params("lstm", 5, 4, num_layers=2, bidirectional=True, seed=1)
    assert all(np.array_equal(p[k], again[k]) for k in p)
    other = ref.init_params("lstm", 5, 4, num_layers=2, bidirectional=True, seed=2)
    assert not np.array_equal(p["weight_ih_l0"], other["weight_ih_l0"])
    nobias = ref.init_params("gru", 3, 2, bias=False)
    assert sorted(nobias) == ["weight_hh_l0", "weight_ih_l0"]
    assert nobias["weight_ih_l0"].shape == (6, 3)
    assert ref.init_params("rnn_relu", 3, 2)["weight_hh_l0"].shape == (2, 2)


def test_invalid_inputs_are_rejected():
    p = ref.init_params("gru", 2, 2)
    x = np.zeros((3, 2, 2))
    kw = {"num_layers": 1, "hidden_size": 2}
    for bad in ([0, 3], [4, 1], [1, 2, 3]):
        with pytest.raises(ValueError):
            ref.forward("gru", p, x, lengths=np.array(bad), **kw)
    with pytest.raises(ValueError):
        ref.forward("lstm", p, x, **kw)  # wrong parameter shapes/keys
    with pytest.raises(ValueError):
        ref.forward("gru", p, x, bias=False, **kw)  # unexpected bias keys
    with pytest.raises(ValueError):
        ref.forward("elman", p, x, **kw)
