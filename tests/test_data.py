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


def marker_positions(x):
    """(first, second) marker steps per sequence of a time-major adding-problem batch."""
    b, t = np.nonzero(x[..., 1].T == 1)   # sorted by sequence, then step
    assert np.array_equal(b, np.repeat(np.arange(x.shape[1]), 2))
    return t[0::2], t[1::2]


def test_adding_problem_hochreiter_definition():
    for T in (4, 5, 11, 20, 21, 100):
        B = 400
        x, y = data.adding_problem(B, T, seed=T, placement="hochreiter")
        assert x.shape == (T, B, 2) and y.shape == (B, 1) and x.dtype == np.float32
        v, mk = x[..., 0], x[..., 1]
        assert np.all((v >= 0) & (v < 1))
        assert set(np.unique(mk)) == {0.0, 1.0}
        half = T // 2
        # exactly two markers, both in the first half
        assert np.all(mk.sum(0) == 2) and np.all(mk[:half].sum(0) == 2)
        # one of them among the first min(10, half) steps
        assert np.all(mk[:min(10, half)].sum(0) >= 1)
        np.testing.assert_allclose(y[:, 0], (v * mk).sum(0), rtol=1e-6)


def test_adding_problem_hochreiter_statistics():
    T, B = 100, 40000
    x, y = data.adding_problem(B, T, seed=1, dtype=np.float64, placement="hochreiter")
    rng = np.random.default_rng(1)
    # same draws, in the generator's order: values, first marker, then the second
    values = rng.random((T, B))
    first = rng.integers(0, 10, size=B)
    np.testing.assert_array_equal(x[..., 0], values)
    assert np.all(x[first, np.arange(B), 1] == 1)
    lo, hi = marker_positions(x)
    second = np.where(lo == first, hi, lo)
    assert np.all(second != first) and second.min() >= 0 and second.max() < T // 2
    # the first marker uniform over 0..9, the second uniform over the other 49 steps of
    # the first half: P(second = s) = (1/49) * P(first != s)
    c1 = np.bincount(first, minlength=10)
    assert c1.size == 10 and c1.min() > 0.9 * B / 10 and c1.max() < 1.1 * B / 10
    c2 = np.bincount(second, minlength=T // 2)
    assert c2.size == T // 2
    want = np.where(np.arange(T // 2) < 10, (1 - 1 / 10) / 49, 1 / 49) * B
    assert np.all(np.abs(c2 - want) < 5 * np.sqrt(want))
    # no marker ever in the last T - T//2 steps: a truncation window that short never
    # contains one
    assert not x[T // 2:, :, 1].any()
    # targets: mean 1, variance 1/6 as for the arjovsky placement
    assert y.mean() == pytest.approx(1.0, abs=0.01)
    assert np.mean((y - 1.0) ** 2) == pytest.approx(data.ADDING_BASELINE_MSE, rel=0.03)
    mk_first = x[first, np.arange(B), 0]
    assert np.mean((y[:, 0] - mk_first - 0.5) ** 2) == pytest.approx(data.ADDING_HALF_MSE,
                                                                    rel=0.03)


def test_adding_problem_hochreiter_reproducible_and_stream():
    a = data.adding_problem(6, 30, seed=4, placement="hochreiter")
    b = data.adding_problem(6, 30, seed=4, placement="hochreiter")
    c = data.adding_problem(6, 30, seed=5, placement="hochreiter")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    g1, g2 = np.random.default_rng(2), np.random.default_rng(2)
    np.testing.assert_array_equal(
        data.adding_problem(6, 30, seed=g1, placement="hochreiter")[0],
        data.adding_problem(6, 30, seed=g2, placement="hochreiter")[0])
    # the default placement is unchanged (arjovsky) and differs from hochreiter
    d = data.adding_problem(6, 30, seed=4)
    np.testing.assert_array_equal(d[0], data.adding_problem(6, 30, seed=4,
                                                            placement="arjovsky")[0])
    assert not np.array_equal(d[0][..., 1], a[0][..., 1])
    s = data.adding_stream(3, 30, 2, seed=4, placement="hochreiter")
    np.testing.assert_array_equal(s["x"][:30], a[0][:, :3])
    np.testing.assert_array_equal(s["x"][30:], a[0][:, 3:])
    assert s["y"][29, 2, 0] == a[1][2, 0] and s["y"][59, 0, 0] == a[1][3, 0]


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
    with pytest.raises(ValueError, match="placement"):
        data.adding_problem(2, 8, placement="middle")
    with pytest.raises(TypeError, match="placement: expected 'arjovsky' or 'hochreiter', got list"):
        data.adding_problem(2, 8, placement=["arjovsky"])
    with pytest.raises(TypeError, match="batch_first: expected True or False, got ndarray"):
        data.adding_problem(2, 8, batch_first=np.array([1, 2]))
    with pytest.raises(TypeError, match="batch_first: expected True or False, got str"):
        data.copy_task(2, 3, batch_first="no")
    with pytest.raises(ValueError, match="seed: expected an int >= 0, got -1"):
        data.copy_task(2, 3, seed=-1)
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got None"):
        data.adding_stream(2, 8, 2, dtype=None)
    with pytest.raises(ValueError, match="seq_len"):
        data.adding_problem(2, 3, placement="hochreiter")
    data.adding_problem(2, 4, placement="hochreiter")
    with pytest.raises(ValueError, match="delay"):
        data.copy_task(2, 0)


def test_impossible_sizes_fail_at_once():
    with pytest.raises(MemoryError, match=r"cannot allocate \d+ bytes for x \(100, 1099511627776, "
                                          r"2\) in float64 of adding_problem\(batch_size="):
        data.adding_problem(2**40, 100)
    with pytest.raises(ValueError, match=r"adding_stream\(n_streams=18446744073709551616, "
                                         r"seq_len=4, n_episodes=2\): x .* more than a process "
                                         r"can address"):
        data.adding_stream(2**64, 4, 2)
    with pytest.raises(MemoryError, match=r"of copy_task\(batch_size=1099511627776, delay=3"):
        data.copy_task(2**40, 3)
