"""Optimizers against hand-computed steps (PyTorch's formulas), in place over dicts.

The expected numbers are worked out by hand in the comments, from the update rules in
torch.optim's documentation, on scalars p = 1.0 with gradients 0.5 then -0.25 (float64).
"""

from __future__ import annotations

import math

import bptt
import numpy as np
import pytest
from bptt.optim import SGD, Adam, AdamW, RMSprop

LR = 0.1
G1, G2 = 0.5, -0.25


def run(opt_cls, grads=(G1, G2), p0=1.0, **kw):
    p = np.array([p0])
    opt = opt_cls({"p": p}, **kw)
    seen = []
    for g in grads:
        opt.step({"p": np.array([g])})
        seen.append(float(p[0]))
    return seen, opt, p


def test_sgd_plain():
    # p1 = 1 - 0.1*0.5 = 0.95;  p2 = 0.95 + 0.1*0.25 = 0.975
    seen, _, _ = run(SGD, lr=LR)
    assert seen == pytest.approx([0.95, 0.975], abs=1e-15)


def test_sgd_momentum_and_dampening():
    # momentum 0.9: buf1 = 0.5 -> p1 = 0.95; buf2 = 0.45 - 0.25 = 0.2 -> p2 = 0.93
    seen, _, _ = run(SGD, lr=LR, momentum=0.9)
    assert seen == pytest.approx([0.95, 0.93], abs=1e-15)
    # dampening 0.5 (ignored on the first step): buf2 = 0.45 - 0.125 = 0.325 -> 0.9175
    seen, _, _ = run(SGD, lr=LR, momentum=0.9, dampening=0.5)
    assert seen == pytest.approx([0.95, 0.9175], abs=1e-15)


def test_sgd_nesterov():
    # buf1 = 0.5, g' = 0.5 + 0.9*0.5 = 0.95 -> p1 = 0.905
    # buf2 = 0.2, g' = -0.25 + 0.18 = -0.07 -> p2 = 0.912
    seen, _, _ = run(SGD, lr=LR, momentum=0.9, nesterov=True)
    assert seen == pytest.approx([0.905, 0.912], abs=1e-15)


def test_sgd_weight_decay():
    # g1 = 0.5 + 0.1*1 = 0.6 -> p1 = 0.94; g2 = -0.25 + 0.094 = -0.156 -> p2 = 0.9556
    seen, _, _ = run(SGD, lr=LR, weight_decay=0.1)
    assert seen == pytest.approx([0.94, 0.9556], abs=1e-15)


def test_rmsprop_plain():
    # v1 = 0.01*0.25 = 0.0025, avg = 0.05 -> p1 = 1 - 0.1*0.5/0.05 = 0
    # v2 = 0.99*0.0025 + 0.01*0.0625 = 0.003100, p2 = 0 + 0.1*0.25/sqrt(0.0031)
    seen, _, _ = run(RMSprop, lr=LR, eps=0.0)
    assert seen[0] == pytest.approx(0.0, abs=1e-15)
    assert seen[1] == pytest.approx(0.025 / math.sqrt(0.0031), rel=1e-13)


def test_rmsprop_centered_momentum():
    # centered: m1 = 0.005, avg1 = sqrt(0.0025 - 0.000025) = sqrt(0.002475)
    # momentum 0.5: buf1 = 0.5/avg1, p1 = 1 - 0.1*buf1
    a1 = math.sqrt(0.0025 - 0.005**2)
    buf1 = 0.5 / a1
    p1 = 1 - 0.1 * buf1
    # v2 = 0.0031, m2 = 0.99*0.005 + 0.01*(-0.25) = 0.00245, avg2 = sqrt(v2 - m2^2)
    a2 = math.sqrt(0.0031 - 0.00245**2)
    buf2 = 0.5 * buf1 + (-0.25) / a2
    p2 = p1 - 0.1 * buf2
    seen, _, _ = run(RMSprop, lr=LR, eps=0.0, centered=True, momentum=0.5)
    assert seen == pytest.approx([p1, p2], rel=1e-13)


def test_adam_two_steps():
    # step 1: m = 0.05, v = 0.00025; mhat = 0.5, vhat = 0.25 -> p1 = 1 - 0.1*0.5/(0.5+eps)
    eps = 1e-8
    p1 = 1 - 0.1 * 0.5 / (0.5 + eps)
    # step 2: m = 0.045 - 0.025 = 0.02; v = 0.999*0.00025 + 0.001*0.0625 = 0.00031225
    m2, v2 = 0.02, 0.00031225
    bc1, bc2 = 1 - 0.9**2, 1 - 0.999**2
    p2 = p1 - 0.1 / bc1 * m2 / (math.sqrt(v2) / math.sqrt(bc2) + eps)
    seen, opt, _ = run(Adam, lr=LR)
    assert seen == pytest.approx([p1, p2], rel=1e-13)
    assert opt.state["p"]["step"] == 2
    np.testing.assert_allclose(opt.state["p"]["exp_avg"], [m2], rtol=1e-13)
    np.testing.assert_allclose(opt.state["p"]["exp_avg_sq"], [v2], rtol=1e-13)


