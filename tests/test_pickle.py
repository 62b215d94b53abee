"""Persistence: models, ``Linear`` and the optimizers pickle and copy (configuration +
parameters + optimizer state + a format version); a ``Tape`` refuses with a reason; a
pickle that does not match its configuration, or comes from a newer format, is an error.
"""

from __future__ import annotations

import copy
import io
import pickle

import bptt
import numpy as np
import pytest
from bptt import _persist
from conftest import KINDS, make_model, state_parts

DTYPES = (np.float32, np.float64)
CONFIGS = [
    {},
    {"num_layers": 2, "bidirectional": True},
    {"batch_first": True, "bias": False},
]
PROTOCOLS = sorted({2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL})


def _x(rng, model, batch=3, steps=5):
    shape = (batch, steps, model.input_size) if model.batch_first else (
        steps, batch, model.input_size)
    return rng.standard_normal(shape).astype(model.dtype)


def _assert_same_model(a, b):
    assert type(a) is type(b)
    assert repr(a) == repr(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype
        assert np.array_equal(sa[k], sb[k]), k


@pytest.mark.parametrize("config", CONFIGS, ids=["plain", "2layer-bidir", "bf-nobias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind", KINDS)
def test_model_round_trip_gives_the_same_model(rng, kind, dtype, config):
    m = make_model(kind, 4, 5, dtype=dtype, seed=1, **config)
    x = _x(rng, m)
    out, state = m(x)
    for protocol in PROTOCOLS:
        m2 = pickle.loads(pickle.dumps(m, protocol=protocol))
        _assert_same_model(m, m2)
        out2, state2 = m2(x)
        assert np.array_equal(out, out2)
        for s, s2 in zip(state_parts(state), state_parts(state2), strict=True):
            assert np.array_equal(s, s2)
    # The loaded model trains: forward, backward, gradients equal to the original's.
    o1, _, t1 = m.forward(x)
    _o2, _, t2 = m2.forward(x)
    d = rng.standard_normal(o1.shape).astype(m.dtype)
    g1, g2 = m.backward(t1, d), m2.backward(t2, d)
    for k in g1.params:
        assert np.array_equal(g1.params[k], g2.params[k]), k
    # A tape still belongs to the model object that made it.
    with pytest.raises(ValueError):
        m2.backward(t1, d)


def test_pickle_holds_a_format_version_and_little_more_than_the_weights():
    m = bptt.LSTM(16, 32, 2)
    state = m.__getstate__()
    assert state["format"] == _persist.FORMAT == 1
    assert state["config"] == {"input_size": 16, "hidden_size": 32, "num_layers": 2,
                               "bias": True, "batch_first": False, "bidirectional": False,
                               "dtype": "float32", "kind": "lstm"}
    nbytes = sum(v.nbytes for v in m.params.values())
    assert nbytes < len(pickle.dumps(m, protocol=5)) < nbytes + 2000


@pytest.mark.parametrize("kind", KINDS)
def test_deepcopy_is_independent_and_copy_shares_the_parameters(kind):
    m = make_model(kind, 3, 4, dtype=np.float64, seed=2)
    deep = copy.deepcopy(m)
    shallow = copy.copy(m)
    _assert_same_model(m, deep)
    name = "weight_hh_l0"
    m.params[name][...] += 1.0
    assert not np.array_equal(deep.params[name], m.params[name])
    assert shallow.params[name] is m.params[name]


@pytest.mark.parametrize("kind", KINDS)
def test_restored_model_continues_the_dropout_seed_stream(rng, kind):
    # Forward calls without dropout_seed draw their masks' seeds from the model's own
    # generator: a copy taken between two calls makes the same masks as the original's
    # next call, not those of a freshly seeded model.
    m = make_model(kind, 3, 5, num_layers=3, dtype=np.float64, seed=4, dropout=0.5)
    x = rng.standard_normal((6, 2, 3))
    m.forward(x)
    m2 = pickle.loads(pickle.dumps(m))
    fresh = make_model(kind, 3, 5, num_layers=3, dtype=np.float64, seed=4, dropout=0.5)
    fresh.load_state_dict(m.state_dict())
    want = m.forward(x)[0]
    assert np.array_equal(m2.forward(x)[0], want)
    assert not np.array_equal(fresh.forward(x)[0], want)
    # A pickle of an earlier version (no generator state) still loads.
    state = m.__getstate__()
    del state["dropout_rng"]
    old = type(m).__new__(type(m))
    old.__setstate__(state)
    bad = m.__getstate__()
    bad["dropout_rng"] = {"bit_generator": "MT19937"}
    with pytest.raises(ValueError, match="dropout_rng"):
        type(m).__new__(type(m)).__setstate__(bad)


def test_subclass_attributes_travel():
    class Tagged(bptt.GRU):
        pass

    m = Tagged(3, 4, seed=0)
    m.note = {"trained_on": "sensors"}
    m2 = copy.deepcopy(m)
    assert type(m2) is Tagged and m2.note == {"trained_on": "sensors"}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_linear_round_trip(rng, dtype, bias):
    lin = bptt.Linear(5, 3, bias=bias, dtype=dtype, seed=4)
    x = rng.standard_normal((2, 7, 5))
    lin2 = pickle.loads(pickle.dumps(lin))
    assert repr(lin2) == repr(lin)
    assert np.array_equal(lin(x), lin2(x))
    y, cache = lin2.forward(x)
    lin2.backward(cache, np.ones_like(y))
    with pytest.raises(ValueError):
        lin.backward(cache, np.ones_like(y))


OPTIMIZERS = {
    "sgd": lambda p: bptt.optim.SGD(p, lr=0.1),
    "sgd-nesterov": lambda p: bptt.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                             weight_decay=1e-3),
    "rmsprop": lambda p: bptt.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
    "adam": lambda p: bptt.optim.Adam(p, lr=0.01, amsgrad=True),
    "adamw": lambda p: bptt.optim.AdamW(p, lr=0.01, betas=(0.8, 0.99)),
}


def _train(model, readout, opt, x, y, steps):
    losses = []
    for _ in range(steps):
        out, _, tape = model.forward(x)
        pred, cache = readout.forward(out)
        loss, d_pred = bptt.mse_loss(pred, y)
        d_out, g_ro = readout.backward(cache, d_pred)
        g = model.backward(tape, d_out)
        grads = {f"rnn.{k}": v for k, v in g.params.items()}
        grads.update({f"readout.{k}": v for k, v in g_ro.items()})
        opt.step(grads)
        losses.append(loss)
    return losses


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_checkpoint_resumes_training_exactly(rng, name, dtype):
    """pickle.dumps((model, readout, opt)) mid-training, load, continue: the same bits as
    continuing the original; the loaded optimizer updates the loaded model's arrays."""
    model = bptt.LSTM(3, 6, dtype=dtype, seed=5)
    readout = bptt.Linear(6, 2, dtype=dtype, seed=6)
    opt = OPTIMIZERS[name](bptt.tbptt.parameters(model, readout))
    x = rng.standard_normal((8, 4, 3))
    y = rng.standard_normal((8, 4, 2))
    _train(model, readout, opt, x, y, 3)
    blob = pickle.dumps((model, readout, opt))
    m2, r2, o2 = pickle.loads(blob)
    assert type(o2) is type(opt) and o2.hyperparams() == opt.hyperparams()
    assert o2.params["rnn.weight_ih_l0"] is m2.params["weight_ih_l0"]
    assert o2.params["readout.weight"] is r2.params["weight"]
    a = _train(model, readout, opt, x, y, 3)
    b = _train(m2, r2, o2, x, y, 3)
    assert a == b
    _assert_same_model(model, m2)
    # The same through deepcopy, and an optimizer pickled alone keeps its state.
    m3, _, o3 = copy.deepcopy((model, readout, opt))
    assert o3.params["rnn.weight_hh_l0"] is m3.params["weight_hh_l0"]
    alone = pickle.loads(pickle.dumps(opt))
    sd, sd2 = opt.state_dict(), alone.state_dict()
    assert sd["hyperparams"] == sd2["hyperparams"]
    for pname, st in sd["state"].items():
        for k, v in st.items():
            assert np.array_equal(v, sd2["state"][pname][k]), (pname, k)


def test_tape_refuses_to_be_pickled_or_copied():
    m = bptt.LSTM(3, 4)
    _, _, tape = m.forward(np.zeros((5, 2, 3), dtype=np.float32))
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="cannot pickle or copy a bptt Tape.*process"):
            attempt(tape)


