"""Times the loop around the recurrent core against PyTorch, in one run: cross-entropy over
4.8M logits, and a character model's training step and validation pass.

Usage::

    python benches/readout_vs_torch.py [--rounds 7] [--threads 1,2] [--block-s 0.3] \\
        [--min-calls 1]

Cases (float32):
- ``cross_entropy``: loss and gradient over logits (46 600, 103) = 4.8M values: bptt's
  ``cross_entropy_loss`` (the Rust core), the former NumPy implementation
  (``tests/numpy_readout.py``), and torch (``F.cross_entropy`` forward and backward).
- ``char/train``: one training step of Embedding(103, 32) → LSTM(32, 256) → Linear(256,
  103) on a chunk of T=100, B=32 tokens: forward, cross-entropy over all steps, backward,
  clipping (norm 1) and an Adam step. bptt: ``model.loss`` + ``clip_grad_norm`` +
  ``opt.step``; torch: the usual loop.
- ``char/lstm``: the recurrent part of ``char/train`` alone: LSTM(32, 256) forward with
  its tape and backward (incl. the input gradient) on an embedded chunk (T=100, B=32,
  float32), the same weights in both libraries; separates the recurrent core's time from
  the readout's and the loop's.
- ``char/valid``: a validation pass over T=1456, B=32 tokens (4.8M logits): forward and
  the mean cross-entropy, no gradient kept by torch (``no_grad``); bptt computes the loss
  with ``cross_entropy_loss``, which also writes the gradient.

For each thread count (``bptt.set_num_threads`` and ``torch.set_num_threads``) and case,
``--rounds`` rounds alternate the implementations (the order flips every round); a block
is one untimed call, then timed calls for about ``--block-s`` (at least ``--min-calls``),
of which the median is kept, then a rest of ``--rest-s``. The
table gives the median over rounds of each implementation's block medians (ms) and the
median of the per-round ratios bptt/other (below 1: bptt faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import bptt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import numpy_readout

V, E, H = 103, 32, 256


def block(fn: Callable[[], object], block_s: float, min_calls: int, rest_s: float) -> float:
    """Median seconds of ``fn`` over a block of about ``block_s`` (after one untimed call),
    then a rest of ``rest_s``, so that this library's spinning threads have parked before
    the other library's block starts (bptt reads the machine's idle CPUs when a call
    starts, and would count them as another program's)."""
    fn()
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > block_s and len(times) >= min_calls:
            break
    time.sleep(rest_s)
    return statistics.median(times)


