"""state_dict / load_state_dict / params: PyTorch's names and shapes, copies vs live arrays,
round trips, seeds and the U(-1/sqrt(H), 1/sqrt(H)) initialisation. Optionally (when torch
is installed) a PyTorch model's weights load and give PyTorch's outputs and gradients.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import KINDS, make_model, param_names, param_shapes, random_state, state_parts

IN, H = 5, 7
DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]


def outputs(m, x):
    out, st = m(x)
    return [out, *state_parts(st)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=["L1", "L2", "L3"])
@pytest.mark.parametrize("kind", KINDS)
def test_keys_and_shapes_are_pytorchs(kind, num_layers, bidirectional, bias, dtype):
    m = make_model(
        kind, IN, H, num_layers, bidirectional=bidirectional, bias=bias, dtype=dtype, seed=0
    )
    expected = param_shapes(kind, IN, H, num_layers, bidirectional, bias)
    sd = m.state_dict()
    assert set(sd) == set(expected)
    for k, v in sd.items():
        assert isinstance(v, np.ndarray), k
        assert v.shape == expected[k], f"{k}: {v.shape} != {expected[k]}"
        assert v.dtype == np.dtype(dtype), k
    params = m.params
    assert set(params) == set(expected)
    for k, v in params.items():
        assert v.shape == expected[k] and v.dtype == np.dtype(dtype), k
        assert v.flags.c_contiguous and v.flags.writeable, k


@pytest.mark.parametrize("kind", KINDS)
def test_key_order_is_pytorchs(kind):
    m = make_model(kind, IN, H, 2, bidirectional=True, seed=0)
    assert list(m.state_dict()) == param_names(2, True)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_keys_and_shapes(kind, rng):
    m = make_model(kind, IN, H, 2, bidirectional=True, dtype=np.float64, seed=0)
    x = rng.standard_normal((4, 3, IN))
    _, _, tape = m.forward(x)
    g = m.backward(tape, rng.standard_normal((4, 3, 2 * H)))
    sd = m.state_dict()
    assert set(g.params) == set(sd)
    for k, v in g.params.items():
        assert v.shape == sd[k].shape and v.dtype == sd[k].dtype, k


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_returns_copies(kind, rng):
    m = make_model(kind, IN, H, 2, bidirectional=True, dtype=np.float64, seed=1)
    x = rng.standard_normal((4, 3, IN))
    before = outputs(m, x)
    sd = m.state_dict()
    for v in sd.values():
        v[...] = 0.0
    for k, v in m.state_dict().items():
        assert np.any(v != 0), f"{k}: state_dict() aliased the model's weights"
    for a, b in zip(outputs(m, x), before, strict=True):
        np.testing.assert_array_equal(a, b)
    # Two calls give independent arrays.
    sd1, sd2 = m.state_dict(), m.state_dict()
    for k in sd1:
        assert not np.shares_memory(sd1[k], sd2[k]), k
        assert not np.shares_memory(sd1[k], m.params[k]), k


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_params_are_live(kind, dtype, rng):
    m = make_model(kind, IN, H, 2, bidirectional=True, dtype=dtype, seed=2)
    x = rng.standard_normal((4, 3, IN)).astype(dtype)
    before = outputs(m, x)
    params = m.params
    for name in ("weight_hh_l0", "weight_ih_l1_reverse", "bias_ih_l1"):
        params[name] *= 0.5
        after = outputs(m, x)
        assert not np.array_equal(after[0], before[0]), f"editing params[{name!r}] changed nothing"
        before = after
    # The live edits show up in state_dict and match a model loaded with the same weights.
    sd = m.state_dict()
    for k, v in params.items():
        np.testing.assert_array_equal(sd[k], v, err_msg=k)
    m2 = make_model(kind, IN, H, 2, bidirectional=True, dtype=dtype, seed=99)
    m2.load_state_dict(sd)
    for a, b in zip(outputs(m2, x), outputs(m, x), strict=True):
        np.testing.assert_array_equal(a, b)
    # A fresh m.params sees the same arrays.
    m.params["weight_hh_l1"][...] = 0.0
    assert np.all(m.state_dict()["weight_hh_l1"] == 0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_params_edit_affects_training_forward_and_gradients(kind, rng):
    m = make_model(kind, IN, H, 1, dtype=np.float64, seed=3)
    x = rng.standard_normal((4, 3, IN))
    d_out = rng.standard_normal((4, 3, H))
    _, _, tape = m.forward(x)
    g0 = m.backward(tape, d_out)
    m.params["weight_hh_l0"] *= 2.0
    _, _, tape = m.forward(x)
    g1 = m.backward(tape, d_out)
    assert not np.array_equal(g0.params["weight_ih_l0"], g1.params["weight_ih_l0"])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_load_state_dict_roundtrip(kind, dtype, rng):
    a = make_model(kind, IN, H, 3, bidirectional=True, dtype=dtype, seed=4)
    b = make_model(kind, IN, H, 3, bidirectional=True, dtype=dtype, seed=5)
    x = rng.standard_normal((5, 2, IN)).astype(dtype)
    assert not np.array_equal(outputs(a, x)[0], outputs(b, x)[0])
    sd = a.state_dict()
    b.load_state_dict(sd)
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)
    for u, v in zip(outputs(a, x), outputs(b, x), strict=True):
        np.testing.assert_array_equal(u, v)
    # load_state_dict copies: changing the source afterwards does not change the model.
    for v in sd.values():
        v[...] = 0.0
    for u, v in zip(outputs(a, x), outputs(b, x), strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("kind", KINDS)
def test_load_state_dict_other_float_dtype_and_layout(kind, rng):
    a = make_model(kind, IN, H, 1, bidirectional=True, dtype=np.float64, seed=6)
    b = make_model(kind, IN, H, 1, bidirectional=True, dtype=np.float32, seed=7)
    sd = a.state_dict()
    b.load_state_dict({k: np.asfortranarray(v) for k, v in sd.items()})
    for k, v in b.state_dict().items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, sd[k].astype(np.float32), err_msg=k)
    sd32 = b.state_dict()
    a.load_state_dict(sd32)
    for k, v in a.state_dict().items():
        assert v.dtype == np.float64
        np.testing.assert_array_equal(v, sd32[k].astype(np.float64), err_msg=k)


def _load_fails(m, bad, key, exc=ValueError):
    before = m.state_dict()
    with pytest.raises(exc, match=re.escape(key)):
        m.load_state_dict(bad)
    # A failed load leaves the model as it was.
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"failed load changed {k}")


@pytest.mark.parametrize("kind", KINDS)
def test_load_state_dict_missing_key(kind):
    m = make_model(kind, IN, H, 2, bidirectional=True, seed=8)
    for key in ("weight_ih_l0", "bias_hh_l1_reverse", "weight_hh_l1"):
        bad = {k: v * 0 for k, v in m.state_dict().items() if k != key}
        _load_fails(m, bad, key)


@pytest.mark.parametrize("kind", KINDS)
def test_load_state_dict_unknown_key(kind):
    m = make_model(kind, IN, H, 2, bidirectional=True, seed=9)
    for key in ("weight_ih_l2", "weight_ih_l0_reverse_extra", "foo", "bias_ih_l0x"):
        bad = {k: v * 0 for k, v in m.state_dict().items()}
        bad[key] = np.zeros(3, dtype=np.float32)
        _load_fails(m, bad, key)
    # Bias keys into a bias-free model, and reverse keys into a one-direction model.
    nb = make_model(kind, IN, H, 1, bias=False, seed=9)
    bad = make_model(kind, IN, H, 1, bias=True, seed=9).state_dict()
    _load_fails(nb, bad, "bias_ih_l0")
    uni = make_model(kind, IN, H, 1, seed=9)
    bad = make_model(kind, IN, H, 1, bidirectional=True, seed=9).state_dict()
    _load_fails(uni, bad, "_reverse")


@pytest.mark.parametrize("kind", KINDS)
def test_load_state_dict_misshaped_key(kind):
    m = make_model(kind, IN, H, 2, bidirectional=True, seed=10)
    for key, shape_fn in [
        ("weight_ih_l0", lambda s: (s[0], s[1] + 1)),
        ("weight_ih_l1", lambda s: (s[0], IN)),  # layer 1 reads 2H features, not IN
        ("weight_hh_l0_reverse", lambda s: s[::-1] if s[0] != s[1] else (s[0] + 1, s[1])),
        ("bias_hh_l1", lambda s: (s[0] - 1,)),
        ("bias_ih_l0", lambda s: (1, s[0])),
        ("weight_hh_l1_reverse", lambda s: (s[0] * s[1],)),
    ]:
        sd = m.state_dict()
        bad = {k: v * 0 for k, v in sd.items()}
        bad[key] = np.zeros(shape_fn(sd[key].shape), dtype=sd[key].dtype)
        _load_fails(m, bad, key)


@pytest.mark.parametrize("kind", KINDS)
def test_load_state_dict_bad_dtype(kind):
    m = make_model(kind, IN, H, 1, seed=11)
    for bad_dtype in (np.int64, np.complex128, np.bool_):
        bad = m.state_dict()
        bad["weight_hh_l0"] = bad["weight_hh_l0"].astype(bad_dtype)
        _load_fails(m, bad, "weight_hh_l0", (TypeError, ValueError))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_seed_reproducibility(kind, dtype):
    a = make_model(kind, IN, H, 2, bidirectional=True, dtype=dtype, seed=123)
    b = make_model(kind, IN, H, 2, bidirectional=True, dtype=dtype, seed=123)
    c = make_model(kind, IN, H, 2, bidirectional=True, dtype=dtype, seed=124)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
        assert not np.array_equal(sa[k], sc[k]), f"{k}: seeds 123 and 124 give the same weights"
    # Tensors within one model are not copies of each other.
    assert not np.array_equal(sa["weight_hh_l0"], sa["weight_hh_l0_reverse"])
    assert not np.array_equal(sa["bias_ih_l0"], sa["bias_hh_l0"])
    # seed=None draws fresh weights.
    n1 = make_model(kind, IN, H, 1, dtype=dtype).state_dict()
    n2 = make_model(kind, IN, H, 1, dtype=dtype).state_dict()
    assert not np.array_equal(n1["weight_ih_l0"], n2["weight_ih_l0"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hidden", [1, 4, 50])
def test_init_range(kind, hidden):
    m = make_model(kind, 30, hidden, 2, bidirectional=True, dtype=np.float64, seed=0)
    bound = 1.0 / np.sqrt(hidden)
    allw = []
    for k, v in m.state_dict().items():
        assert np.all(np.abs(v) <= bound), f"{k}: max |w| {np.max(np.abs(v))} > {bound}"
        allw.append(v.ravel())
    w = np.concatenate(allw) / bound
    if w.size < 500:
        return
    # Looks like U(-1, 1) after scaling: mean ~0, variance ~1/3, reaches near both ends.
    assert abs(np.mean(w)) < 0.1
    assert abs(np.var(w) - 1 / 3) < 0.05
    assert np.min(w) < -0.9 and np.max(w) > 0.9


# ---------------------------------------------------------------------------------------
# PyTorch (optional)
# ---------------------------------------------------------------------------------------

TORCH_KINDS = {"rnn_tanh": ("RNN", "tanh"), "rnn_relu": ("RNN", "relu"), "lstm": ("LSTM", None)}
TORCH_KINDS["gru"] = ("GRU", None)


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", KINDS)
def test_torch_weights_give_torch_results(kind, bidirectional, batch_first, rng):
    torch = pytest.importorskip("torch")
    T, B, L = 6, 3, 2
    D = 2 if bidirectional else 1
    cls_name, nonlin = TORCH_KINDS[kind]
    kwargs = {"num_layers": L, "bidirectional": bidirectional, "batch_first": batch_first}
    if nonlin is not None:
        kwargs["nonlinearity"] = nonlin
    torch.manual_seed(0)
    tm = getattr(torch.nn, cls_name)(IN, H, **kwargs).double()
    m = make_model(
        kind,
        IN,
        H,
        L,
        bidirectional=bidirectional,
        batch_first=batch_first,
        dtype=np.float64,
        seed=0,
    )
    m.load_state_dict({k: v.detach().numpy().copy() for k, v in tm.state_dict().items()})

    x_shape = (B, T, IN) if batch_first else (T, B, IN)
    x = rng.standard_normal(x_shape)
    state = random_state(rng, kind, L, D, B, H, np.float64)
    r_out = rng.standard_normal(x_shape[:2] + (D * H,))
    r_state = random_state(rng, kind, L, D, B, H, np.float64, 1.0)

    tx = torch.tensor(x, requires_grad=True)
    tstate = tuple(torch.tensor(s, requires_grad=True) for s in state_parts(state))
    t_out, t_st = tm(tx, tstate if kind == "lstm" else tstate[0])
    t_st = t_st if isinstance(t_st, tuple) else (t_st,)
    loss = (t_out * torch.tensor(r_out)).sum()
    for s, r in zip(t_st, state_parts(r_state), strict=True):
        loss = loss + (s * torch.tensor(r)).sum()
    loss.backward()

    out, st, tape = m.forward(x, state)
    g = m.backward(tape, r_out, r_state)
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    for a, b in zip(state_parts(st), t_st, strict=True):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    for a, b in zip(state_parts(g.dstate), tstate, strict=True):
        np.testing.assert_allclose(a, b.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, p in tm.named_parameters():
        np.testing.assert_allclose(
            g.params[name], p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name
        )