# ------------------------------------------------------------------ refusing bad pickles
def _pickle_with(model, monkeypatch, edit):
    """A real pickle of ``model`` whose state was changed by ``edit(state)``."""
    cls = type(model)
    original = cls.__getstate__

    def patched(self):
        state = original(self)
        state["params"] = dict(state["params"])
        edit(state)
        return state

    monkeypatch.setattr(cls, "__getstate__", patched)
    blob = pickle.dumps(model)
    monkeypatch.setattr(cls, "__getstate__", original)
    return blob


def test_newer_format_is_refused(monkeypatch):
    m = bptt.GRU(3, 4)
    blob = _pickle_with(m, monkeypatch, lambda s: s.update(format=2, bptt="9.0.0"))
    with pytest.raises(ValueError, match=r"format 2, written by bptt 9\.0\.0.*reads formats "
                                         r"up to 1.*Upgrade"):
        pickle.loads(blob)


def test_weights_of_another_dtype_are_refused(monkeypatch):
    m = bptt.LSTM(3, 4)      # float32

    def edit(state):
        state["params"]["weight_hh_l0"] = state["params"]["weight_hh_l0"].astype(np.float64)

    with pytest.raises(TypeError, match=r"weight_hh_l0: expected dtype float32.*got float64"):
        pickle.loads(_pickle_with(m, monkeypatch, edit))


