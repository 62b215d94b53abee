"""Variable-length batches: a padded batch equals running each sequence alone.

For random lengths (any order, padding of x and d_out filled with random values that must
be ignored): outputs (zero on padding), final states, dx (zero on padding), dstate, weight
gradients (the sum of the per-sequence gradients) and dh_norm: dh_norm[:, t] squared is
the sum over sequences of their squared norms, where a padded step contributes the
gradient carried through it unchanged (d_state for the forward direction, the gradient
w.r.t. the initial state for the reverse direction), as tests/reference.py defines it.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    KINDS,
    check_close,
    check_state_close,
    copy_state,
    make_model,
    map_state,
    random_state,
    state_parts,
)

T, B, IN, H = 6, 4, 3, 5
DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["f32", "f64"]
TIGHT = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-6}


def seq_slice(a, b, n, batch_first):
    """Sequence b's first n steps, keeping a batch axis of size 1."""
    return a[b : b + 1, :n] if batch_first else a[:n, b : b + 1]


def seq_at(a, b, batch_first):
    """Sequence b (all T steps), shape (T, ...)."""
    return a[b] if batch_first else a[:, b]


def state_col(state, b):
    return map_state(lambda s: np.ascontiguousarray(s[:, b : b + 1]), state)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=["L1", "L2", "L3"])
@pytest.mark.parametrize("kind", KINDS)
def test_padded_batch_equals_separate_sequences(
    kind, num_layers, bidirectional, batch_first, dtype, rng
):
    dt = np.dtype(dtype)
    D = 2 if bidirectional else 1
    m = make_model(
        kind,
        IN,
        H,
        num_layers,
        batch_first=batch_first,
        bidirectional=bidirectional,
        dtype=dtype,
        seed=11,
    )
    lengths = rng.permutation(np.array([T, 1, 3, 5], dtype=np.int64))
    x_shape = (B, T, IN) if batch_first else (T, B, IN)
    x = rng.standard_normal(x_shape).astype(dtype)
    state = random_state(rng, kind, num_layers, D, B, H, dtype)
    d_out = rng.standard_normal(x_shape[:2] + (D * H,)).astype(dtype)
    d_state = random_state(rng, kind, num_layers, D, B, H, dtype, 1.0)
    lengths_before = lengths.copy()

    out, st, tape = m.forward(x, state, lengths=lengths)
    g = m.backward(tape, d_out, d_state)
    np.testing.assert_array_equal(lengths, lengths_before)

    param_sum = {k: np.zeros(v.shape) for k, v in g.params.items()}
    dh_sq = np.zeros((num_layers * D, T))
    for b in range(B):
        n = int(lengths[b])
        x_b = np.ascontiguousarray(seq_slice(x, b, n, batch_first))
        out_b, st_b, tape_b = m.forward(x_b, state_col(state, b))
        g_b = m.backward(
            tape_b, np.ascontiguousarray(seq_slice(d_out, b, n, batch_first)), state_col(d_state, b)
        )

        out_seq = seq_at(out, b, batch_first)
        check_close(out_seq[:n], seq_at(out_b, 0, batch_first), dt, "len-vs-single out")
        assert np.all(out_seq[n:] == 0), f"out of sequence {b} not zero after its length {n}"
        check_state_close(state_col(st, b), st_b, dt, "len-vs-single state")

        dx_seq = seq_at(g.dx, b, batch_first)
        check_close(dx_seq[:n], seq_at(g_b.dx, 0, batch_first), dt, "len-vs-single dx")
        assert np.all(dx_seq[n:] == 0), f"dx of sequence {b} not zero after its length {n}"
        check_state_close(state_col(g.dstate, b), g_b.dstate, dt, "len-vs-single dstate")

        for k, v in g_b.params.items():
            param_sum[k] += v
        dh_sq[:, :n] += np.asarray(g_b.dh_norm, dtype=np.float64) ** 2
        # Padded steps carry the state unchanged, so dL/dh there is the gradient carried
        # through them: d_state for the forward direction, and for the reverse direction
        # (which carries its initial state through the padding) the gradient w.r.t. it.
        dh_final = state_parts(d_state)[0][:, b].astype(np.float64)
        dh_init = state_parts(g_b.dstate)[0][:, 0].astype(np.float64)
        for idx in range(num_layers * D):
            carried = dh_final[idx] if idx % D == 0 else dh_init[idx]
            dh_sq[idx, n:] += np.sum(carried**2)

    for k, v in g.params.items():
        check_close(v, param_sum[k], dt, "len-vs-single dparams")
    check_close(g.dh_norm, np.sqrt(dh_sq), dt, "len-vs-single dh_norm")

    # Inference agrees with the training forward.
    inf_out, inf_st = m(x, state, lengths=lengths)
    check_close(inf_out, out, dt, "inference-vs-forward", tol=TIGHT[dt])
    check_state_close(inf_st, st, dt, "inference-vs-forward", tol=TIGHT[dt])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", KINDS)
