"""``run_demo``: the four experiments end to end, with the files they write."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

import bptt
from bptt import diagnostics

from .config import BASELINE, HALF, DemoConfig, placement_words
from .experiments import run_clipping, run_full_bptt, run_tbptt
from .progress import Progress
from .report import format_table, write_report
from .verdicts import verdicts


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
             + cfg.seeds * len(cfg.windows()) * cfg.tbptt_episodes * cfg.tbptt_len
             + 2 * cfg.clip_seeds * cfg.clip_iters * cfg.clip_len)
    bar = Progress(units, quiet=quiet)
    results: dict[str, list[dict[str, Any]]] = {"full_bptt": [], "tbptt": [], "clipping": []}
    for cell in ("rnn", "lstm"):
        for T in cfg.lengths:
            for s in seeds:
                results["full_bptt"].append(run_full_bptt(cell, T, s, cfg, bar))
    for k in cfg.windows():
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
        "environment": {"bptt": bptt.__version__, "numpy": np.__version__,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "cpus": os.cpu_count()},
        "wall_time_s": elapsed,
        "baselines": {"mean_prediction_mse": BASELINE, "second_value_only_mse": HALF,
                      "experiment_3_placement": cfg.tbptt_placement,
                      "experiment_3_markers": placement_words(cfg.tbptt_placement,
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
