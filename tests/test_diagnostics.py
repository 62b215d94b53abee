"""Gradient-flow diagnostics: summary numbers on known sequences, real dh_norm, plots with
and without matplotlib."""

from __future__ import annotations

import bptt
import numpy as np
import pytest
from bptt import diagnostics as dg


def geometric(T=21, factor=10.0):
    """Norm multiplied by ``factor`` per step towards the end: 10^(t - T + 1)."""
    return factor ** (np.arange(T) - (T - 1.0))


def test_ratio_and_decay_rate_on_a_geometric_sequence():
    a = np.stack([geometric(), np.ones(21)])
    np.testing.assert_allclose(dg.first_last_ratio(a), [1e-20, 1.0], rtol=1e-9)
    np.testing.assert_allclose(dg.decay_rate(a), [-100.0, 0.0], atol=1e-9)
    s = dg.summarize(a)
    assert [r["row"] for r in s] == ["layer 0", "layer 1"]
    assert s[0]["ratio"] == pytest.approx(1e-20) and s[0]["last"] == 1.0
    assert s[0]["decades_per_100_steps"] == pytest.approx(-100.0)
    assert dg.first_last_ratio(np.array([[1.0, 0.0]]))[0] != dg.first_last_ratio(
        np.array([[1.0, 0.0]]))[0]                      # NaN when the last step gets nothing
    assert dg.first_last_ratio(np.array([0.0, 2.0]))[0] == 0.0


def test_bidirectional_rows_are_oriented():
    fwd, rev = geometric(), geometric()[::-1]       # the reverse direction ends at t = 0
    a = np.stack([fwd, rev])
    np.testing.assert_allclose(dg.first_last_ratio(a, bidirectional=True), [1e-20, 1e-20])
    assert dg.dh_norm_rows(a, bidirectional=True) == ["layer 0", "layer 0 reverse"]
    with pytest.raises(ValueError, match="even"):
        dg.dh_norm_rows(np.ones((3, 4)), bidirectional=True)


def test_on_real_gradients():
    """A tanh RNN with small weights: the gradient of a last-step loss vanishes backwards."""
    m = bptt.RNN(2, 8, num_layers=2, dtype=np.float64, seed=0)
    for v in m.params.values():
        v *= 0.5
    x = np.random.default_rng(0).standard_normal((30, 4, 2))
    out, _, tape = m.forward(x)
    d = np.zeros_like(out)
    d[-1] = 1.0
    g = m.backward(tape, d)
    r = dg.first_last_ratio(g)                      # accepts the Gradients object
    assert r.shape == (2,) and np.all(r < 1e-6)
    assert np.all(dg.decay_rate(g.dh_norm) < -10)


def test_errors():
    with pytest.raises(ValueError, match="dh_norm"):
        dg.summarize(np.ones((2, 2, 2)))
    with pytest.raises(TypeError, match="dh_norm"):
        dg.summarize(np.array(["a"]))


def test_plot_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    a = np.stack([geometric(), np.r_[0.0, np.ones(20)]])
    ax = dg.plot_gradient_flow({"rnn": a, "lstm": np.ones((1, 21))}, title="t")
    assert ax.get_yscale() == "log"
    assert len(ax.get_lines()) == 3
    ax.figure.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0


def test_without_matplotlib(no_matplotlib):
    assert dg.have_matplotlib() is False
    with pytest.raises(ImportError, match=r"pip install 'bptt\[plot\]'"):
        dg.plot_gradient_flow(np.ones((1, 3)))
    assert dg.summarize(np.ones((1, 3)))[0]["ratio"] == 1.0    # the rest still works


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"^dh_norm: expected a real array, got a list that "
                                         r"NumPy cannot make an array of"):
        dg.summarize([[1.0], [1.0, 2.0]])
    with pytest.raises(TypeError, match=r"^bidirectional: expected True or False, got ndarray"):
        dg.summarize(np.ones((2, 3)), np.array([1, 2]))
