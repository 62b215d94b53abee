"""The demo's outputs: the result table (terminal and ``table.txt``) and the four-panel
figure (``report.png``, needs matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bptt import diagnostics

from .config import BASELINE, HALF, DemoConfig, placement_words


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
                 f"({placement_words(cfg.tbptt_placement, cfg.tbptt_len)}); LSTM init "
                 f"'{cfg.tbptt_init}', Adam {cfg.lstm_lr:g}, the same for every window; "
                 f"the window carrying the loss covers at most the last k steps of an "
                 f"episode.")
    return "\n".join(lines)


def _mse_axes(ax: Any, xlabel: str, title: str) -> None:
    """A held-out MSE panel: the two baselines, log scale, labels."""
    ax.axhline(BASELINE, color="gray", lw=1, ls=":")
    ax.axhline(HALF, color="gray", lw=1, ls="-.")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out MSE")
    ax.set_title(title)


def write_report(path: Path, results: dict[str, list[dict[str, Any]]], cfg: DemoConfig) -> None:
    """The four-panel PNG report (needs matplotlib)."""
    plt = diagnostics.pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0, 0]
    for r in results["full_bptt"]:
        c = np.array(r["curve"], dtype=float)
        ax.plot(c[:, 0], c[:, 1], ("--" if r["cell"] == "rnn" else "-"),
                label=f"{r['cell'].upper()} T={r['T']} s{r['seed']}")
    _mse_axes(ax, "iteration", "1-2. adding problem, full BPTT (dotted: 0.167 baseline)")
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
    _mse_axes(ax, "updates (episodes)",
              f"3. LSTM ({cfg.tbptt_init} init), truncated BPTT, T={cfg.tbptt_len}, "
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
