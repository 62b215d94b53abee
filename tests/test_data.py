"""Data generators: exact definitions, statistics, baselines and reproducibility."""

from __future__ import annotations

import math

import bptt
import numpy as np
import pytest
from bptt import data


def test_adding_problem_definition():
    T, B = 11, 500
    x, y = data.adding_problem(B, T, seed=3)
    assert x.shape == (T, B, 2) and y.shape == (B, 1)
    assert x.dtype == np.float32 and y.dtype == np.float32
    v, mk = x[..., 0], x[..., 1]
    assert np.all((v >= 0) & (v < 1))
    assert set(np.unique(mk)) == {0.0, 1.0}
    half = T // 2
    assert np.all(mk[:half].sum(0) == 1) and np.all(mk[half:].sum(0) == 1)
    np.testing.assert_allclose(y[:, 0], (v * mk).sum(0), rtol=1e-6)


def test_adding_problem_statistics_and_baselines():
    T, B = 40, 20000
    x, y = data.adding_problem(B, T, seed=0, dtype=np.float64)
    # targets: mean 1, variance 1/6; predicting the mean gives MSE ~ 0.1667
    assert y.mean() == pytest.approx(1.0, abs=0.01)
    assert np.mean((y - 1.0) ** 2) == pytest.approx(data.ADDING_BASELINE_MSE, rel=0.03)
    assert data.ADDING_BASELINE_MSE == pytest.approx(1 / 6)
    # remembering only the second value: MSE ~ 1/12
    second = (x[T // 2:, :, 0] * x[T // 2:, :, 1]).sum(0)
    assert np.mean((y[:, 0] - second - 0.5) ** 2) == pytest.approx(1 / 12, rel=0.03)
    # marker positions uniform over each half
    first_pos = np.argmax(x[:T // 2, :, 1], axis=0)
    counts = np.bincount(first_pos, minlength=T // 2)
    assert counts.min() > 0.8 * B / (T // 2) and counts.max() < 1.2 * B / (T // 2)
    # values uniform on [0, 1)
    assert x[..., 0].mean() == pytest.approx(0.5, abs=0.005)
    assert x[..., 0].var() == pytest.approx(1 / 12, rel=0.01)


def test_seeded_and_reproducible():
    a = data.adding_problem(4, 10, seed=7)
    b = data.adding_problem(4, 10, seed=7)
    c = data.adding_problem(4, 10, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    g1, g2 = np.random.default_rng(1), np.random.default_rng(1)
    np.testing.assert_array_equal(data.copy_task(3, 5, seed=g1)[1],
                                  data.copy_task(3, 5, seed=g2)[1])
    xb, _ = data.adding_problem(4, 10, seed=7, batch_first=True)
    np.testing.assert_array_equal(xb, a[0].transpose(1, 0, 2))


def test_adding_stream_matches_episodes():
    s = data.adding_stream(3, 6, 4, seed=5)
    x, y = data.adding_problem(12, 6, seed=5)
    assert s["x"].shape == (24, 3, 2) and s["y"].shape == (24, 3, 1)
    for e in range(4):
        for j in range(3):
            np.testing.assert_array_equal(s["x"][e * 6:(e + 1) * 6, j], x[:, e * 3 + j])
            assert s["y"][e * 6 + 5, j, 0] == y[e * 3 + j, 0]
    assert s["mask"].sum() == 12 and np.all(s["mask"][5::6])
    assert s["resets"].sum() == 12 and np.all(s["resets"][::6])
    assert np.all(s["y"][~s["mask"]] == 0)


def test_copy_task_definition_and_baseline():
    T, L, K, B = 7, 4, 5, 300
    x, labels = data.copy_task(B, T, copy_len=L, n_symbols=K, seed=1)
    assert x.shape == (T + 2 * L, B, K + 2) and labels.shape == (T + 2 * L, B)
    assert labels.dtype == np.int64
    tokens = x.argmax(-1)
    assert np.all(x.sum(-1) == 1)
    assert np.all((tokens[:L] >= 1) & (tokens[:L] <= K))
    assert np.all(tokens[L:L + T - 1] == 0)
    assert np.all(tokens[L + T - 1] == K + 1)
    assert np.all(tokens[L + T:] == 0)
    assert np.all(labels[:T + L] == 0)
    np.testing.assert_array_equal(labels[T + L:], tokens[:L])
    # the memoryless baseline: blanks, then uniform over the K symbols after the delimiter
    logits = np.full(labels.shape + (K + 2,), -1e9)
    logits[:T + L, :, 0] = 0
    logits[T + L:, :, 1:K + 1] = 0
    loss, _ = bptt.cross_entropy_loss(logits, labels)
    assert loss == pytest.approx(data.copy_baseline(T, copy_len=L, n_symbols=K), rel=1e-9)
    assert data.copy_baseline(T, copy_len=L, n_symbols=K) == pytest.approx(
        L * math.log(K) / (T + 2 * L))


def test_errors():
    with pytest.raises(ValueError, match="seq_len"):
        data.adding_problem(2, 1)
    with pytest.raises(TypeError, match="batch_size"):
        data.adding_problem(2.0, 5)
    with pytest.raises(TypeError, match="seed"):
        data.adding_problem(2, 5, seed="x")
    with pytest.raises(TypeError, match="dtype"):
        data.adding_problem(2, 5, dtype=np.int32)
    with pytest.raises(ValueError, match="delay"):
        data.copy_task(2, 0)