def test_adam_amsgrad_uses_max():
    # gradients 0.5 then 0.01: v2 < v1 so amsgrad keeps v1 = 0.00025 in the denominator
    eps = 1e-8
    p1 = 1 - 0.1 * 0.5 / (0.5 + eps)
    m2 = 0.9 * 0.05 + 0.1 * 0.01
    vmax = 0.00025
    bc1, bc2 = 1 - 0.9**2, 1 - 0.999**2
    p2 = p1 - 0.1 / bc1 * m2 / (math.sqrt(vmax) / math.sqrt(bc2) + eps)
    seen, _, _ = run(Adam, grads=(0.5, 0.01), lr=LR, amsgrad=True)
    assert seen == pytest.approx([p1, p2], rel=1e-13)


def test_adam_l2_vs_adamw_decoupled():
    eps = 1e-8
    # Adam, weight_decay 0.1: g1 = 0.6 -> mhat = 0.6, vhat = 0.36 -> p1 = 1 - 0.1*0.6/(0.6+eps)
    seen, _, _ = run(Adam, grads=(G1,), lr=LR, weight_decay=0.1)
    assert seen[0] == pytest.approx(1 - 0.1 * 0.6 / (0.6 + eps), rel=1e-13)
    # AdamW, weight_decay 0.1: p <- 1*(1 - 0.01) = 0.99, then 0.99 - 0.1*0.5/(0.5+eps)
    seen, _, _ = run(AdamW, grads=(G1,), lr=LR, weight_decay=0.1)
    assert seen[0] == pytest.approx(0.99 - 0.1 * 0.5 / (0.5 + eps), rel=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_updates_in_place_and_keep_dtype(dtype):
    m = bptt.RNN(2, 3, seed=0, dtype=dtype)
    params = m.params
    before = {k: v.copy() for k, v in params.items()}
    opt = Adam(params, lr=0.01)
    grads = {k: np.ones_like(v, dtype=np.float64) for k, v in params.items()}
    opt.step(grads)
    for k, v in m.params.items():                 # the model's own arrays changed
        assert v.dtype == np.dtype(dtype)
        np.testing.assert_allclose(v, before[k] - 0.01, rtol=0, atol=1e-6)
        assert v is params[k]
    np.testing.assert_array_equal(grads["weight_ih_l0"], 1.0)  # grads untouched


def test_missing_key_is_skipped():
    a, b = np.array([1.0]), np.array([2.0])
    opt = SGD({"a": a, "b": b}, lr=0.5, momentum=0.9)
    opt.step({"a": np.array([1.0])})
    assert a[0] == 0.5 and b[0] == 2.0
    assert "b" not in opt.state


@pytest.mark.parametrize("make", [
    lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda p: RMSprop(p, lr=0.01, centered=True, momentum=0.5),
    lambda p: Adam(p, lr=0.01, amsgrad=True),
    lambda p: AdamW(p, lr=0.01),
], ids=["sgd", "rmsprop", "adam", "adamw"])
def test_state_dict_resumes_exactly(make, rng):
    grads = [{"w": rng.standard_normal((3, 2))} for _ in range(6)]
    w0 = rng.standard_normal((3, 2))
    # uninterrupted
    w = w0.copy()
    opt = make({"w": w})
    for g in grads:
        opt.step(g)
    # interrupted after 3 steps, resumed in a fresh optimizer
    w2 = w0.copy()
    opt2 = make({"w": w2})
    for g in grads[:3]:
        opt2.step(g)
    sd = opt2.state_dict()
    for k, v in sd["state"]["w"].items():        # state_dict holds copies
        if isinstance(v, np.ndarray):
            assert v is not opt2.state["w"][k]
    w3 = w2.copy()
    opt3 = make({"w": w3})
    opt3.load_state_dict(sd)
    for g in grads[3:]:
        opt3.step(g)
    np.testing.assert_array_equal(w3, w)


def test_load_state_dict_restores_hyperparameters():
    opt = SGD({"w": np.zeros(2)}, lr=0.1)
    opt.lr = 0.05
    sd = opt.state_dict()
    new = SGD({"w": np.zeros(2)}, lr=0.1)
    new.load_state_dict(sd)
    assert new.lr == 0.05
    with pytest.raises(ValueError, match="made by SGD"):
        Adam({"w": np.zeros(2)}).load_state_dict(sd)


def test_errors_name_the_argument():
    w = np.zeros((2, 2))
    with pytest.raises(TypeError, match="params"):
        SGD([w])
    with pytest.raises(TypeError, match=r"params\['w'\]"):
        SGD({"w": np.zeros(2, dtype=np.int64)})
    ro = np.zeros(2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        SGD({"w": ro})
    with pytest.raises(ValueError, match="lr"):
        Adam({"w": w}, lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        Adam({"w": w}, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="nesterov"):
        SGD({"w": w}, nesterov=True)
    opt = SGD({"w": w}, lr=0.1)
    with pytest.raises(ValueError, match="unknown key 'v'"):
        opt.step({"v": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"expected shape \(2, 2\), got \(2,\)"):
        opt.step({"w": np.zeros(2)})
    with pytest.raises(TypeError, match="dtype int64"):
        opt.step({"w": np.zeros((2, 2), dtype=np.int64)})
    assert np.all(w == 0)  # nothing was applied by the failed calls


# ---------------------------------------------------------------------------------------
# Hyperparameters: one validator for the constructor, assignment and load_state_dict
# ---------------------------------------------------------------------------------------

BAD_HYPER = [
    (SGD, "lr", -1, ValueError, r"lr: expected a finite number >= 0, got -1"),
    (Adam, "lr", float("nan"), ValueError, r"lr: expected a finite number >= 0, got nan"),
    (Adam, "lr", "fast", TypeError, r"lr: expected a real number, got str"),
    (Adam, "betas", (2.0, -1.0), ValueError, r"betas\[0\]: expected a number in \[0, 1\), got 2.0"),
    (AdamW, "betas", (0.9,), ValueError, r"betas: expected a pair \(beta1, beta2\), got 1 item"),
    (RMSprop, "alpha", 2.0, ValueError, r"alpha: expected a number in \[0, 1\), got 2.0"),
    (RMSprop, "centered", np.array([1, 2]), TypeError, r"centered: expected True or False"),
    (SGD, "dampening", 1.5, ValueError, r"dampening: expected a number in \[0, 1\], got 1.5"),
    (Adam, "eps", 1e-50, ValueError, r"eps: expected 0 or a number that float32 can hold"),
]


@pytest.mark.parametrize(("cls", "arg", "value", "exc", "message"), BAD_HYPER,
                         ids=[f"{c.__name__}-{a}={v!r}" for c, a, v, _, _ in BAD_HYPER])
def test_bad_hyperparameter_refused_everywhere_with_one_message(cls, arg, value, exc, message):
    w = np.ones((2, 2), dtype=np.float32)
    with pytest.raises(exc, match=f"^{message}"):
        cls({"w": w.copy()}, **{arg: value})
    opt = cls({"w": w})
    opt.step({"w": np.full((2, 2), 0.5)})
    before = opt.state_dict()
    with pytest.raises(exc, match=f"^{message}"):
        setattr(opt, arg, value)                  # e.g. a schedule: opt.lr = ...
    sd = opt.state_dict()
    sd["hyperparams"][arg] = value
    with pytest.raises(exc, match=rf"^state_dict\['hyperparams'\]: {message}"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["hyperparams"] == before["hyperparams"]
    np.testing.assert_equal(after["state"], before["state"])
    opt.step({"w": np.full((2, 2), 0.5)})
    assert np.all(np.isfinite(w))


def test_nesterov_rule_holds_for_assignment_too():
    opt = SGD({"w": np.zeros(2)}, lr=0.1, momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="nesterov: requires momentum > 0"):
        opt.momentum = 0.0
    assert opt.momentum == 0.9
    opt.lr = 0.05                                 # a valid assignment goes through
    assert opt.lr == 0.05 and isinstance(opt.lr, float)


def test_eps_zero_is_allowed_but_an_eps_that_rounds_to_zero_is_not():
    Adam({"w": np.zeros(2, np.float32)}, eps=0.0)
    Adam({"w": np.zeros(2, np.float64)}, eps=1e-50)         # float64 holds it
    with pytest.raises(ValueError, match=r"eps: .*float32.*got 1e-50"):
        Adam({"a": np.zeros(2, np.float64), "b": np.zeros(2, np.float32)}, eps=1e-50)


@pytest.mark.parametrize("cls", [SGD, RMSprop, Adam, AdamW])
def test_float16_parameters_are_refused(cls):
    # float16 state would turn eps=1e-8 into 0 (a zero gradient then gives NaN) and lose
    # every update below float16's spacing: refused, with what to do instead.
    with pytest.raises(TypeError, match=r"params\['w'\]: expected a float32 or float64 array, "
                                        r"got dtype float16"):
        cls({"w": np.zeros(3, dtype=np.float16)})
    # float16 *gradients* of float32 parameters are fine: converted.
    p = np.ones(3, dtype=np.float32)
    opt = cls({"w": p})
    opt.step({"w": np.zeros(3, dtype=np.float16)})
    assert np.all(np.isfinite(p))


def test_the_same_array_twice_is_refused():
    w = np.zeros(3)
    with pytest.raises(ValueError, match=r"params\['b'\]: the same array as params\['a'\]"):
        SGD({"a": w, "b": w})


LOAD_STATE = {
    "None": (lambda sd: None, TypeError, r"state_dict: expected the dict returned by"),
    "list": (lambda sd: [sd], TypeError, r"state_dict: expected the dict .* got list"),
    "no type": (lambda sd: {k: v for k, v in sd.items() if k != "type"}, ValueError,
                r"state_dict: .*missing \['type'\]"),
    "hyper None": (lambda sd: {**sd, "hyperparams": None}, TypeError,
                   r"state_dict\['hyperparams'\]: expected a dict, got NoneType"),
    "no lr": (lambda sd: {**sd, "hyperparams": {k: v for k, v in sd["hyperparams"].items()
                                                if k != "lr"}},
              ValueError, r"state_dict\['hyperparams'\]: expected the keys"),
    "state None": (lambda sd: {**sd, "state": None}, TypeError,
                   r"state_dict\['state'\]: expected a dict"),
    "no step": (lambda sd: {**sd, "state": {"w": {"exp_avg": np.zeros(2),
                                                  "exp_avg_sq": np.zeros(2)}}},
                ValueError, r"state_dict\['state'\]\['w'\]: missing 'step'"),
    "float step": (lambda sd: {**sd, "state": {"w": {**sd["state"]["w"], "step": 1.5}}},
                   TypeError, r"state_dict\['state'\]\['w'\]\['step'\]: expected an int >= 0"),
    "negative step": (lambda sd: {**sd, "state": {"w": {**sd["state"]["w"], "step": -2}}},
                      ValueError, r"\['step'\]: expected an int >= 0, got -2"),
    "entry None": (lambda sd: {**sd, "state": {"w": None}}, TypeError,
                   r"state_dict\['state'\]\['w'\]: expected a dict with 'step'"),
    "unknown buffer": (lambda sd: {**sd, "state": {"w": {**sd["state"]["w"],
                                                         "velocity": np.zeros(2)}}},
                       ValueError, r"unknown buffers \['velocity'\]; Adam keeps"),
    "missing buffer": (lambda sd: {**sd, "state": {"w": {"step": 3, "exp_avg": np.zeros(2)}}},
                       ValueError, r"missing buffers \['exp_avg_sq'\] after 3 step"),
    "int buffer": (lambda sd: {**sd, "state": {"w": {**sd["state"]["w"],
                                                     "exp_avg": np.zeros(2, np.int64)}}},
                   TypeError, r"\['exp_avg'\]: expected a floating-point array, got dtype int64"),
    "shape": (lambda sd: {**sd, "state": {"w": {**sd["state"]["w"], "exp_avg": np.zeros(3)}}},
              ValueError, r"\['exp_avg'\]: expected shape \(2,\), got \(3,\)"),
    "unknown param": (lambda sd: {**sd, "state": {"v": sd["state"]["w"]}}, ValueError,
                      r"state_dict\['state'\]\['v'\]: unknown parameter"),
}


@pytest.mark.parametrize("how", list(LOAD_STATE))
def test_load_state_dict_checks_everything_before_changing_anything(how):
    w = np.ones(2)
    opt = Adam({"w": w}, lr=0.1)
    opt.step({"w": np.array([0.5, -0.5])})
    before = opt.state_dict()
    make, exc, message = LOAD_STATE[how]
    with pytest.raises(exc, match=message):
        opt.load_state_dict(make(opt.state_dict()))
    np.testing.assert_equal(opt.state_dict(), before)


def test_buffers_appear_when_a_hyperparameter_switches_them_on():
    """Momentum, centering or amsgrad turned on after some steps (or a state saved
    without them) start their buffer at zero instead of failing with a KeyError."""
    p = np.ones(2)
    opt = RMSprop({"p": p}, lr=0.01)
    opt.step({"p": np.array([0.5, 0.5])})
    opt.momentum, opt.centered = 0.9, True
    opt.step({"p": np.array([0.5, 0.5])})
    assert {"momentum_buffer", "grad_avg"} <= set(opt.state["p"])
    q = np.ones(2)
    adam = Adam({"q": q}, lr=0.01)
    adam.step({"q": np.array([0.5, 0.5])})
    adam.amsgrad = True
    adam.step({"q": np.array([0.5, 0.5])})
    assert "max_exp_avg_sq" in adam.state["q"]
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(q))
