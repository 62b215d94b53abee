"""``python -m bptt demo``: why LSTMs exist, shown with real training runs on the adding problem.

Four experiments, each a set of actual training runs (seeds recorded) whose numbers are
measured, never assumed; the verdict printed for each is computed from those numbers:

1. *Vanishing gradients.* A tanh RNN trained with full BPTT at several sequence lengths
   ``T``; its held-out MSE against the 0.167 baseline, and ``||dL/dh_t||`` over ``t``
   after training (``Gradients.dh_norm``), summarised by the first/last-step ratio.
2. *Gating.* The same for an LSTM (forget-gate bias initialised to +1, the usual practice
   since Gers et al. 2000), same data, same budget.
3. *Truncation.* An LSTM trained with ``TBPTT(k1=k2=k)`` on streams of adding-problem
   episodes (state reset at each episode start, loss at each episode's last step), with
   the markers placed as in Hochreiter & Schmidhuber 1997 (``placement="hochreiter"``:
   one in the first 10 steps, the other elsewhere in the first half; see ``bptt.data``),
   with windows ``k <= T - T//2`` (the window that carries the loss never contains a
   marker, so no gradient ever connects a marker to the target) and with the full window
   ``k = T`` (full BPTT per episode); the default also runs ``k = 75`` at ``T = 100``,
   which reaches the second marker in some episodes (reported, not judged). All windows
   use the same
   hyperparameters, including the LSTM's "chrono" initialisation (Tallec & Ollivier
   2018: forget-gate bias ``log(u)``, input-gate bias ``-log(u)``, ``u ~ U[1, T - 1]`` per
   unit): with both markers at least ``T/2`` steps back, the usual forget bias of +1
   forgets them within a few dozen steps and even full BPTT sits on the baseline
   plateau for thousands of updates (``--tbptt-init forget_bias`` shows it).
   (``--tbptt-placement arjovsky`` runs it with one marker in each half instead: there the
   second marker often falls inside a short window, and the LSTM can learn the task
   anyway; see ``verdicts``.)
4. *Exploding gradients and clipping.* A tanh RNN trained with plain SGD at a large
   learning rate, several seeds, with and without ``clip_grad_norm``; gradient norms and
   whether the loss diverged.

Everything is written to ``--out`` (default ``./bptt-demo``): ``results.json`` (all numbers,
curves and the configuration), ``report.png`` (if matplotlib is installed) and
``table.txt`` (the terminal table).

Default run: lengths 50/100/200, a few minutes on 2 cores; ``--quick``: lengths 25/50,
under a minute; ``--full``: lengths 50/100/200/400, three seeds, larger budgets. Every
size can be set on the command line (``python -m bptt demo --help``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import _models, data, diagnostics
from .clip import clip_grad_norm, grad_norm
from .nn import Linear, mse_loss
from .optim import SGD, Adam
from .tbptt import TBPTT, parameters

BASELINE = data.ADDING_BASELINE_MSE
HALF = data.ADDING_HALF_MSE


@dataclasses.dataclass
class DemoConfig:
    """Every knob of the demo. ``DemoConfig.preset("default" | "quick" | "full" | "tiny")``
    gives the named sizes; fields can then be overridden."""

    lengths: tuple[int, ...] = (50, 100, 200)
    seeds: int = 1                 # seeds per configuration in experiments 1-3
    seed: int = 0                  # first seed
    hidden: int = 32
    batch: int = 32
    test_size: int = 500
    eval_every: int = 50
    solve_mse: float = 0.01        # held-out MSE below which a run counts as solved
    rnn_lr: float = 3e-3           # Adam
    lstm_lr: float = 3e-2          # Adam
    forget_bias: float = 1.0
    train_clip: float = 1.0        # clip_grad_norm in experiments 1-3
    rnn_iters: int = 2000
    lstm_iters: int = 2500
    tbptt_len: int = 100           # episode length T in experiment 3
    tbptt_windows: tuple[int, ...] = (10, 25, 75)   # the full window k = T is always added
    tbptt_placement: str = "hochreiter"         # marker placement in experiment 3
    tbptt_init: str = "chrono"     # exp. 3 LSTM init: "chrono" or "forget_bias" (as exp. 2)
    tbptt_episodes: int = 2000     # per stream... in updates: one per episode
    tbptt_per_call: int = 25
    clip_len: int = 50
    clip_lr: float = 0.3           # SGD, no momentum
    clip_max_norm: float = 1.0
    clip_seeds: int = 6
    clip_iters: int = 300
    blowup_loss: float = 10.0      # a loss above this (60x the baseline) or NaN = blew up
    near_baseline: float = 0.75    # exp. 3: "near the baseline" = MSE >= this x 0.167

    @classmethod
    def preset(cls, name: str) -> DemoConfig:
        """The named configuration: ``default``, ``quick``, ``full`` or ``tiny`` (tests)."""
        if name == "default":
            return cls()
        if name == "quick":
            return cls(lengths=(25, 50), rnn_iters=600, lstm_iters=1000, tbptt_len=50,
                       tbptt_windows=(5, 25), tbptt_episodes=1000, clip_len=25,
                       clip_seeds=4, clip_iters=200, test_size=300)
        if name == "full":
            return cls(lengths=(50, 100, 200, 400), seeds=3, rnn_iters=5000,
                       lstm_iters=6000, tbptt_windows=(10, 25, 50, 75, 90),
                       tbptt_episodes=4000,
                       clip_seeds=10, clip_iters=500)
        if name == "tiny":
            return cls(lengths=(6,), hidden=4, batch=4, test_size=16, eval_every=5,
                       rnn_iters=10, lstm_iters=10, tbptt_len=6, tbptt_windows=(2,),
                       tbptt_episodes=8, tbptt_per_call=4, clip_len=6, clip_seeds=2,
                       clip_iters=5)
        raise ValueError(f"preset: expected default, quick, full or tiny, got {name!r}")


# ---------------------------------------------------------------------- progress bar
class Progress:
    """A one-line progress bar on a stream (stderr by default), weighted by work units.

    On a terminal it redraws in place; elsewhere it prints a line every 10%. ``quiet``
    turns it off."""

    def __init__(self, total: float, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.total = max(float(total), 1e-9)
        self.done = 0.0
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.label = ""
        self._last_draw = 0.0
        self._last_decile = -1

    def advance(self, units: float, label: str | None = None) -> None:
        """Adds ``units`` of finished work (and sets the label shown)."""
        self.done = min(self.total, self.done + units)
        if label is not None:
            self.label = label
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if self.quiet:
            return
        frac = self.done / self.total
        now = time.perf_counter()
        elapsed = now - self.t0
        eta = elapsed * (1 - frac) / frac if frac > 0.01 else float("nan")
        eta_s = "?" if math.isnan(eta) else f"{eta:4.0f}s"
        if self.tty:
            if not force and now - self._last_draw < 0.1 and frac < 1:
                return
            self._last_draw = now
            width = 28
            fill = round(width * frac)
            bar = "#" * fill + "-" * (width - fill)
            self.stream.write(f"\r[{bar}] {100 * frac:5.1f}%  {elapsed:5.0f}s elapsed, "
                              f"eta {eta_s}  {self.label[:40]:<40}")
            self.stream.flush()
        else:
            decile = int(frac * 10)
            if decile != self._last_decile or force:
                self._last_decile = decile
                self.stream.write(f"[{100 * frac:5.1f}%] {elapsed:5.0f}s  {self.label}\n")
                self.stream.flush()

    def close(self) -> None:
        """Finishes the bar (newline on a terminal)."""
        if self.quiet:
            return
        self.done = self.total
        self._draw(force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------- helpers
def _model(cell: str, hidden: int, seed: int, forget_bias: float) -> Any:
    if cell == "rnn":
        return _models.RNN(2, hidden, seed=seed)
    m = _models.LSTM(2, hidden, seed=seed)
    # Gate order i, f, g, o: rows [H, 2H) of the bias are the forget gate's.
    m.params["bias_ih_l0"][hidden:2 * hidden] += np.float32(forget_bias)
    return m


def _chrono(m: Any, hidden: int, t_max: int, seed: int) -> Any:
    """Chrono initialisation of an LSTM (Tallec & Ollivier 2018, "Can recurrent neural
    networks warp time?"), added to the default biases: per unit, ``u ~ U[1, t_max - 1]``,
    forget-gate bias ``+= log(u)`` and input-gate bias ``-= log(u)`` (characteristic
    memory times spread up to ``t_max`` steps, and a mostly closed input gate so the cell
    does not saturate by accumulating every input)."""
    u = np.random.default_rng([seed, t_max, 5]).uniform(1.0, max(t_max - 1.0, 1.0), hidden)
    b = np.log(u).astype(m.params["bias_ih_l0"].dtype)
    # Gate order i, f, g, o.
    m.params["bias_ih_l0"][hidden:2 * hidden] += b
    m.params["bias_ih_l0"][:hidden] -= b
    return m


def _test_mse(m: Any, ro: Linear, x: np.ndarray, y: np.ndarray) -> float:
    out, _ = m(x)
    with np.errstate(all="ignore"):
        return float(np.mean((ro(out[-1]).astype(np.float64) - y) ** 2))


def _grad_step(m: Any, ro: Linear, x: np.ndarray, y: np.ndarray
               ) -> tuple[float, dict[str, np.ndarray], Any]:
    """Full BPTT on one adding-problem batch: loss, gradients (tbptt.parameters names),
    Gradients."""
    out, _, tape = m.forward(x)
    pred, cache = ro.forward(out[-1])
    loss, d_pred = mse_loss(pred, y)
    d_h, g_ro = ro.backward(cache, d_pred)
    d_out = np.zeros_like(out)
    d_out[-1] = d_h
    g = m.backward(tape, d_out)
    grads = {f"rnn.{k}": v for k, v in g.params.items()}
    grads.update({f"readout.{k}": v for k, v in g_ro.items()})
    return loss, grads, g


def _gradient_flow(m: Any, ro: Linear, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``dh_norm`` of the test batch's loss (no update)."""
    norms: np.ndarray = _grad_step(m, ro, x, y)[2].dh_norm
    return norms


def _status(mse: float, solve: float) -> str:
    if not math.isfinite(mse):
        return "diverged"
    if mse < solve:
        return "solved"
    if mse < 0.12:
        return "partly"
    return "no"


# ---------------------------------------------------------------------- experiments
def run_full_bptt(cell: str, T: int, seed: int, cfg: DemoConfig, bar: Progress) -> dict[str, Any]:
    """Experiment 1/2: train ``cell`` ("rnn" or "lstm") with full BPTT on the adding problem
    of length ``T``; stops early once the held-out MSE is below ``cfg.solve_mse``."""
    t0 = time.perf_counter()
    m = _model(cell, cfg.hidden, seed, cfg.forget_bias)
    ro = Linear(cfg.hidden, 1, seed=seed + 1000)
    lr = cfg.rnn_lr if cell == "rnn" else cfg.lstm_lr
    opt = Adam(parameters(m, ro), lr=lr)
    xt, yt = data.adding_problem(cfg.test_size, T, seed=10_000 + T)
    dh_init = _gradient_flow(m, ro, xt, yt)
    rng = np.random.default_rng([seed, T, 1])
    iters = cfg.rnn_iters if cell == "rnn" else cfg.lstm_iters
    curve = [(0, _test_mse(m, ro, xt, yt))]
    norms = []
    label = f"{cell.upper()} T={T} seed={seed}"
    it = 0
    for it in range(1, iters + 1):
        x, y = data.adding_problem(cfg.batch, T, seed=rng)
        _, grads, _ = _grad_step(m, ro, x, y)
        norms.append(clip_grad_norm(grads, cfg.train_clip))
        opt.step(grads)
        if it % cfg.eval_every == 0 or it == iters:
            curve.append((it, _test_mse(m, ro, xt, yt)))
            bar.advance(cfg.eval_every * T, label)
            if curve[-1][1] < cfg.solve_mse:
                break
    bar.advance((iters - it) * T)
    dh = _gradient_flow(m, ro, xt, yt)
    final = curve[-1][1]
    return {
        "experiment": "full_bptt", "cell": cell, "T": T, "seed": seed, "lr": lr,
        "iterations": it, "max_iterations": iters, "stopped_early": it < iters,
        "final_test_mse": final, "best_test_mse": min(c[1] for c in curve),
        "status": _status(final, cfg.solve_mse),
        "curve": [[i, v] for i, v in curve],
        "grad_norm_median": float(np.median(norms)), "grad_norm_max": float(np.max(norms)),
        "dh_norm_after": dh[0].tolist(), "dh_norm_init": dh_init[0].tolist(),
        "gradient_flow_after": diagnostics.summarize(dh)[0],
        "gradient_flow_init": diagnostics.summarize(dh_init)[0],
        "seconds": time.perf_counter() - t0,
    }


def _marker_reach(x: np.ndarray, T: int, k2: int, placement: str) -> dict[str, Any]:
    """Where the markers of the episodes ``x`` (T, B, 2) lie relative to the last ``k2``
    steps ``[T - k2, T)``, the most that the window carrying an episode's loss (at step
    ``T - 1``) can cover (exactly that when ``k2`` divides ``T``; when it does not, the
    window of some episodes is shorter, so the fractions are upper bounds)."""
    start = T - k2
    inside = x[max(start, 0):, :, 1].sum(axis=0)     # markers per episode in the window
    latest = T // 2 - 1 if placement == "hochreiter" else T - 1   # latest possible marker
    if start > latest:
        label = "never"           # guaranteed by the placement: no marker in the window
    elif start <= 0:
        label = "always (both)"
    else:
        label = "sometimes"
    return {"markers_in_window": label,
            "frac_episodes_any_marker_in_window": float(np.mean(inside >= 1)),
            "frac_episodes_both_markers_in_window": float(np.mean(inside == 2))}


def run_tbptt(window: int, seed: int, cfg: DemoConfig, bar: Progress) -> dict[str, Any]:
    """Experiment 3: an LSTM trained by ``TBPTT(k1=k2=window)`` on streams of adding
    episodes of length ``cfg.tbptt_len`` with the markers placed by
    ``cfg.tbptt_placement`` (state reset at episode starts, loss at the last step of each
    episode: one update per episode per stream batch). The hyperparameters are the same
    for every window."""
    t0 = time.perf_counter()
    T = cfg.tbptt_len
    placement = cfg.tbptt_placement
    if cfg.tbptt_init == "chrono":
        m = _chrono(_model("lstm", cfg.hidden, seed, 0.0), cfg.hidden, T, seed)
    elif cfg.tbptt_init == "forget_bias":
        m = _model("lstm", cfg.hidden, seed, cfg.forget_bias)
    else:
        raise ValueError(f"tbptt_init: expected 'chrono' or 'forget_bias', got "
                         f"{cfg.tbptt_init!r}")
    ro = Linear(cfg.hidden, 1, seed=seed + 1000)
    opt = Adam(parameters(m, ro), lr=cfg.lstm_lr)
    trainer = TBPTT(m, ro, mse_loss, opt, k1=window, k2=window, clip_norm=cfg.train_clip)
    xt, yt = data.adding_problem(cfg.test_size, T, seed=10_000 + T, placement=placement)
    rng = np.random.default_rng([seed, T, window, 3])
    curve = [(0, _test_mse(m, ro, xt, yt))]
    norms: list[float] = []
    label = f"TBPTT k={window} T={T} seed={seed}"
    done = 0
    while done < cfg.tbptt_episodes:
        n = min(cfg.tbptt_per_call, cfg.tbptt_episodes - done)
        s = data.adding_stream(cfg.batch, T, n, seed=rng, placement=placement)
        res = trainer.train(s["x"], s["y"], mask=s["mask"], resets=s["resets"])
        norms.extend(res.grad_norms[res.updated].tolist())
        done += n
        curve.append((done, _test_mse(m, ro, xt, yt)))
        bar.advance(n * T, label)
        if curve[-1][1] < cfg.solve_mse:
            break
    bar.advance((cfg.tbptt_episodes - done) * T)
    final = curve[-1][1]
    return {
        "experiment": "tbptt", "cell": "lstm", "T": T, "k1": window, "k2": window,
        "placement": placement, "init": cfg.tbptt_init,
        "seed": seed, "lr": cfg.lstm_lr, "updates": done, "max_updates": cfg.tbptt_episodes,
        "stopped_early": done < cfg.tbptt_episodes,
        **_marker_reach(xt, T, window, placement),
        "test_mean_prediction_mse": float(np.mean((yt.astype(np.float64) - 1.0) ** 2)),
        "final_test_mse": final, "best_test_mse": min(c[1] for c in curve[1:] or curve),
        "status": _status(final, cfg.solve_mse),
        "curve": [[i, v] for i, v in curve],
        "grad_norm_median": float(np.median(norms)) if norms else None,
        "seconds": time.perf_counter() - t0,
    }


def run_clipping(seed: int, clip: bool, cfg: DemoConfig, bar: Progress) -> dict[str, Any]:
    """Experiment 4: a tanh RNN with plain SGD at ``cfg.clip_lr``, with or without
    ``clip_grad_norm(max_norm=cfg.clip_max_norm)``; stops at the first non-finite loss."""
    t0 = time.perf_counter()
    T = cfg.clip_len
    m = _model("rnn", cfg.hidden, seed, 0.0)
    ro = Linear(cfg.hidden, 1, seed=seed + 1000)
    opt = SGD(parameters(m, ro), lr=cfg.clip_lr)
    rng = np.random.default_rng([seed, T, 4])
    losses: list[float] = []
    norms: list[float] = []
    label = f"SGD lr={cfg.clip_lr} {'clip' if clip else 'no clip'} seed={seed}"
    it = 0
    with np.errstate(all="ignore"):
        for it in range(1, cfg.clip_iters + 1):
            x, y = data.adding_problem(cfg.batch, T, seed=rng)
            loss, grads, _ = _grad_step(m, ro, x, y)
            norm = clip_grad_norm(grads, cfg.clip_max_norm) if clip else grad_norm(grads)
            losses.append(loss)
            norms.append(norm)
            if not (math.isfinite(loss) and math.isfinite(norm)):
                break
            opt.step(grads)
            if it % 20 == 0:
                bar.advance(20 * T, label)
    bar.advance((cfg.clip_iters - it) * T + (it % 20) * T)
    arr = np.array(losses)
    blew = bool(np.any(~np.isfinite(arr)) or np.nanmax(arr) > cfg.blowup_loss)
    finite_norms = [n for n in norms if math.isfinite(n)]
    tail = arr[-20:]
    return {
        "experiment": "clipping", "cell": "rnn", "T": T, "seed": seed, "lr": cfg.clip_lr,
        "clip_max_norm": cfg.clip_max_norm if clip else None, "iterations": it,
        "blew_up": blew,
        "first_nonfinite_iteration": (int(np.argmax(~np.isfinite(arr))) + 1
                                      if np.any(~np.isfinite(arr)) else None),
        "max_grad_norm": max(finite_norms) if finite_norms else None,
        "median_grad_norm": float(np.median(finite_norms)) if finite_norms else None,
        "final_loss": float(np.mean(tail)) if np.all(np.isfinite(tail)) else None,
        "max_loss": float(np.nanmax(arr)) if np.any(np.isfinite(arr)) else None,
        "losses": [v if math.isfinite(v) else None for v in losses],
        "grad_norms": [v if math.isfinite(v) else None for v in norms],
        "seconds": time.perf_counter() - t0,
    }


def _truncation_verdict(tb: list[dict[str, Any]], cfg: DemoConfig) -> dict[str, Any]:
    """Claim 3, from the TBPTT runs: every run with a window ``k <= T - T//2`` (it never
    reaches into the first half, so with the hochreiter placement it never contains a
    marker; with the arjovsky placement, never the first one) must stay near the
    baseline (final and best held-out MSE >= ``cfg.near_baseline`` x 0.167, i.e. at most
    25% of the target's variance explained with the default), and every run with the
    full window ``k = T`` (both markers always inside) must solve it (final MSE <
    ``cfg.solve_mse``). Runs with windows in between are reported but not judged."""
    T = cfg.tbptt_len
    short = [r for r in tb if r["k2"] <= T - T // 2]
    whole = [r for r in tb if r["k2"] >= T]
    floor = cfg.near_baseline * BASELINE
    short_fail = bool(short) and all(
        r["final_test_mse"] >= floor and r["best_test_mse"] >= floor for r in short)
    whole_ok = bool(whole) and all(r["final_test_mse"] < cfg.solve_mse for r in whole)
    desc = "; ".join(f"k={r['k2']} (markers in window: {r['markers_in_window']}, seed "
                     f"{r['seed']}): final {r['final_test_mse']:.4f}, best "
                     f"{r['best_test_mse']:.4f}, {r['updates']}/{r['max_updates']} updates"
                     for r in tb)
    problems = []
    if not short:
        problems.append(f"no run with a window k <= {T - T // 2}")
    elif not short_fail:
        if cfg.tbptt_placement == "arjovsky":
            why = ("with the arjovsky placement the second marker can fall inside a short "
                   "window: the LSTM learns 'write the value when a marker comes, then "
                   "hold it' from those episodes, and the same weights also store the "
                   "first value")
        else:
            why = ("the truncated gradient never links a marker to the target, but the "
                   "forward pass still carries the state across the window boundary, and "
                   "the readout (and the recurrent weights, from the steps inside the "
                   "window) can learn to use whatever that state holds")
        problems.append(f"a window k <= {T - T // 2} got below {floor:.3f} "
                        f"({cfg.near_baseline:g} x the baseline); likely reason: {why}")
    if not whole:
        problems.append("no run with the full window k = T")
    elif not whole_ok:
        problems.append(f"the full window did not solve it (MSE >= {cfg.solve_mse:g}) "
                        f"within {whole[0]['max_updates']} updates")
    note = f" -- NOT shown: {'; '.join(problems)}." if problems else ""
    mean_mse = [r["test_mean_prediction_mse"] for r in tb if "test_mean_prediction_mse" in r]
    held = (f"; predicting the mean (1.0) scores {mean_mse[0]:.4f} on this held-out set"
            if mean_mse else "")
    return {
        "claim": "3. truncated BPTT with a window shorter than the distance from the markers "
                 "to the target cannot solve it, even for the LSTM, while a window that "
                 "covers the markers (full BPTT) can",
        "shown": bool(short_fail and whole_ok),
        "evidence": f"LSTM TBPTT(k1=k2=k) at T={T}, marker placement "
                    f"'{cfg.tbptt_placement}' ({_placement_words(cfg.tbptt_placement, T)}), "
                    f"init '{cfg.tbptt_init}', Adam {cfg.lstm_lr:g} for every k; judged: "
                    f"k <= {T - T // 2} must stay at or near the baseline (MSE >= {floor:.3f}), "
                    f"k = {T} must solve it (MSE < {cfg.solve_mse:g}){held}: {desc}{note}",
    }


def _placement_words(placement: str, T: int) -> str:
    half = T // 2
    if placement == "hochreiter":
        return (f"Hochreiter & Schmidhuber 1997: one marker in steps 0..{min(10, half) - 1}, "
                f"the other elsewhere in 0..{half - 1}")
    return f"Arjovsky et al. 2016: one marker in 0..{half - 1}, one in {half}..{T - 1}"


# ---------------------------------------------------------------------- verdicts
def verdicts(results: dict[str, list[dict[str, Any]]], cfg: DemoConfig) -> list[dict[str, Any]]:
    """One verdict per claim, computed from the measured numbers."""
    out = []
    full = results["full_bptt"]
    rnn = [r for r in full if r["cell"] == "rnn"]
    lstm = [r for r in full if r["cell"] == "lstm"]
    longest = max(cfg.lengths)
    rnn_long = [r for r in rnn if r["T"] == longest]
    ratio_rnn = [r["gradient_flow_after"]["ratio"] for r in rnn_long]
    ratio_lstm = [r["gradient_flow_after"]["ratio"] for r in lstm if r["T"] == longest]
    stalled = all(r["final_test_mse"] > 0.5 * BASELINE for r in rnn_long)
    rnn_desc = ", ".join(f"T={r['T']}: {r['final_test_mse']:.3f}" for r in rnn)
    out.append({
        "claim": "1. tanh RNN (full BPTT) stalls near the 0.167 baseline as T grows; "
                 "||dL/dh_t|| decays toward early steps",
        "shown": bool(stalled and all(x < 1e-2 for x in ratio_rnn)),
        "evidence": f"RNN held-out MSE {rnn_desc}; at T={longest} ||dL/dh_0||/||dL/dh_T-1|| = "
                    + ", ".join(f"{x:.1e}" for x in ratio_rnn)
                    + " (LSTM: " + ", ".join(f"{x:.1e}" for x in ratio_lstm) + ")",
    })
    lstm_desc = ", ".join(f"T={r['T']}: {r['final_test_mse']:.4f} (it {r['iterations']})"
                          for r in lstm)
    out.append({
        "claim": "2. LSTM (full BPTT) solves it, MSE far below the baseline, at the same T",
        "shown": all(r["final_test_mse"] < cfg.solve_mse for r in lstm),
        "evidence": f"LSTM held-out MSE {lstm_desc}",
    })
    out.append(_truncation_verdict(results["tbptt"], cfg))
    cl = results["clipping"]
    raw = [r for r in cl if r["clip_max_norm"] is None]
    clipped = [r for r in cl if r["clip_max_norm"] is not None]
    n_raw = sum(r["blew_up"] for r in raw)
    n_clip = sum(r["blew_up"] for r in clipped)
    max_raw = max((r["max_grad_norm"] or 0.0) for r in raw) if raw else 0.0
    max_clip = max((r["max_grad_norm"] or 0.0) for r in clipped) if clipped else 0.0
    out.append({
        "claim": "4. with a large learning rate, training without clipping blows up on some "
                 "runs; with clipping it does not",
        "shown": bool(n_raw > 0 and n_clip == 0),
        "evidence": f"SGD lr={cfg.clip_lr}, T={cfg.clip_len}: without clipping {n_raw}/"
                    f"{len(raw)} runs blew up (largest finite gradient norm {max_raw:.3g}); "
                    f"with clip_grad_norm({cfg.clip_max_norm}) {n_clip}/{len(clipped)} "
                    f"(largest norm before clipping {max_clip:.3g})",
    })
    return out


# ---------------------------------------------------------------------- table
def format_table(results: dict[str, list[dict[str, Any]]], cfg: DemoConfig) -> str:
    """The result table printed in the terminal (and saved as table.txt)."""
    rows = [("exp", "model", "T", "training", "seed", "steps", "held-out MSE", "result",
             "grad flow / norms")]
    for r in results["full_bptt"]:
        gf = r["gradient_flow_after"]["ratio"]
        flow = "0 (float underflow)" if gf == 0 else f"{gf:.1e}"
        rows.append(("1" if r["cell"] == "rnn" else "2", r["cell"].upper(), str(r["T"]),
                     f"full BPTT, Adam {r['lr']:g}", str(r["seed"]),
                     f"{r['iterations']}/{r['max_iterations']}",
                     f"{r['final_test_mse']:.4f}", r["status"],
                     f"|dh_0|/|dh_T-1| = {flow}"))
    for r in results["tbptt"]:
        rows.append(("3", "LSTM", str(r["T"]), f"TBPTT k1=k2={r['k2']}, {r['placement']}",
                     str(r["seed"]), f"{r['updates']}/{r['max_updates']}",
                     f"{r['final_test_mse']:.4f}", r["status"],
                     f"markers in window: {r['markers_in_window']}"))
    for r in results["clipping"]:
        clip = "no clip" if r["clip_max_norm"] is None else f"clip {r['clip_max_norm']:g}"
        if r["first_nonfinite_iteration"]:
            loss = f"NaN at step {r['first_nonfinite_iteration']}"
        else:
            fl = r["final_loss"]
            loss = "-" if fl is None else f"{fl:.4f}" if fl < 10 else f"{fl:.3g}"
        mx = r["max_grad_norm"]
        rows.append(("4", "RNN", str(r["T"]), f"SGD {r['lr']:g}, {clip}", str(r["seed"]),
                     f"{r['iterations']}/{cfg.clip_iters}", loss,
                     "BLEW UP" if r["blew_up"] else "stable",
                     f"max |g| = {mx:.3g}" if mx is not None else "max |g| = nan"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"Baselines: predict the mean -> MSE {BASELINE:.4f}; remember only one "
                 f"of the two values -> {HALF:.4f}; 'solved' = MSE < {cfg.solve_mse:g} "
                 f"(held-out set of {cfg.test_size}).")
    lines.append(f"Experiment 3: marker placement '{cfg.tbptt_placement}' "
                 f"({_placement_words(cfg.tbptt_placement, cfg.tbptt_len)}); LSTM init "
                 f"'{cfg.tbptt_init}', Adam {cfg.lstm_lr:g}, the same for every window; "
                 f"the window carrying the loss covers at most the last k steps of an "
                 f"episode.")
    return "\n".join(lines)


# ---------------------------------------------------------------------- report
def write_report(path: Path, results: dict[str, list[dict[str, Any]]], cfg: DemoConfig) -> None:
    """The four-panel PNG report (needs matplotlib)."""
    plt = diagnostics._pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0, 0]
    for r in results["full_bptt"]:
        c = np.array(r["curve"], dtype=float)
        ax.plot(c[:, 0], c[:, 1], ("--" if r["cell"] == "rnn" else "-"),
                label=f"{r['cell'].upper()} T={r['T']} s{r['seed']}")
    ax.axhline(BASELINE, color="gray", lw=1, ls=":")
    ax.axhline(HALF, color="gray", lw=1, ls="-.")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("held-out MSE")
    ax.set_title("1-2. adding problem, full BPTT (dotted: 0.167 baseline)")
    ax.legend(fontsize="x-small", ncol=2)
    ax = axes[0, 1]
    longest = max(cfg.lengths)
    series = {}
    for r in results["full_bptt"]:
        if r["T"] == longest:
            series[f"{r['cell'].upper()} trained s{r['seed']}"] = np.array([r["dh_norm_after"]])
            series[f"{r['cell'].upper()} init s{r['seed']}"] = np.array([r["dh_norm_init"]])
    diagnostics.plot_gradient_flow(series, ax=ax,
                                   title=f"gradient flow ||dL/dh_t||, T={longest}")
    ax = axes[1, 0]
    for r in results["tbptt"]:
        c = np.array(r["curve"], dtype=float)
        ax.plot(c[:, 0], c[:, 1], label=f"k1=k2={r['k2']} s{r['seed']}")
    ax.axhline(BASELINE, color="gray", lw=1, ls=":")
    ax.axhline(HALF, color="gray", lw=1, ls="-.")
    ax.set_yscale("log")
    ax.set_xlabel("updates (episodes)")
    ax.set_ylabel("held-out MSE")
    ax.set_title(f"3. LSTM ({cfg.tbptt_init} init), truncated BPTT, T={cfg.tbptt_len}, "
                 f"{cfg.tbptt_placement} markers")
    ax.legend(fontsize="small")
    ax = axes[1, 1]
    for r in results["clipping"]:
        n = np.array([np.nan if v is None else v for v in r["grad_norms"]], dtype=float)
        style = "-" if r["clip_max_norm"] is None else ":"
        tag = "no clip" if r["clip_max_norm"] is None else "clip"
        ax.plot(np.arange(1, len(n) + 1), n, style, label=f"{tag} s{r['seed']}")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("gradient norm (before clipping)")
    ax.set_title(f"4. tanh RNN, SGD lr={cfg.clip_lr}, T={cfg.clip_len}")
    ax.legend(fontsize="x-small", ncol=2)
    fig.suptitle("bptt demo: why LSTMs exist (numbers in results.json)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- driver
def run_demo(cfg: DemoConfig, out_dir: str | os.PathLike[str], *, plot: bool = True,
             quiet: bool = False, stream: TextIO | None = None) -> dict[str, Any]:
    """Runs the four experiments with ``cfg``, writes ``results.json``, ``table.txt`` and
    (when ``plot`` and matplotlib is available) ``report.png`` into ``out_dir``; prints
    the table and verdicts to ``stream`` (stdout) unless ``quiet``. Returns the results
    dict that was written as JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stream = stream if stream is not None else sys.stdout
    t0 = time.perf_counter()
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    units = (cfg.seeds * sum(cfg.lengths) * (cfg.rnn_iters + cfg.lstm_iters)
             + cfg.seeds * len(_windows(cfg)) * cfg.tbptt_episodes * cfg.tbptt_len
             + 2 * cfg.clip_seeds * cfg.clip_iters * cfg.clip_len)
    bar = Progress(units, quiet=quiet)
    results: dict[str, list[dict[str, Any]]] = {"full_bptt": [], "tbptt": [], "clipping": []}
    for cell in ("rnn", "lstm"):
        for T in cfg.lengths:
            for s in seeds:
                results["full_bptt"].append(run_full_bptt(cell, T, s, cfg, bar))
    for k in _windows(cfg):
        for s in seeds:
            results["tbptt"].append(run_tbptt(k, s, cfg, bar))
    for clip in (False, True):
        for i in range(cfg.clip_seeds):
            results["clipping"].append(run_clipping(cfg.seed + i, clip, cfg, bar))
    bar.close()
    verdict = verdicts(results, cfg)
    table = format_table(results, cfg)
    elapsed = time.perf_counter() - t0
    report = {
        "config": dataclasses.asdict(cfg),
        "environment": {"bptt": _version(), "numpy": np.__version__,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "cpus": os.cpu_count()},
        "wall_time_s": elapsed,
        "baselines": {"mean_prediction_mse": BASELINE, "second_value_only_mse": HALF,
                      "experiment_3_placement": cfg.tbptt_placement,
                      "experiment_3_markers": _placement_words(cfg.tbptt_placement,
                                                               cfg.tbptt_len),
                      "experiment_3_near_baseline_mse": cfg.near_baseline * BASELINE},
        "verdicts": verdict,
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(report, indent=1, allow_nan=True))
    (out / "table.txt").write_text(table + "\n")
    png = None
    plot_note = ""
    if plot:
        if diagnostics.have_matplotlib():
            png = out / "report.png"
            write_report(png, results, cfg)
        else:
            plot_note = ("report.png not written: matplotlib is not installed "
                         "(pip install 'bptt[plot]'); results.json has every number.")
    else:
        plot_note = "report.png not written (--no-plot)."
    if not quiet:
        w = stream.write
        w("\n" + table + "\n\n")
        for v in verdict:
            w(f"[{'shown' if v['shown'] else 'NOT shown'}] {v['claim']}\n    {v['evidence']}\n")
        w(f"\nwall time {elapsed:.1f}s. Wrote {out / 'results.json'}, {out / 'table.txt'}"
          + (f", {png}" if png else "") + "\n")
        if plot_note:
            w(plot_note + "\n")
    report["files"] = sorted(p.name for p in out.iterdir())
    return report


def _windows(cfg: DemoConfig) -> list[int]:
    """Experiment 3's windows: ``cfg.tbptt_windows`` plus the full window ``T``."""
    return sorted({*cfg.tbptt_windows, cfg.tbptt_len})


def _version() -> str:
    try:
        from . import __version__
        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from exc
    if not vals or min(vals) < 2:
        raise argparse.ArgumentTypeError(f"expected ints >= 2, got {text!r}")
    return vals


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``demo`` command's argument parser."""
    p = parser or argparse.ArgumentParser(prog="python -m bptt demo")
    p.description = ("Train RNNs and LSTMs on the adding problem and show vanishing "
                     "gradients, gating, the truncation window and gradient clipping.")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small run, under a minute")
    size.add_argument("--full", action="store_true",
                      help="full scale: T up to 400, 3 seeds, larger budgets (long)")
    size.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="bptt-demo", help="output directory (default ./bptt-demo)")
    p.add_argument("--seed", type=int, default=None, help="first seed (default 0)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per configuration")
    p.add_argument("--lengths", type=_ints, default=None,
                   help="sequence lengths for experiments 1-2, e.g. 50,100,200")
    p.add_argument("--hidden", type=int, default=None, help="hidden units")
    p.add_argument("--batch", type=int, default=None, help="batch size / parallel streams")
    p.add_argument("--rnn-iters", type=int, default=None, help="max iterations, RNN runs")
    p.add_argument("--lstm-iters", type=int, default=None, help="max iterations, LSTM runs")
    p.add_argument("--tbptt-len", type=int, default=None, help="episode length, experiment 3")
    p.add_argument("--tbptt-windows", type=_ints, default=None,
                   help="truncation windows for experiment 3 (the full window is added)")
    p.add_argument("--tbptt-episodes", type=int, default=None,
                   help="max updates (episodes) per TBPTT run")
    p.add_argument("--tbptt-placement", choices=data.ADDING_PLACEMENTS, default=None,
                   help="marker placement in experiment 3 (default hochreiter: both "
                        "markers in the first half)")
    p.add_argument("--tbptt-init", choices=("chrono", "forget_bias"), default=None,
                   help="LSTM initialisation in experiment 3 (default chrono; forget_bias: "
                        "as in experiment 2)")
    p.add_argument("--clip-seeds", type=int, default=None, help="seeds in experiment 4")
    p.add_argument("--clip-lr", type=float, default=None, help="SGD learning rate, exp. 4")
    p.add_argument("--no-plot", action="store_true", help="do not write report.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    return p


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """A ``DemoConfig`` from parsed command-line arguments."""
    name = "quick" if args.quick else "full" if args.full else "tiny" if args.tiny else "default"
    cfg = DemoConfig.preset(name)
    over = {"seed": args.seed, "seeds": args.seeds, "lengths": args.lengths,
            "hidden": args.hidden, "batch": args.batch, "rnn_iters": args.rnn_iters,
            "lstm_iters": args.lstm_iters, "tbptt_len": args.tbptt_len,
            "tbptt_windows": args.tbptt_windows, "tbptt_episodes": args.tbptt_episodes,
            "tbptt_placement": args.tbptt_placement, "tbptt_init": args.tbptt_init,
            "clip_seeds": args.clip_seeds, "clip_lr": args.clip_lr}
    for k, v in over.items():
        if v is not None:
            if isinstance(v, int) and not isinstance(v, bool) and k != "seed" and v < 1:
                raise SystemExit(f"--{k.replace('_', '-')}: expected a positive number, got {v}")
            setattr(cfg, k, v)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bptt demo``."""
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    run_demo(cfg, args.out, plot=not args.no_plot, quiet=args.quiet)
    return 0
