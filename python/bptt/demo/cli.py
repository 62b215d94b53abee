"""The demo's command line: ``python -m bptt demo [--quick | --full] [--out DIR] ...``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bptt import data

from .config import DemoConfig
from .run import run_demo


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


def run_from_args(args: argparse.Namespace) -> int:
    """Runs the demo as parsed command-line arguments (``build_parser``) ask; returns the
    exit status."""
    cfg = config_from_args(args)
    run_demo(cfg, args.out, plot=not args.no_plot, quiet=args.quiet)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bptt demo``: ``argv`` are the arguments after ``demo``."""
    return run_from_args(build_parser().parse_args(argv))
