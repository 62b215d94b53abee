"""The demo's configuration: every knob (``DemoConfig``), the named presets, and the
adding problem's baselines."""

from __future__ import annotations

import dataclasses

from bptt import data

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

    def windows(self) -> list[int]:
        """Experiment 3's windows: ``tbptt_windows`` plus the full window ``T``."""
        return sorted({*self.tbptt_windows, self.tbptt_len})



def placement_words(placement: str, T: int) -> str:
    """Where experiment 3's markers lie, in words (for the table and the verdict)."""
    half = T // 2
    if placement == "hochreiter":
        return (f"Hochreiter & Schmidhuber 1997: one marker in steps 0..{min(10, half) - 1}, "
                f"the other elsewhere in 0..{half - 1}")
    return f"Arjovsky et al. 2016: one marker in 0..{half - 1}, one in {half}..{T - 1}"
