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

The package, along its seams: ``config`` (``DemoConfig``, presets, baselines),
``progress`` (the progress bar), ``experiments`` (the training runs), ``verdicts`` (the
claims judged from the numbers), ``report`` (table and figure), ``run`` (``run_demo``:
everything, files written) and ``cli`` (the command line, ``main``). It uses only bptt's
public API, as any user's code would.
"""

from __future__ import annotations

# ``bptt.demo.diagnostics`` as in the single-module demo: where its figure and its
# matplotlib check come from.
from bptt import diagnostics as diagnostics

from .cli import build_parser, config_from_args, main, run_from_args
from .config import BASELINE, HALF, DemoConfig, placement_words
from .experiments import run_clipping, run_full_bptt, run_tbptt
from .progress import Progress
from .report import format_table, write_report
from .run import run_demo
from .verdicts import truncation_verdict, verdicts

__all__ = [
    "BASELINE",
    "HALF",
    "DemoConfig",
    "Progress",
    "build_parser",
    "config_from_args",
    "format_table",
    "main",
    "placement_words",
    "run_clipping",
    "run_demo",
    "run_from_args",
    "run_full_bptt",
    "run_tbptt",
    "truncation_verdict",
    "verdicts",
    "write_report",
]
