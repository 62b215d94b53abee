"""Seeded generators for the classic long-range tasks: the adding problem and the copy task.

Every generator takes ``seed`` (an int, a ``numpy.random.Generator``, or None for fresh
entropy): the same int gives the same arrays on every machine (NumPy's PCG64 stream).
Arrays are time-major ``(T, B, ...)`` like the models' default; pass
``batch_first=True`` for ``(B, T, ...)``.

Adding problem (Arjovsky, Shah & Bengio 2016, "Unitary evolution recurrent neural
networks", section 4.2; originally Hochreiter & Schmidhuber 1997)
---------------------------------------------------------------------------------------
Each sequence has ``T`` steps and 2 input features ``x[t] = (v_t, m_t)``:

- ``v_t ~ U[0, 1)`` independently;
- ``m_t`` is 0 except at exactly two distinct steps ``i`` and ``j``, where it is 1;
- the target, read after the last step, is ``y = v_i + v_j``.

Where the two markers go (``placement=``), with ``half = T // 2``:

- ``"arjovsky"`` (the default; Arjovsky et al. 2016): ``i ~ U{0, ..., half - 1}`` (first
  half) and ``j ~ U{half, ..., T - 1}`` (second half). The dependency that matters spans
  from the first marker to the end: at least ``T - half + 1`` and up to ``T`` steps; the
  second marker can lie anywhere in the second half, i.e. close to the end.
- ``"hochreiter"`` (Hochreiter & Schmidhuber 1997, "Long short-term memory", Neural
  Computation 9(8), section 5.4, experiment 4): "we first randomly select and mark one of
  the first ten pairs [...]. Then we randomly select and mark one of the first T/2 - 1
  still unmarked pairs". Implemented as ``i ~ U{0, ..., min(10, half) - 1}`` and ``j``
  uniform over the ``half - 1`` steps of ``{0, ..., half - 1}`` other than ``i`` (the
  still unmarked steps of the first half; ``j`` may come before ``i``). Both markers
  lie in the first half, so every marker is at least ``T - half + 1`` steps from the end
  (counting the step ``T - 1``, where the target is read, as 1): a truncated-BPTT window
  of ``k2 <= T - half`` steps that ends at the last step never contains a marker. Needs ``T >= 4``. What is kept from the
  paper is the marker placement only; unlike the paper, the values are ``U[0, 1)`` (not
  ``U[-1, 1]``), the target is the plain sum (not ``0.5 + (X1 + X2) / 4``), every
  sequence has exactly ``T`` steps (not a random length in ``[T, T + T/10]``), the first
  and last steps carry no ``-1`` marker, and ``X1`` is not zeroed when ``i == 0``. With
  these choices the statistics of ``y`` (and so the baselines below) are the same as for
  ``"arjovsky"``.

Baselines (mean squared error of a predictor of ``y``; the same for both placements,
since ``v_i`` and ``v_j`` are two independent ``U[0, 1)`` values either way):

- predict the constant ``E[y] = 1``: ``Var(v_i + v_j) = 2/12 = 1/6 ~= 0.1667``
  (``ADDING_BASELINE_MSE``) -- what a network that has learnt nothing reaches;
- remember only one of the two marked values, e.g. predict ``v_j + 0.5``:
  ``Var(v_i) = 1/12 ~= 0.0833`` (``ADDING_HALF_MSE``);
- "solved" is conventionally an MSE far below these, e.g. < 0.01.

Copy task (Arjovsky et al. 2016, section 4.1; Hochreiter & Schmidhuber 1997)
--------------------------------------------------------------------------
Alphabet of ``n_symbols + 2`` tokens: 0 = blank, ``1..n_symbols`` = data,
``n_symbols + 1`` = delimiter ("go"). With ``L = copy_len`` and delay ``T``, each sequence
has ``T + 2L`` steps:

- input: ``L`` data tokens drawn uniformly from ``1..n_symbols``, then ``T - 1`` blanks,
  then the delimiter, then ``L`` blanks;
- target: ``T + L`` blanks, then the ``L`` data tokens in the same order.

Baseline: output blanks, then guess uniformly among the data symbols after the delimiter:
cross-entropy ``L * ln(n_symbols) / (T + 2L)`` nats per step (``copy_baseline``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._checks import check_memory, choice, flag, model_dtype, positive_int, rng_from_seed

__all__ = [
    "ADDING_BASELINE_MSE",
    "ADDING_HALF_MSE",
    "ADDING_PLACEMENTS",
    "adding_problem",
    "adding_stream",
    "copy_baseline",
    "copy_task",
]

ADDING_BASELINE_MSE = 1.0 / 6.0
ADDING_HALF_MSE = 1.0 / 12.0
ADDING_PLACEMENTS = ("arjovsky", "hochreiter")


def _layout(a: np.ndarray, batch_first: bool) -> np.ndarray:
    return np.ascontiguousarray(np.swapaxes(a, 0, 1)) if batch_first else a


def adding_problem(batch_size: int, seq_len: int, *, seed: Any = None, dtype: Any = np.float32,
                   batch_first: bool = False,
                   placement: str = "arjovsky") -> tuple[np.ndarray, np.ndarray]:
    """``x, y = adding_problem(batch_size, seq_len, seed=...)`` (definition in the module
    docstring).

    Returns ``x`` (seq_len, batch_size, 2) with ``x[..., 0]`` the values and ``x[..., 1]``
    the markers, and ``y`` (batch_size, 1) the targets. ``placement``: ``"arjovsky"`` (one
    marker in each half; ``seq_len >= 2``) or ``"hochreiter"`` (one marker in the first 10
    steps, the other elsewhere in the first half; ``seq_len >= 4``).
    """
    b = positive_int("batch_size", batch_size)
    t = positive_int("seq_len", seq_len)
    batch_first = flag("batch_first", batch_first)
    choice("placement", placement, ADDING_PLACEMENTS)
    if placement == "arjovsky" and t < 2:
        raise ValueError(f"seq_len: expected >= 2 (one marker in each half), got {t}")
    if placement == "hochreiter" and t < 4:
        raise ValueError(f"seq_len: expected >= 4 with placement='hochreiter' (two "
                         f"markers in the first half), got {t}")
    dt = model_dtype(dtype)
    check_memory(f"adding_problem(batch_size={b}, seq_len={t})", t * b * 2 * 8,
                 f"x ({t}, {b}, 2) in float64")
    rng = rng_from_seed(seed)
    half = t // 2
    values = rng.random((t, b))
    if placement == "arjovsky":
        first = rng.integers(0, half, size=b)
        second = rng.integers(half, t, size=b)
    else:
        first = rng.integers(0, min(10, half), size=b)
        # uniform over the half - 1 steps of [0, half) other than `first`
        r = rng.integers(0, half - 1, size=b)
        second = r + (r >= first)
    x = np.zeros((t, b, 2), dtype=np.float64)
    x[..., 0] = values
    cols = np.arange(b)
    x[first, cols, 1] = 1.0
    x[second, cols, 1] = 1.0
    y = (values[first, cols] + values[second, cols])[:, None]
    return _layout(x.astype(dt), batch_first), y.astype(dt)


def adding_stream(n_streams: int, seq_len: int, n_episodes: int, *, seed: Any = None,
                  dtype: Any = np.float32, placement: str = "arjovsky") -> dict[str, np.ndarray]:
    """Adding-problem episodes laid end to end: a long stream for truncated BPTT.

    Each of ``n_streams`` parallel streams is ``n_episodes`` independent adding-problem
    sequences of ``seq_len`` steps back to back (``L = n_episodes * seq_len`` steps).
    Returns a dict of time-major arrays:

    - ``x`` (L, n_streams, 2): inputs;
    - ``y`` (L, n_streams, 1): the episode's target at its last step, 0 elsewhere;
    - ``mask`` (L, n_streams) bool: True at the last step of each episode (where the loss
      is taken);
    - ``resets`` (L, n_streams) bool: True at the first step of each episode (the state is
      reset to zero before that step).

    Equivalent to ``adding_problem(n_streams * n_episodes, seq_len, seed=seed,
    placement=placement)`` with the batch regrouped: episode ``e`` of stream ``s`` is batch row ``e * n_streams + s``.
    """
    s = positive_int("n_streams", n_streams)
    t = positive_int("seq_len", seq_len)
    e = positive_int("n_episodes", n_episodes)
    check_memory(f"adding_stream(n_streams={s}, seq_len={t}, n_episodes={e})", e * t * s * 2 * 8,
                 f"x ({e * t}, {s}, 2) in float64")
    x, y = adding_problem(s * e, t, seed=seed, dtype=dtype, placement=placement)
    # (t, e*s, 2) -> (t, e, s, 2) -> (e, t, s, 2) -> (e*t, s, 2)
    xs = np.ascontiguousarray(x.reshape(t, e, s, 2).transpose(1, 0, 2, 3).reshape(e * t, s, 2))
    ys = np.zeros((e * t, s, 1), dtype=x.dtype)
    ends = np.arange(e) * t + (t - 1)
    ys[ends] = y.reshape(e, s, 1)
    mask = np.zeros((e * t, s), dtype=bool)
    mask[ends] = True
    resets = np.zeros((e * t, s), dtype=bool)
    resets[np.arange(e) * t] = True
    return {"x": xs, "y": ys, "mask": mask, "resets": resets}


def copy_task(batch_size: int, delay: int, *, copy_len: int = 10, n_symbols: int = 8,
              seed: Any = None, dtype: Any = np.float32,
              batch_first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``x, labels = copy_task(batch_size, delay, seed=...)`` (definition in the module
    docstring).

    Returns ``x`` (delay + 2 * copy_len, batch_size, n_symbols + 2), the one-hot inputs,
    and ``labels`` (delay + 2 * copy_len, batch_size) int64, the target token at every step
    (for ``cross_entropy_loss``). ``delay >= 1``.
    """
    b = positive_int("batch_size", batch_size)
    t = positive_int("delay", delay)
    n = positive_int("copy_len", copy_len)
    k = positive_int("n_symbols", n_symbols)
    batch_first = flag("batch_first", batch_first)
    dt = model_dtype(dtype)
    total = t + 2 * n
    check_memory(f"copy_task(batch_size={b}, delay={t}, copy_len={n}, n_symbols={k})",
                 total * b * (k + 2) * dt.itemsize, f"x ({total}, {b}, {k + 2}) in {dt}")
    rng = rng_from_seed(seed)
    data = rng.integers(1, k + 1, size=(n, b))
    tokens = np.zeros((total, b), dtype=np.int64)
    tokens[:n] = data
    tokens[n + t - 1] = k + 1
    labels = np.zeros((total, b), dtype=np.int64)
    labels[t + n:] = data
    x = np.zeros((total, b, k + 2), dtype=dt)
    np.put_along_axis(x, tokens[..., None], 1.0, axis=-1)
    return _layout(x, batch_first), _layout(labels, batch_first)


def copy_baseline(delay: int, *, copy_len: int = 10, n_symbols: int = 8) -> float:
    """Cross-entropy (nats per step) of the memoryless baseline for ``copy_task``:
    ``copy_len * ln(n_symbols) / (delay + 2 * copy_len)``."""
    t = positive_int("delay", delay)
    n = positive_int("copy_len", copy_len)
    k = positive_int("n_symbols", n_symbols)
    return n * math.log(k) / (t + 2 * n)