def cases(torch: object) -> dict[str, dict[str, Callable[[], object]]]:
    import torch as th
    F = th.nn.functional
    rng = np.random.default_rng(0)
    z = rng.standard_normal((46_600, V)).astype(np.float32)
    lab = rng.integers(0, V, 46_600)
    tz = th.tensor(z, requires_grad=True)
    tl = th.tensor(lab)

    def torch_ce() -> object:
        tz.grad = None
        loss = F.cross_entropy(tz, tl)
        loss.backward()
        return loss.item()

    model = bptt.Sequential(embed=bptt.Embedding(V, E, seed=0), rnn=bptt.LSTM(E, H, seed=0),
                            fc=bptt.Linear(H, V, seed=0))
    opt = bptt.optim.Adam(model.parameters(), lr=1e-3)

    class CharLM(th.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = th.nn.Embedding(V, E)
            self.rnn = th.nn.LSTM(E, H)
            self.fc = th.nn.Linear(H, V)

        def forward(self, x: object) -> object:
            return self.fc(self.rnn(self.embed(x))[0])

    tm = CharLM()
    tm.load_state_dict({k: th.tensor(v) for k, v in model.state_dict().items()})
    topt = th.optim.Adam(tm.parameters(), lr=1e-3)
    x = rng.integers(0, V, (100, 32))
    y = rng.integers(0, V, (100, 32))
    tx, ty = th.tensor(x), th.tensor(y)

    def bptt_train() -> object:
        loss, grads = model.loss(x, y, bptt.cross_entropy_loss)
        bptt.clip_grad_norm(grads, 1.0)
        opt.step(grads)
        return loss

    def torch_train() -> object:
        topt.zero_grad()
        loss = F.cross_entropy(tm(tx).flatten(0, 1), ty.flatten())
        loss.backward()
        th.nn.utils.clip_grad_norm_(tm.parameters(), 1.0)
        topt.step()
        return loss.item()

    lstm = bptt.LSTM(E, H, seed=1)
    t_lstm = th.nn.LSTM(E, H)
    t_lstm.load_state_dict({k: th.tensor(v) for k, v in lstm.state_dict().items()})
    e = rng.standard_normal((100, 32, E)).astype(np.float32)
    d_e = np.ones((100, 32, H), dtype=np.float32)
    te, td_e = th.tensor(e, requires_grad=True), th.tensor(d_e)

    def bptt_lstm() -> object:
        _, _, tape = lstm.forward(e)
        return lstm.backward(tape, d_e)

    def torch_lstm() -> object:
        te.grad = None
        t_lstm.zero_grad()
        t_lstm(te)[0].backward(td_e)
        return te.grad

    vx = rng.integers(0, V, (1456, 32))
    vy = rng.integers(0, V, (1456, 32))
    tvx, tvy = th.tensor(vx), th.tensor(vy)

    def bptt_valid() -> object:
        out, _ = model(vx)
        return bptt.cross_entropy_loss(out, vy)[0]

    def torch_valid() -> object:
        with th.no_grad():
            return F.cross_entropy(tm(tvx).flatten(0, 1), tvy.flatten()).item()

    return {
        "cross_entropy": {"bptt": lambda: bptt.cross_entropy_loss(z, lab),
                          "torch": torch_ce,
                          "numpy": lambda: numpy_readout.cross_entropy_loss(z, lab)},
        "char/train": {"bptt": bptt_train, "torch": torch_train},
        "char/lstm": {"bptt": bptt_lstm, "torch": torch_lstm},
        "char/valid": {"bptt": bptt_valid, "torch": torch_valid},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--block-s", type=float, default=0.3)
    ap.add_argument("--min-calls", type=int, default=1)
    ap.add_argument("--rest-s", type=float, default=0.1, help="rest after each block")
    args = ap.parse_args()
    import torch
    print(f"# bptt {bptt.build_info()}", file=sys.stderr)
    print(f"# torch {torch.__version__}", file=sys.stderr)
    table = cases(torch)
    print("| case | threads | bptt ms | torch ms | bptt/torch | numpy ms | bptt/numpy |")
    print("|---|---|---|---|---|---|---|")
    for n in (int(t) for t in args.threads.split(",")):
        bptt.set_num_threads(n)
        torch.set_num_threads(n)
        for name, impls in table.items():
            per: dict[str, list[float]] = {k: [] for k in impls}
            ratios: dict[str, list[float]] = {k: [] for k in impls if k != "bptt"}
            order = list(impls)
            for r in range(args.rounds):
                got = {k: block(impls[k], args.block_s, args.min_calls, args.rest_s)
                       for k in (order if r % 2 == 0 else order[::-1])}
                for k, v in got.items():
                    per[k].append(v)
                for k, rs in ratios.items():
                    rs.append(got["bptt"] / got[k])
                print(f"{name} t{n} round {r}: " + ", ".join(
                    f"{k} {1e3 * v:.2f} ms" for k, v in got.items()), file=sys.stderr)
            med = {k: 1e3 * statistics.median(v) for k, v in per.items()}
            rt = {k: statistics.median(v) for k, v in ratios.items()}
            numpy_cols = (f"{med['numpy']:.2f} | {rt['numpy']:.2f}" if "numpy" in med
                          else "- | -")
            print(f"| {name} | {n} | {med['bptt']:.2f} | {med['torch']:.2f} | "
                  f"{rt['torch']:.2f} | {numpy_cols} |", flush=True)


if __name__ == "__main__":
    main()
