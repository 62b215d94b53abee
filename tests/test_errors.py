"""Bad input: clear ValueError/TypeError naming the argument, never a crash or wrong numbers.

Also the accepted-but-converted inputs: Fortran-ordered, non-contiguous, read-only,
broadcast and other-float-dtype arrays give the same results as the C-contiguous array of
the model's dtype, and the caller's arrays are never modified.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import KINDS, copy_state, make_model, map_state, random_state, state_parts

T, B, IN, H, L = 5, 3, 4, 6, 2

# Regexes that find the argument's name as a word ("state" must not match "d_state").
X = r"\bx\b"
STATE = r"(?<!d_)\bstate\b"
D_OUT = r"\bd_out\b"
D_STATE = r"\bd_state\b"
LENGTHS = r"\blengths\b"
TAPE = r"\btape\b"


def build(kind, dtype=np.float64, seed=0, **kwargs):
    kwargs.setdefault("bidirectional", True)
    return make_model(kind, IN, H, L, dtype=dtype, seed=seed, **kwargs)


def inputs(kind, rng, dtype=np.float64, D=2):
    x = rng.standard_normal((T, B, IN)).astype(dtype)
    state = random_state(rng, kind, L, D, B, H, dtype)
    d_out = rng.standard_normal((T, B, D * H)).astype(dtype)
    d_state = random_state(rng, kind, L, D, B, H, dtype, 1.0)
    return x, state, d_out, d_state


def both_calls(m, x, state=None, lengths=None):
    """Run inference and training forward; both must raise the same way."""
    return [lambda: m(x, state, lengths=lengths), lambda: m.forward(x, state, lengths=lengths)]


# ---------------------------------------------------------------------------------------
# x
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "shape",
    [(T, B), (T, B, IN, 1), (T,), (T, B, IN + 1), (T, B, IN - 1), (0, B, IN), (T, 0, IN)],
    ids=["rank2", "rank4", "rank1", "in+1", "in-1", "T0", "B0"],
)
def test_x_bad_shape(kind, shape, rng):
    m = build(kind)
    x = rng.standard_normal(shape)
    for call in both_calls(m, x):
        with pytest.raises(ValueError, match=X):
            call()


@pytest.mark.parametrize("kind", KINDS)
def test_x_zero_length_batch_first(kind):
    m = build(kind, batch_first=True)
    for shape in [(0, T, IN), (B, 0, IN)]:
        for call in both_calls(m, np.zeros(shape)):
            with pytest.raises(ValueError, match=X):
                call()


@pytest.mark.parametrize("kind", KINDS)
def test_x_scalar(kind):
    m = build(kind)
    for call in both_calls(m, np.float64(1.0)):
        with pytest.raises(ValueError, match=X):
            call()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad_dtype", [np.int64, np.int32, np.bool_, np.complex128, object])
def test_x_bad_dtype(kind, bad_dtype):
    m = build(kind)
    x = np.ones((T, B, IN), dtype=bad_dtype)
    for call in both_calls(m, x):
        with pytest.raises(TypeError, match=X):
            call()


# ---------------------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------------------


def _bad_state_shapes():
    good = (L * 2, B, H)
    return {
        "layers": (L * 2 - 1, B, H),
        "batch": (L * 2, B + 1, H),
        "hidden": (L * 2, B, H + 1),
        "rank2": good[1:],
        "rank4": (*good, 1),
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", list(_bad_state_shapes()))
def test_state_bad_shape(kind, which, rng):
    m = build(kind)
    x = rng.standard_normal((T, B, IN))
    bad = rng.standard_normal(_bad_state_shapes()[which])
    good = rng.standard_normal((L * 2, B, H))
    candidates = [(bad, good), (good, bad)] if kind == "lstm" else [bad]
    for state in candidates:
        for call in both_calls(m, x, state):
            with pytest.raises(ValueError, match=STATE):
                call()


@pytest.mark.parametrize("kind", KINDS)
def test_state_wrong_structure(kind, rng):
    m = build(kind)
    x = rng.standard_normal((T, B, IN))
    h = rng.standard_normal((L * 2, B, H))
    if kind == "lstm":
        bad_states = [h, (h,), (h, h, h), [h], (h, None)]
    else:
        bad_states = [(h, h), (h,)]
    for state in bad_states:
        for call in both_calls(m, x, state):
            with pytest.raises((ValueError, TypeError), match=STATE):
                call()


@pytest.mark.parametrize("kind", KINDS)
def test_state_bad_dtype(kind, rng):
    m = build(kind)
    x = rng.standard_normal((T, B, IN))
    h = np.ones((L * 2, B, H), dtype=np.int64)
    state = (h, h) if kind == "lstm" else h
    for call in both_calls(m, x, state):
        with pytest.raises(TypeError, match=STATE):
            call()
    if kind == "lstm":
        good = np.zeros((L * 2, B, H))
        for call in both_calls(m, x, (good, h.astype(np.complex128))):
            with pytest.raises(TypeError, match=STATE):
                call()


# ---------------------------------------------------------------------------------------
# d_out / d_state
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
def test_d_out_bad_shape(kind, batch_first, rng):
    m = build(kind, batch_first=batch_first)
    x_shape = (B, T, IN) if batch_first else (T, B, IN)
    x = rng.standard_normal(x_shape)
    _, _, tape = m.forward(x)
    good = x_shape[:2] + (2 * H,)
    bad_shapes = [
        good[:2] + (H,),
        (good[0] + 1,) + good[1:],
        (good[0], good[1] + 1, good[2]),
        good[::-1],
        good[:2],
        (*good, 1),
    ]
    if T != B:
        bad_shapes.append((good[1], good[0], good[2]))  # the other layout
    for shape in bad_shapes:
        with pytest.raises(ValueError, match=D_OUT):
            m.backward(tape, np.ones(shape))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad_dtype", [np.int64, np.bool_, np.complex64, object])
def test_d_out_bad_dtype(kind, bad_dtype, rng):
    m = build(kind)
    _, _, tape = m.forward(rng.standard_normal((T, B, IN)))
    with pytest.raises(TypeError, match=D_OUT):
        m.backward(tape, np.ones((T, B, 2 * H), dtype=bad_dtype))


@pytest.mark.parametrize("kind", KINDS)
def test_d_state_bad_shape_and_structure(kind, rng):
    m = build(kind)
    x, _, d_out, _ = inputs(kind, rng)
    _, _, tape = m.forward(x)
    good = rng.standard_normal((L * 2, B, H))
    for shape in _bad_state_shapes().values():
        bad = rng.standard_normal(shape)
        candidates = [(bad, good), (good, bad)] if kind == "lstm" else [bad]
        for d_state in candidates:
            with pytest.raises(ValueError, match=D_STATE):
                m.backward(tape, d_out, d_state)
    structures = [good, (good,), (good, good, good)] if kind == "lstm" else [(good, good)]
    for d_state in structures:
        with pytest.raises((ValueError, TypeError), match=D_STATE):
            m.backward(tape, d_out, d_state)
    h_int = np.ones((L * 2, B, H), dtype=np.int32)
    with pytest.raises(TypeError, match=D_STATE):
        m.backward(tape, d_out, (h_int, h_int) if kind == "lstm" else h_int)
    # After all those failures the tape still works.
    g = m.backward(tape, d_out)
    assert np.all(np.isfinite(g.dx))


# ---------------------------------------------------------------------------------------
# lengths
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "lengths",
    [
        np.array([T, T], dtype=np.int64),
        np.array([T] * (B + 1), dtype=np.int64),
        np.full((B, 1), T, dtype=np.int64),
        np.array(T, dtype=np.int64),
        np.array([T, 0, T], dtype=np.int64),
        np.array([T, T + 1, 1], dtype=np.int64),
        np.array([T, -1, 2], dtype=np.int64),
        np.array([T, 2**40, 2], dtype=np.int64),
        np.array([T, -(2**40), 2], dtype=np.int64),
    ],
    ids=["short", "long", "2d", "scalar", "zero", "above-T", "negative", "huge", "huge-neg"],
)
def test_lengths_bad_shape_or_values(kind, lengths, rng):
    m = build(kind)
    x = rng.standard_normal((T, B, IN))
    for call in both_calls(m, x, None, lengths):
        with pytest.raises(ValueError, match=LENGTHS):
            call()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad_dtype", [np.float64, np.float32, np.complex128, object])
def test_lengths_bad_dtype(kind, bad_dtype, rng):
    m = build(kind)
    x = rng.standard_normal((T, B, IN))
    lengths = np.array([T, 2, 3], dtype=bad_dtype)
    for call in both_calls(m, x, None, lengths):
        with pytest.raises((TypeError, ValueError), match=LENGTHS):
            call()


@pytest.mark.parametrize("kind", KINDS)
def test_lengths_bool_rejected(kind, rng):
    m = build(kind)
    x = rng.standard_normal((T, B, IN))
    for call in both_calls(m, x, None, np.array([True, True, True])):
        with pytest.raises((TypeError, ValueError), match=LENGTHS):
            call()


# ---------------------------------------------------------------------------------------
# tape
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_tape_from_other_instance_same_config(kind, rng):
    a = build(kind, seed=1)
    b = build(kind, seed=1)
    x, _, d_out, _ = inputs(kind, rng)
    _, _, tape = a.forward(x)
    with pytest.raises(ValueError, match=TAPE):
        b.backward(tape, d_out)
    # The tape still works with its own model.
    a.backward(tape, d_out)


@pytest.mark.parametrize("kind", KINDS)
def test_tape_outlives_its_model(kind, rng):
    x, _, d_out, _ = inputs(kind, rng)

    def orphan_tape():
        return build(kind, seed=1).forward(x)[2]

    # The next model built may take the freed model's memory (and id()); not its tapes.
    tape = orphan_tape()
    other = build(kind, seed=1)
    with pytest.raises(ValueError, match=TAPE):
        other.backward(tape, d_out)


@pytest.mark.parametrize("kind", KINDS)
def test_tape_from_other_dtype(kind, rng):
    m32 = build(kind, dtype=np.float32, seed=1)
    m64 = build(kind, dtype=np.float64, seed=1)
    x, _, d_out, _ = inputs(kind, rng)
    _, _, tape32 = m32.forward(x.astype(np.float32))
    _, _, tape64 = m64.forward(x)
    with pytest.raises(ValueError, match=TAPE):
        m64.backward(tape32, d_out)
    with pytest.raises(ValueError, match=TAPE):
        m32.backward(tape64, d_out.astype(np.float32))


@pytest.mark.parametrize("kind", KINDS)
def test_tape_from_other_config(kind, rng):
    m = build(kind)
    x, _, d_out, _ = inputs(kind, rng)
    x_bf = np.ascontiguousarray(np.swapaxes(x, 0, 1))
    other_kind = {"rnn_tanh": "lstm", "rnn_relu": "rnn_tanh", "lstm": "gru", "gru": "lstm"}[kind]
    others = [
        (make_model(kind, IN, H, L, bidirectional=False, dtype=np.float64, seed=0), x),
        (make_model(kind, IN, H, L + 1, bidirectional=True, dtype=np.float64, seed=0), x),
        (
            make_model(
                kind, IN, H, L, bidirectional=True, batch_first=True, dtype=np.float64, seed=0
            ),
            x_bf,
        ),
        (make_model(other_kind, IN, H, L, bidirectional=True, dtype=np.float64, seed=0), x),
    ]
    for other, x_other in others:
        _, _, tape = other.forward(x_other)
        with pytest.raises(ValueError, match=TAPE):
            m.backward(tape, d_out)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [None, "tape", 3, np.zeros(3)], ids=["none", "str", "int", "array"])
def test_tape_not_a_tape(kind, bad, rng):
    m = build(kind)
    d_out = rng.standard_normal((T, B, 2 * H))
    with pytest.raises((TypeError, ValueError), match=TAPE):
        m.backward(bad, d_out)


# ---------------------------------------------------------------------------------------
# constructor
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((4, 0, 1), "hidden_size"),
        ((4, -3, 1), "hidden_size"),
        ((0, 4, 1), "input_size"),
        ((-1, 4, 1), "input_size"),
        ((4, 4, 0), "num_layers"),
        ((4, 4, -1), "num_layers"),
    ],
    ids=["hidden0", "hidden-neg", "input0", "input-neg", "layers0", "layers-neg"],
)
def test_constructor_bad_sizes(kind, args, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        make_model(kind, *args)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad_dtype", [np.int32, np.int64, np.bool_, np.complex128, np.float16])
def test_constructor_bad_dtype(kind, bad_dtype):
    with pytest.raises((TypeError, ValueError), match=r"\bdtype\b"):
        make_model(kind, 4, 4, dtype=bad_dtype)


@pytest.mark.parametrize("nonlinearity", ["sigmoid", "Tanh", "", "gelu"])
def test_rnn_bad_nonlinearity(nonlinearity):
    import bptt

    with pytest.raises(ValueError, match="nonlinearity"):
        bptt.RNN(4, 4, nonlinearity=nonlinearity)


def test_rnn_nonlinearity_must_be_a_string():
    import bptt

    with pytest.raises(TypeError, match="nonlinearity: expected 'tanh' or 'relu', got ndarray"):
        bptt.RNN(4, 4, nonlinearity=np.array(["tanh", "relu"]))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arg", ["bias", "batch_first", "bidirectional"])
@pytest.mark.parametrize("value", [np.array([1, 2]), "yes", None, 2, 0.5],
                         ids=["array", "str", "None", "two", "half"])
def test_constructor_switches_must_be_true_or_false(kind, arg, value):
    # np.array([1, 2]) used to fail with NumPy's "truth value of an array is ambiguous".
    with pytest.raises(TypeError, match=rf"^{arg}: expected True or False, got"):
        make_model(kind, 4, 4, **{arg: value})


@pytest.mark.parametrize("kind", KINDS)
def test_constructor_switches_accept_bools_of_any_kind(kind):
    m = make_model(kind, 4, 4, bias=np.True_, batch_first=0, bidirectional=1)
    assert (m.bias, m.batch_first, m.bidirectional) == (True, False, True)


@pytest.mark.parametrize(("seed", "exc", "message"), [
    (-1, ValueError, r"seed: expected an int >= 0, got -1"),
    (1.5, TypeError, r"seed: expected an int >= 0, a numpy Generator or None, got float"),
    ("0", TypeError, r"seed: .* got str"),
    (True, TypeError, r"seed: .* got bool"),
])
def test_bad_seed_is_named(seed, exc, message):
    import bptt

    with pytest.raises(exc, match=message):
        bptt.LSTM(2, 3, seed=seed)
    with pytest.raises(exc, match=message):
        bptt.Linear(2, 3, seed=seed)


def test_seed_may_be_a_generator_or_seed_sequence():
    import bptt

    a = bptt.GRU(2, 3, seed=np.random.default_rng(5)).state_dict()
    b = bptt.GRU(2, 3, seed=np.random.SeedSequence(5)).state_dict()
    c = bptt.GRU(2, 3, seed=5).state_dict()
    for k in c:
        np.testing.assert_array_equal(a[k], c[k])
        np.testing.assert_array_equal(b[k], c[k])


def test_dtype_none_is_refused():
    # NumPy reads None as float64; bptt's default is float32: refused, not guessed.
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got None"):
        make_model("lstm", 4, 4, dtype=None)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sizes", [(1, 1, 2**40), (2**40, 1, 1), (1, 2**24, 1), (1, 2**40, 1),
                                   (2**70, 1, 1), (1, 1, 2**100)],
                         ids=["layers2^40", "input2^40", "hidden2^24", "hidden2^40",
                              "input2^70", "layers2^100"])
def test_impossible_sizes_fail_at_once(kind, sizes):
    """Parameters that cannot fit are refused from the sizes alone, before anything is
    allocated: MemoryError naming the model, its sizes and the bytes (ValueError when the
    bytes are beyond what a process can address). (No wall-clock limit: that it fails
    before allocating is what the message's byte count shows.)"""
    with pytest.raises((MemoryError, ValueError)) as err:
        make_model(kind, *sizes)
    msg = str(err.value)
    names = (f"input_size={sizes[0]}, hidden_size={sizes[1]}, num_layers={sizes[2]}")
    assert names in msg, msg
    assert re.search(r"\d+ bytes", msg), msg
    if isinstance(err.value, MemoryError):
        assert msg.startswith("cannot allocate "), msg


def test_lstm_with_2_to_the_40_layers_says_why():
    import bptt

    with pytest.raises(MemoryError, match=(
            r"^cannot allocate 70368744177664 bytes for the parameters \(17592186044416 "
            r"float32 values in 4398046511104 arrays\) of LSTM\(input_size=1, hidden_size=1, "
            r"num_layers=1099511627776, bidirectional=False\): this process can have at most "
            r"\d+ bytes$")):
        bptt.LSTM(1, 1, num_layers=2**40)


def test_linear_of_impossible_size_fails_at_once():
    import bptt

    with pytest.raises(MemoryError, match=r"Linear\(in_features=1099511627776, out_features=3\)"):
        bptt.Linear(2**40, 3)
    with pytest.raises(ValueError, match=r"Linear\(in_features=1, out_features=\d+\).*address"):
        bptt.Linear(1, 2**70)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_parameter_allocation_failure_names_the_parameter():
    """Parameters that pass the size check but still cannot be allocated (the address
    space is taken by other things): NumPy's MemoryError, re-raised naming the parameter,
    and the same model builds once there is room."""
    code = """
import re, resource
import bptt
used = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) << 10
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, (used + (600 << 20), hard))
try:
    bptt.LSTM(4096, 4096)                 # 512 MiB of float32 parameters
except MemoryError as e:
    print("MemoryError:", e)
resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
bptt.LSTM(4096, 4096)
print("rebuilt")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert re.search(r"MemoryError: cannot allocate \d+ bytes for the parameter weight_\w+ "
                     r"\(16384, 4096\) of LSTM", res.stdout), res.stdout
    assert "rebuilt" in res.stdout


# ---------------------------------------------------------------------------------------
# Non-finite values
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", KINDS)
def test_nan_in_x_propagates(kind, dtype, rng):
    m = make_model(kind, IN, H, L, dtype=dtype, seed=0)
    x = rng.standard_normal((T, B, IN)).astype(dtype)
    x[2, 0, 1] = np.nan
    for out, st in (m(x), m.forward(x)[:2]):
        assert np.all(np.isnan(out[2, 0])), "NaN in x[2, 0] did not reach out[2, 0]"
        assert np.all(np.isfinite(out[:2])), "NaN leaked into earlier steps"
        assert np.all(np.isfinite(out[:, 1:])), "NaN leaked into other batch entries"
        assert np.all(np.isfinite(state_parts(st)[0][:, 1:]))
    _, _, tape = m.forward(x)
    g = m.backward(tape, rng.standard_normal((T, B, H)).astype(dtype))
    assert g.dx.shape == x.shape  # no crash is the requirement; NaN gradients are fine


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [np.inf, -np.inf, 1e300])
def test_nonfinite_and_huge_inputs_do_not_crash(kind, value, rng):
    m = build(kind)
    x, state, d_out, d_state = inputs(kind, rng)
    x[1, 1, 0] = value
    out, _, tape = m.forward(x, state)
    assert out.shape == (T, B, 2 * H)
    g = m.backward(tape, d_out, d_state)
    assert g.dx.shape == x.shape
    # Non-finite gradients in, no crash either.
    d_out[0, 0, 0] = np.nan
    _, _, tape = m.forward(x, state)
    m.backward(tape, d_out, d_state)
    # The model is not corrupted.
    x_ok = rng.standard_normal((T, B, IN))
    assert np.all(np.isfinite(m(x_ok)[0]))


# ---------------------------------------------------------------------------------------
# Accepted layouts and dtypes: same results, caller arrays untouched
# ---------------------------------------------------------------------------------------


def _results(m, x, state, d_out, d_state, lengths=None):
    inf_out, inf_st = m(x, state, lengths=lengths)
    out, st, tape = m.forward(x, state, lengths=lengths)
    g = m.backward(tape, d_out, d_state)
    arrays = [inf_out, *state_parts(inf_st), out, *state_parts(st), g.dx, g.dh_norm]
    arrays += list(state_parts(g.dstate))
    arrays += [g.params[k] for k in sorted(g.params)]
    return arrays


def _assert_same(got, expected, what):
    assert len(got) == len(expected)
    for i, (a, e) in enumerate(zip(got, expected, strict=True)):
        assert a.dtype == e.dtype, f"{what}: result {i} dtype {a.dtype} != {e.dtype}"
        np.testing.assert_array_equal(a, e, err_msg=f"{what}: result {i}")


def _layouts(a):
    """Ways to pass the same values with another memory layout."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    big[..., ::2] = a
    ro = a.copy()
    ro.flags.writeable = False
    rev = a[::-1].copy()[::-1]
    return {
        "fortran": np.asfortranarray(a),
        "strided": big[..., ::2],
        "reversed": rev,
        "transposed-back": np.ascontiguousarray(np.swapaxes(a, 0, 1)).swapaxes(0, 1),
        "readonly": ro,
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", KINDS)
def test_layouts_give_identical_results(kind, dtype, rng):
    m = build(kind, dtype=dtype)
    x, state, d_out, d_state = inputs(kind, rng, dtype)
    lengths = np.array([T, 2, 4], dtype=np.int64)
    expected = _results(m, x, state, d_out, d_state, lengths)
    for name in _layouts(x):
        xs = _layouts(x)[name]
        ss = map_state(lambda s, n=name: _layouts(s)[n], state)
        ds = _layouts(d_out)[name]
        dss = map_state(lambda s, n=name: _layouts(s)[n], d_state)
        ls = np.zeros(2 * B, dtype=np.int64)
        ls[::2] = lengths
        got = _results(m, xs, ss, ds, dss, ls[::2])
        _assert_same(got, expected, name)


@pytest.mark.parametrize("kind", KINDS)
def test_broadcast_inputs(kind, rng):
    m = build(kind)
    row = rng.standard_normal(IN)
    x = np.broadcast_to(row, (T, B, IN))
    assert x.strides[:2] == (0, 0)
    expected = m(np.ascontiguousarray(x))
    got = m(x)
    np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("model_dtype", "input_dtype"),
    [
        (np.float32, np.float64),
        (np.float64, np.float32),
        (np.float32, np.float16),
        (np.float64, np.float16),
    ],
    ids=["f32<-f64", "f64<-f32", "f32<-f16", "f64<-f16"],
)
def test_other_float_dtypes_are_converted(kind, model_dtype, input_dtype, rng):
    m = build(kind, dtype=model_dtype)
    x, state, d_out, d_state = inputs(kind, rng, input_dtype)

    def conv(a):
        return a.astype(model_dtype)

    expected = _results(m, conv(x), map_state(conv, state), conv(d_out), map_state(conv, d_state))
    got = _results(m, x, state, d_out, d_state)
    _assert_same(got, expected, f"{np.dtype(input_dtype).name} into {np.dtype(model_dtype).name}")
    assert got[0].dtype == np.dtype(model_dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", KINDS)
def test_caller_arrays_not_modified(kind, dtype, rng):
    m = build(kind, dtype=dtype)
    x, state, d_out, d_state = inputs(kind, rng, dtype)
    lengths = np.array([3, T, 1], dtype=np.int64)
    saved = [x.copy(), copy_state(state), d_out.copy(), copy_state(d_state), lengths.copy()]
    weights = m.state_dict()
    for lens in (None, lengths):
        m(x, state, lengths=lens)
        _, _, tape = m.forward(x, state, lengths=lens)
        g = m.backward(tape, d_out, d_state)
        # Writing into the returned gradients must not touch the caller's arrays either.
        g.dx[...] = 7
        for part in state_parts(g.dstate):
            part[...] = 7
    np.testing.assert_array_equal(x, saved[0])
    for a, b in zip(state_parts(state), state_parts(saved[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(d_out, saved[2])
    for a, b in zip(state_parts(d_state), state_parts(saved[3]), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(lengths, saved[4])
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, weights[k], err_msg=k)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [None, [1, 2], 3, "weights"], ids=["None", "list", "int", "str"])
def test_load_state_dict_of_no_dict(kind, bad):
    m = build(kind)
    with pytest.raises(TypeError, match=r"^state_dict: expected a dict of arrays .* got "):
        m.load_state_dict(bad)


@pytest.mark.parametrize("kind", KINDS)
def test_load_state_dict_with_odd_keys(kind):
    m = build(kind)
    sd = m.state_dict()
    sd[1] = sd["weight_ih_l0"]
    sd[("a",)] = sd["weight_ih_l0"]
    with pytest.raises(ValueError, match=r"state_dict: missing keys \[\], unknown keys "):
        m.load_state_dict(sd)


@pytest.mark.parametrize("kind", KINDS)
def test_ragged_inputs_are_named(kind):
    m = build(kind)
    with pytest.raises(ValueError, match=r"^x: expected a floating-point array .* NumPy cannot "
                                         r"make an array of"):
        m([[[1.0]], [[1.0, 2.0]]])
    with pytest.raises(ValueError, match=r"^lengths: .* NumPy cannot make an array of"):
        m(np.zeros((T, B, IN)), lengths=[[1], [1, 2]])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("budget", [2**64, 2**100, -1], ids=["2^64", "2^100", "-1"])
def test_memory_budget_out_of_range_is_named(kind, budget, rng):
    # 2**64 used to be an OverflowError ("int too big to convert") from the bindings.
    m = build(kind)
    with pytest.raises(ValueError, match=rf"memory_budget: expected a number of bytes from 0 "
                                         rf"to \d+ \(None for no limit\), got {budget}"):
        m.forward(rng.standard_normal((T, B, IN)), memory_budget=budget)


@pytest.mark.parametrize("kind", KINDS)
def test_model_still_works_after_errors(kind, rng):
    m = build(kind)
    x, state, d_out, _ = inputs(kind, rng)
    before = m(x, state)[0]
    bad_calls = [
        lambda: m(x[:, :, :-1]),
        lambda: m(x.astype(np.int64)),
        lambda: m(x, np.zeros((1, 1, 1))),
        lambda: m(x, lengths=np.array([0, 1, 2])),
        lambda: m.backward(m.forward(x)[2], d_out[:, :, :-1]),
    ]
    for call in bad_calls:
        with pytest.raises((ValueError, TypeError)):
            call()
    np.testing.assert_array_equal(m(x, state)[0], before)


def test_error_message_names_expected_and_given_shape(rng):
    """The message states the expected and the given shape (DESIGN.md)."""
    m = make_model("lstm", IN, H, 1, dtype=np.float64)
    with pytest.raises(ValueError) as info:
        m(rng.standard_normal((T, B, IN + 3)))
    msg = str(info.value)
    assert re.search(X, msg)
    assert str(IN) in msg and str(IN + 3) in msg, msg