def test_weights_of_another_shape_are_refused(monkeypatch):
    m = bptt.RNN(3, 4)
    other = bptt.RNN(3, 5).state_dict()
    blob = _pickle_with(m, monkeypatch, lambda s: s.update(params=other))
    with pytest.raises(ValueError, match=r"weight_ih_l0: expected shape \(4, 3\), got \(5, 3\)"):
        pickle.loads(blob)


def test_missing_weights_are_refused(monkeypatch):
    m = bptt.LSTM(3, 4)
    blob = _pickle_with(m, monkeypatch, lambda s: s["params"].pop("bias_hh_l0"))
    with pytest.raises(ValueError, match=r"missing keys \['bias_hh_l0'\]"):
        pickle.loads(blob)


def test_optimizer_state_of_another_dtype_is_refused():
    model = bptt.RNN(2, 3, dtype=np.float64)
    opt = bptt.optim.Adam(model.params)
    opt.step({k: np.ones_like(v) for k, v in model.params.items()})
    state = opt.__getstate__()
    state["state"]["weight_hh_l0"] = dict(state["state"]["weight_hh_l0"])
    state["state"]["weight_hh_l0"]["exp_avg"] = np.zeros((3, 3), dtype=np.float32)
    fresh = bptt.optim.Adam.__new__(bptt.optim.Adam)
    with pytest.raises(TypeError, match=r"exp_avg.*expected dtype float64.*got float32"):
        fresh.__setstate__(state)


def test_not_a_bptt_state_is_refused():
    fresh = bptt.LSTM.__new__(bptt.LSTM)
    with pytest.raises(TypeError, match="expected the state of a bptt pickle"):
        fresh.__setstate__({"weights": 1})
    with pytest.raises(ValueError, match="holds a 'gru' model, not 'lstm'"):
        fresh.__setstate__(bptt.GRU(2, 2).__getstate__())


def test_pickle_protocol_5_out_of_band_buffers():
    """Out-of-band buffers (as Dask and multiprocessing use them) load as writable
    parameters an optimizer can update."""
    m = bptt.LSTM(3, 4, dtype=np.float64)
    buffers = []
    blob = pickle.dumps(m, protocol=5, buffer_callback=buffers.append)
    m2 = pickle.loads(blob, buffers=[bytes(b.raw()) for b in buffers])
    _assert_same_model(m, m2)
    assert all(p.flags.writeable for p in m2.params.values())
    bptt.optim.SGD(m2.params, lr=0.1).step({k: np.ones_like(v) for k, v in m2.params.items()})


def test_pickle_to_a_file(tmp_path):
    m = bptt.GRU(3, 4, 2, bidirectional=True, dtype=np.float64, seed=9)
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        pickle.dump(m, f)
    with open(path, "rb") as f:
        _assert_same_model(m, pickle.load(f))
    buf = io.BytesIO()
    pickle.dump([m, m], buf)
    a, b = pickle.loads(buf.getvalue())
    assert a is b
