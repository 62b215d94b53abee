"""The demo's training runs: full BPTT (experiments 1 and 2), truncated BPTT
(experiment 3) and SGD with and without clipping (experiment 4), each returning the
measured numbers as a JSON-ready dict."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from bptt import LSTM, RNN, TBPTT, Linear, clip_grad_norm, data, diagnostics, mse_loss
from bptt.clip import grad_norm
from bptt.optim import SGD, Adam
from bptt.tbptt import parameters

from .config import DemoConfig
from .progress import Progress


def _model(cell: str, hidden: int, seed: int, forget_bias: float) -> Any:
    if cell == "rnn":
        return RNN(2, hidden, seed=seed)
    m = LSTM(2, hidden, seed=seed)
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
