"""Gradient-flow diagnostics from ``Gradients.dh_norm``: summaries and (optional) plots.

``g.dh_norm[r, t]`` is ``||dL/dh_t||`` (over batch and hidden units) for row
``r = layer * D + direction``. When the loss sits at the end of the sequence, its decay
towards early ``t`` is vanishing gradients and its growth is exploding gradients.

Summary numbers (per row):

- ``ratio``: ``||dL/dh_first|| / ||dL/dh_last||``, with "first" the first time step the
  direction processes (t = 0 forward, t = T-1 reverse) and "last" the one it processes
  last, where the loss usually enters. ``1e-6`` means the earliest step receives a millionth
  of the gradient the last one gets. 0 when nothing reaches the first step; NaN when the
  last step gets no gradient.
- ``decades_per_100_steps``: slope of a least-squares line through ``log10`` of the norms
  (ignoring zeros) against the number of steps back from the last step, times 100:
  ``-2`` means the gradient shrinks a hundredfold every 100 steps.

Plotting needs matplotlib (``pip install bptt[plot]``); everything else works without it,
and ``plot_gradient_flow`` raises ``ImportError`` saying what to install.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._checks import as_array, flag

__all__ = [
    "decay_rate",
    "dh_norm_rows",
    "first_last_ratio",
    "have_matplotlib",
    "plot_gradient_flow",
    "pyplot",
    "summarize",
]

_INSTALL_HINT = ("plotting needs matplotlib: pip install 'bptt[plot]' (or pip install "
                 "matplotlib)")


def _rows(dh_norm: Any) -> np.ndarray:
    a = as_array("dh_norm", getattr(dh_norm, "dh_norm", dh_norm), "a real array")
    if a.dtype.kind not in "fiu":
        raise TypeError(f"dh_norm: expected a real array, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"dh_norm: expected shape (num_layers * D, T), got {a.shape}")
    return a.astype(np.float64)


def dh_norm_rows(dh_norm: Any, bidirectional: bool = False) -> list[str]:
    """Labels of the rows of ``dh_norm``: ``"layer 0"``, ``"layer 0 reverse"``, ...

    ``dh_norm`` may be the array or a ``Gradients`` object."""
    n = _rows(dh_norm).shape[0]
    if flag("bidirectional", bidirectional):
        if n % 2:
            raise ValueError(f"dh_norm: a bidirectional model has an even number of rows, "
                             f"got {n}")
        return [f"layer {r // 2}" + (" reverse" if r % 2 else "") for r in range(n)]
    return [f"layer {r}" for r in range(n)]


def _oriented(a: np.ndarray, bidirectional: bool) -> np.ndarray:
    """Rows reordered in processing order (reverse rows flipped), so column 0 is the
    first step processed and column -1 the last."""
    out = a.copy()
    if flag("bidirectional", bidirectional):
        out[1::2] = out[1::2, ::-1]
    return out


def first_last_ratio(dh_norm: Any, bidirectional: bool = False) -> np.ndarray:
    """``||dL/dh_first|| / ||dL/dh_last||`` per row (see the module docstring)."""
    a = _oriented(_rows(dh_norm), bidirectional)
    first, last = a[:, 0], a[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(last > 0, first / np.where(last > 0, last, 1.0), np.nan)


def decay_rate(dh_norm: Any, bidirectional: bool = False) -> np.ndarray:
    """Least-squares slope of ``log10 ||dL/dh||`` per 100 steps back from the last step,
    per row (negative: vanishing; positive: exploding). NaN with fewer than two nonzero
    norms."""
    a = _oriented(_rows(dh_norm), bidirectional)
    T = a.shape[1]
    back = (T - 1) - np.arange(T, dtype=np.float64)
    out = np.full(a.shape[0], np.nan)
    for r in range(a.shape[0]):
        ok = (a[r] > 0) & np.isfinite(a[r])
        if ok.sum() >= 2 and np.ptp(back[ok]) > 0:
            slope = np.polyfit(back[ok], np.log10(a[r, ok]), 1)[0]
            out[r] = 100.0 * slope
    return out


def summarize(dh_norm: Any, bidirectional: bool = False) -> list[dict[str, Any]]:
    """One dict per row: ``row`` label, ``first``, ``last``, ``min``, ``max`` norms,
    ``ratio`` (first/last) and ``decades_per_100_steps``; plain floats, ready for JSON."""
    a = _rows(dh_norm)
    ratio = first_last_ratio(a, bidirectional)
    rate = decay_rate(a, bidirectional)
    oa = _oriented(a, bidirectional)
    return [{"row": label, "first": float(oa[r, 0]), "last": float(oa[r, -1]),
             "min": float(a[r].min()), "max": float(a[r].max()),
             "ratio": float(ratio[r]), "decades_per_100_steps": float(rate[r])}
            for r, label in enumerate(dh_norm_rows(a, bidirectional))]


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported (plots are optional)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def pyplot() -> Any:
    """``matplotlib.pyplot``, on the non-interactive Agg backend unless pyplot was already
    imported (then its backend is left alone). Raises ``ImportError`` with the install
    command when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    if "matplotlib.pyplot" not in __import__("sys").modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_gradient_flow(dh_norms: Any, *, ax: Any = None, title: str | None = None,
                       bidirectional: bool = False) -> Any:
    """Plots ``||dL/dh_t||`` over ``t`` on a log scale, one line per layer/direction.

    ``dh_norms`` is one ``dh_norm`` array (or ``Gradients``) or a dict ``label -> dh_norm``
    to compare runs (e.g. ``{"RNN": g1.dh_norm, "LSTM": g2.dh_norm}``). Zero norms are left
    out (a log scale cannot show them). Draws into ``ax`` (a new figure if None) and
    returns it. Raises ``ImportError`` with the install command when matplotlib is missing.
    """
    plt = pyplot()
    if isinstance(dh_norms, Mapping):
        series = dict(dh_norms)
    else:
        series = {"": dh_norms}
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, dh in series.items():
        a = _rows(dh)
        names = dh_norm_rows(a, bidirectional)
        for r in range(a.shape[0]):
            y = np.where(a[r] > 0, a[r], np.nan)
            parts = [p for p in (label, names[r] if a.shape[0] > 1 else "") if p]
            ax.plot(np.arange(a.shape[1]), y, label=", ".join(parts) or None)
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("||dL/dh_t||")
    if title:
        ax.set_title(title)
    if any(line.get_label() and not line.get_label().startswith("_")
           for line in ax.get_lines()):
        ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return ax