def test_full_lengths_equal_no_lengths(kind, bidirectional, dtype, rng):
    dt = np.dtype(dtype)
    D = 2 if bidirectional else 1
    m = make_model(kind, IN, H, 2, bidirectional=bidirectional, dtype=dtype, seed=5)
    x = rng.standard_normal((T, B, IN)).astype(dtype)
    state = random_state(rng, kind, 2, D, B, H, dtype)
    d_out = rng.standard_normal((T, B, D * H)).astype(dtype)
    d_state = random_state(rng, kind, 2, D, B, H, dtype, 1.0)

    out0, st0, tape0 = m.forward(x, state)
    g0 = m.backward(tape0, d_out, d_state)
    out1, st1, tape1 = m.forward(x, state, lengths=np.full(B, T, dtype=np.int64))
    g1 = m.backward(tape1, d_out, d_state)

    tol = TIGHT[dt]
    check_close(out1, out0, dt, "full-lengths out", tol=tol)
    check_state_close(st1, st0, dt, "full-lengths state", tol=tol)
    check_close(g1.dx, g0.dx, dt, "full-lengths dx", tol=tol)
    check_state_close(g1.dstate, g0.dstate, dt, "full-lengths dstate", tol=tol)
    for k in g0.params:
        check_close(g1.params[k], g0.params[k], dt, "full-lengths dparams", tol=tol)
    check_close(g1.dh_norm, g0.dh_norm, dt, "full-lengths dh_norm", tol=tol)


@pytest.mark.parametrize("kind", KINDS)
def test_lengths_integer_dtypes_agree(kind, rng):
    m = make_model(kind, IN, H, 1, bidirectional=True, dtype=np.float64, seed=9)
    x = rng.standard_normal((T, B, IN))
    base = np.array([2, 6, 1, 4])
    ref_out, ref_st = m(x, lengths=base.astype(np.int64))
    for int_dtype in (np.int32, np.int16, np.uint32, np.uint64):
        out, st = m(x, lengths=base.astype(int_dtype))
        np.testing.assert_array_equal(out, ref_out, err_msg=str(int_dtype))
        for a, b in zip(state_parts(st), state_parts(ref_st), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=str(int_dtype))


def _padding_case(kind, rng, x_junk_value, d_out_junk_value):
    m = make_model(kind, IN, H, 2, bidirectional=True, dtype=np.float64, seed=13)
    lengths = np.array([4, 6, 2, 5], dtype=np.int64)
    x = rng.standard_normal((T, B, IN))
    d_out = rng.standard_normal((T, B, 2 * H))
    state = random_state(rng, kind, 2, 2, B, H, np.float64)
    x_junk, d_out_junk = x.copy(), d_out.copy()
    for b, n in enumerate(lengths):
        x_junk[n:, b] = x_junk_value
        d_out_junk[n:, b] = d_out_junk_value
    out0, st0, tape0 = m.forward(x, copy_state(state), lengths=lengths)
    g0 = m.backward(tape0, d_out)
    out1, st1, tape1 = m.forward(x_junk, copy_state(state), lengths=lengths)
    g1 = m.backward(tape1, d_out_junk)
    np.testing.assert_array_equal(out1, out0)
    for a, b in zip(state_parts(st1), state_parts(st0), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(g1.dx, g0.dx)
    for a, b in zip(state_parts(g1.dstate), state_parts(g0.dstate), strict=True):
        np.testing.assert_array_equal(a, b)
    for k in g0.params:
        np.testing.assert_array_equal(g1.params[k], g0.params[k], err_msg=k)
    np.testing.assert_array_equal(g1.dh_norm, g0.dh_norm)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_content_is_ignored(kind, rng):
    """Finite junk in padded x or d_out positions changes nothing."""
    _padding_case(kind, rng, 1e6, 1e30)


@pytest.mark.parametrize("kind", KINDS)
def test_nan_padding_is_ignored(kind, rng):
    """Sequences are processed as if run alone, so even NaN padding must not leak."""
    _padding_case(kind, rng, np.nan, np.nan)
