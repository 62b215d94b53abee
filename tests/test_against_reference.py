"""The package against the independent float64 NumPy reference (tests/reference.py).

Outputs, final states, dx, dstate, every parameter gradient and dh_norm, over
{rnn_tanh, rnn_relu, lstm, gru} x {1, 2, 3 layers} x {uni, bi} x {time-major, batch-first}
x {float32, float64} x several (T, B, I, H), including T=1 and B=1.

The reference is always driven time-major (x transposed here for batch_first models), so
the layout handling of the package is checked independently of the reference's own.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    KINDS,
    check_close,
    check_state_close,
    load_reference,
    make_model,
    param_shapes,
    random_state,
    state_parts,
    to_f64,
)

# (T, B, I, H, with initial state, with d_state)
CASES = [
    (5, 3, 4, 6, True, True),
    (1, 2, 3, 4, False, True),
    (7, 1, 5, 3, True, False),
    (3, 4, 2, 5, False, False),
]
CASE_IDS = [
    f"T{c[0]}B{c[1]}I{c[2]}H{c[3]}{'-s' if c[4] else ''}{'-ds' if c[5] else ''}" for c in CASES
]
DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]


def to_time_major(a, batch_first):
    return np.swapaxes(a, 0, 1) if batch_first else a


def run_case(
    kind,
    num_layers,
    bidirectional,
    batch_first,
    dtype,
    T,
    B,
    in_size,
    H,
    with_state,
    with_d_state,
    rng,
    bias=True,
    lengths=None,
):
    ref = load_reference()
    D = 2 if bidirectional else 1
    m = make_model(
        kind,
        in_size,
        H,
        num_layers,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
        dtype=dtype,
        seed=int(rng.integers(1 << 31)),
    )
    sd = m.state_dict()
    assert set(sd) == set(param_shapes(kind, in_size, H, num_layers, bidirectional, bias))
    params64 = {k: np.asarray(v, dtype=np.float64) for k, v in sd.items()}

    x_shape = (B, T, in_size) if batch_first else (T, B, in_size)
    x = rng.standard_normal(x_shape).astype(dtype)
    state = random_state(rng, kind, num_layers, D, B, H, dtype) if with_state else None
    d_out = rng.standard_normal(x_shape[:2] + (D * H,)).astype(dtype)
    d_state = random_state(rng, kind, num_layers, D, B, H, dtype, 1.0) if with_d_state else None

    out, st, tape = m.forward(x, state, lengths=lengths)
    assert isinstance(tape.nbytes, int) and tape.nbytes > 0
    g = m.backward(tape, d_out, d_state)

    r_out, r_st, cache = ref.forward(
        kind,
        params64,
        to_time_major(x, batch_first).astype(np.float64),
        to_f64(state),
        num_layers=num_layers,
        hidden_size=H,
        bidirectional=bidirectional,
        batch_first=False,
        lengths=lengths,
        bias=bias,
    )
    r_g = ref.backward(cache, to_time_major(d_out, batch_first).astype(np.float64), to_f64(d_state))

    dt = np.dtype(dtype)
    assert out.dtype == dt
    assert out.shape == x_shape[:2] + (D * H,)
    check_close(to_time_major(out, batch_first), r_out, dt, "out")
    if kind == "lstm":
        assert isinstance(st, tuple) and len(st) == 2
    for part in state_parts(st):
        assert part.dtype == dt and part.shape == (num_layers * D, B, H)
    check_state_close(st, r_st, dt, "state")

    assert g.dx.dtype == dt and g.dx.shape == x.shape
    check_close(to_time_major(g.dx, batch_first), r_g["dx"], dt, "dx")
    if with_state or g.dstate is not None:
        # With state=None the gradient w.r.t. the zero initial state may be returned or not.
        for part in state_parts(g.dstate):
            assert part.dtype == dt and part.shape == (num_layers * D, B, H)
        check_state_close(g.dstate, r_g["dstate"], dt, "dstate")

    assert set(g.params) == set(sd)
    for name, grad in g.params.items():
        assert grad.dtype == dt and grad.shape == sd[name].shape, name
        label = "d" + name.split("_l")[0] + ("_reverse" if name.endswith("_reverse") else "")
        check_close(grad, r_g["params"][name], dt, label)

    assert g.dh_norm.shape == (num_layers * D, T)
    check_close(g.dh_norm, r_g["dh_norm"], dt, "dh_norm")

    # Inference gives the same numbers as the training forward.
    inf_out, inf_st = m(x, state, lengths=lengths)
    tight = 1e-12 if dt == np.float64 else 1e-6
    check_close(inf_out, out, dt, "inference-vs-forward", tol=tight)
    check_state_close(inf_st, st, dt, "inference-vs-forward", tol=tight)
    return m


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=["L1", "L2", "L3"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference(kind, num_layers, bidirectional, batch_first, dtype, case, rng):
    run_case(kind, num_layers, bidirectional, batch_first, dtype, *case, rng)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch,hidden", [(3, 256), (8, 128)], ids=["B3H256", "B8H128"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]], ids=["full", "lengths"])
@pytest.mark.parametrize("kind", KINDS)
def test_step_projection_matches_reference(kind, lengths, dtype, batch, hidden, bias, rng):
    # From 256 hidden units (128 in a call of 8 rows or more) the input projection runs
    # step by step inside the step loop (one slab of gates reused by every step of an
    # inference call; the LSTM's and RNN's in the same pass as the recurrent product);
    # smaller layers, as in the cases above, project a chunk of steps with one GEMM first.
    if lengths is not None:
        lengths = (lengths * batch)[:batch]
    run_case(kind, 2, True, False, dtype, 4, batch, 5, hidden, True, True, rng,
             lengths=lengths, bias=bias)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("kind", KINDS)
def test_no_bias_matches_reference(kind, num_layers, bidirectional, dtype, rng):
    m = run_case(
        kind, num_layers, bidirectional, False, dtype, 4, 3, 3, 5, True, True, rng, bias=False
    )
    assert not any(k.startswith("bias") for k in m.state_dict())


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("kind", KINDS)
def test_lengths_match_reference(kind, num_layers, bidirectional, batch_first, dtype, rng):
    T, B = 6, 4
    lengths = np.array([3, 6, 1, 4], dtype=np.int64)
    run_case(
        kind,
        num_layers,
        bidirectional,
        batch_first,
        dtype,
        T,
        B,
        3,
        4,
        True,
        True,
        rng,
        lengths=lengths,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_inference_returns_pair(kind, rng):
    m = make_model(kind, 3, 4, 2, bidirectional=True, dtype=np.float64, seed=1)
    x = rng.standard_normal((5, 2, 3))
    res = m(x)
    assert isinstance(res, tuple) and len(res) == 2
    out, st = res
    out2, st2, _ = m.forward(x)
    np.testing.assert_allclose(out, out2, rtol=1e-12, atol=1e-14)
    for a, b in zip(state_parts(st), state_parts(st2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_default_state_is_zeros(kind, rng):
    m = make_model(kind, 3, 4, 2, bidirectional=True, dtype=np.float64, seed=2)
    x = rng.standard_normal((4, 3, 3))
    zeros = random_state(rng, kind, 2, 2, 3, 4, np.float64, scale=0.0)
    out_none, st_none = m(x)
    out_zero, st_zero = m(x, zeros)
    np.testing.assert_array_equal(out_none, out_zero)
    for a, b in zip(state_parts(st_none), state_parts(st_zero), strict=True):
        np.testing.assert_array_equal(a, b)
