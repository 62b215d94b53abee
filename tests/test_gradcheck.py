"""Central finite differences in float64 through the Python API.

loss = sum(out * R1) + sum(final_state * R2)  (both h and c for the LSTM), so the analytic
gradient is m.backward(tape, R1, R2). Parameters are perturbed in place through the live
``m.params`` arrays; x and state entries on copies.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GATES, KINDS, make_model, random_state, state_parts

EPS = 1e-6
RTOL = 1e-6
ATOL = 1e-8

T, B, IN, H, L = 5, 3, 3, 4, 2
LENGTHS = np.array([5, 2, 4], dtype=np.int64)


def loss(m, x, state, lengths, r_out, r_state):
    out, st = m(x, state, lengths=lengths)
    total = float(np.sum(out * r_out))
    for s, r in zip(state_parts(st), state_parts(r_state), strict=True):
        total += float(np.sum(s * r))
    return total


def central(fn_plus, fn_minus):
    return (fn_plus() - fn_minus()) / (2 * EPS)


def assert_fd(analytic, numeric, what):
    assert abs(analytic - numeric) <= ATOL + RTOL * max(abs(analytic), abs(numeric)), (
        f"{what}: analytic {analytic!r} vs finite difference {numeric!r}"
    )


def perturbed_loss(arr, idx, delta, compute):
    old = arr[idx]
    arr[idx] = old + delta
    try:
        return compute()
    finally:
        arr[idx] = old


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", KINDS)
def test_finite_differences(kind, bidirectional, use_lengths, batch_first, rng):
    D = 2 if bidirectional else 1
    m = make_model(
        kind,
        IN,
        H,
        L,
        batch_first=batch_first,
        bidirectional=bidirectional,
        dtype=np.float64,
        seed=7,
    )
    x_shape = (B, T, IN) if batch_first else (T, B, IN)
    x = rng.standard_normal(x_shape)
    state = random_state(rng, kind, L, D, B, H, np.float64)
    lengths = LENGTHS if use_lengths else None
    r_out = rng.standard_normal(x_shape[:2] + (D * H,))
    r_state = random_state(rng, kind, L, D, B, H, np.float64, 1.0)

    _, _, tape = m.forward(x, state, lengths=lengths)
    g = m.backward(tape, r_out, r_state)

    def compute():
        return loss(m, x, state, lengths, r_out, r_state)

    base = compute()
    assert np.isfinite(base)

    # Parameters: one entry in every gate block of every tensor.
    params = m.params
    gates = GATES[kind]
    for name, arr in params.items():
        grad = g.params[name]
        for gate in range(gates):
            row = gate * H + int(rng.integers(H))
            idx = (row,) if arr.ndim == 1 else (row, int(rng.integers(arr.shape[1])))
            num = central(
                lambda a=arr, i=idx: perturbed_loss(a, i, EPS, compute),
                lambda a=arr, i=idx: perturbed_loss(a, i, -EPS, compute),
            )
            assert_fd(float(grad[idx]), num, f"{name}{idx}")
    # The model is unchanged after the perturbations.
    assert compute() == base

    # Inputs: random entries, plus one padded position when lengths are used.
    x_work = x.copy()
    x_idx = [tuple(int(rng.integers(n)) for n in x_shape) for _ in range(6)]
    if use_lengths:
        b = 1
        t = int(LENGTHS[b]) + 1
        x_idx.append((b, t, 0) if batch_first else (t, b, 0))

    def compute_x():
        return loss(m, x_work, state, lengths, r_out, r_state)

    for idx in x_idx:
        num = central(
            lambda i=idx: perturbed_loss(x_work, i, EPS, compute_x),
            lambda i=idx: perturbed_loss(x_work, i, -EPS, compute_x),
        )
        assert_fd(float(g.dx[idx]), num, f"dx{idx}")

    # Initial state entries (h, and c for the LSTM).
    names = ("h0", "c0")
    for part, (s_arr, ds_arr) in enumerate(
        zip(state_parts(state), state_parts(g.dstate), strict=True)
    ):
        s_work = s_arr.copy()
        full_state = list(state_parts(state))
        full_state[part] = s_work
        st = tuple(full_state) if kind == "lstm" else full_state[0]

        def compute_s(st=st):
            return loss(m, x, st, lengths, r_out, r_state)

        for _ in range(4):
            idx = tuple(int(rng.integers(n)) for n in s_arr.shape)
            num = central(
                lambda i=idx, w=s_work, f=compute_s: perturbed_loss(w, i, EPS, f),
                lambda i=idx, w=s_work, f=compute_s: perturbed_loss(w, i, -EPS, f),
            )
            assert_fd(float(ds_arr[idx]), num, f"d{names[part]}{idx}")


@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", KINDS)
def test_dh_norm_top_layer_last_step(kind, bidirectional, use_lengths, rng):
    """At the top layer's last processed step dL/dh = d_out there + d_state (no carry).

    Checked without the reference: the forward direction's last step is T-1 (only when all
    sequences are full length), the reverse direction's last processed step is always t=0.
    """
    D = 2 if bidirectional else 1
    m = make_model(kind, IN, H, L, bidirectional=bidirectional, dtype=np.float64, seed=3)
    x = rng.standard_normal((T, B, IN))
    lengths = LENGTHS if use_lengths else None
    d_out = rng.standard_normal((T, B, D * H))
    d_state = random_state(rng, kind, L, D, B, H, np.float64, 1.0)
    _, _, tape = m.forward(x, None, lengths=lengths)
    g = m.backward(tape, d_out, d_state)
    dh_final = state_parts(d_state)[0]
    top = (L - 1) * D
    if not use_lengths:
        expected = np.linalg.norm(d_out[T - 1, :, :H] + dh_final[top])
        np.testing.assert_allclose(g.dh_norm[top, T - 1], expected, rtol=1e-12)
    if bidirectional:
        expected = np.linalg.norm(d_out[0, :, H:] + dh_final[top + 1])
        np.testing.assert_allclose(g.dh_norm[top + 1, 0], expected, rtol=1e-12)
