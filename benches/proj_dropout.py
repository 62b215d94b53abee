"""Times an LSTM with projections against the plain LSTM of the same hidden_size and
against torch's ``nn.LSTM(..., proj_size=P)``; dropout between layers against none; a
stacked model under a tight memory budget against its full tape.

Usage::

    python benches/proj_dropout.py [--rounds 9] [--threads 2] [--block-s 0.3]

Every comparison alternates short blocks of its variants in each round (each block: one
untimed call, then ``calls`` timed calls, median kept), so that all variants see the same
drift of a shared machine; per round the ratio of block medians, per comparison the
median of the ratios over the rounds (and their range). Training = ``forward`` +
``backward``; inference = ``m(x)``. Output: a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import bptt
import numpy as np


def block(fn: Callable[[], object], calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compare(name: str, variants: dict[str, Callable[[], object]], rounds: int,
            block_s: float) -> list[str]:
    """Rows ``name | variant | median time | ratio to the first variant (range)``."""
    first = next(iter(variants.values()))
    t0 = time.perf_counter()
    first()
    once = max(time.perf_counter() - t0, 1e-6)
    calls = max(3, int(block_s / once))
    per = {k: [] for k in variants}
    for _ in range(rounds):
        for k, fn in variants.items():
            per[k].append(block(fn, calls))
    base = per[next(iter(variants))]
    rows = []
    for k, ts in per.items():
        ratios = [t / b for t, b in zip(ts, base, strict=True)]
        rows.append(f"| {name} | {k} | {statistics.median(ts) * 1e3:.2f} ms | "
                    f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")
    return rows


def train_fn(m: bptt.LSTM, x: np.ndarray, **kw: object) -> Callable[[], object]:
    def run() -> object:
        out, _, tape = m.forward(x, **kw)
        return m.backward(tape, np.ones_like(out))
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block-s", type=float, default=0.3)
    args = ap.parse_args()
    bptt.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = ["| comparison | variant | median | ratio to first (range) |", "|---|---|---|---|"]

    import torch

    torch.set_num_threads(args.threads)
    T, B, IN, H, P = 100, 32, 64, 256, 64
    x = rng.standard_normal((T, B, IN)).astype(np.float32)
    proj = bptt.LSTM(IN, H, proj_size=P, seed=0)
    plain = bptt.LSTM(IN, H, seed=0)
    tm = torch.nn.LSTM(IN, H, proj_size=P)
    proj.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    tx = torch.from_numpy(x)

    def torch_train() -> object:
        xt = tx.clone().requires_grad_()
        out, _ = tm(xt)
        out.backward(torch.ones_like(out))
        return xt.grad

    def torch_infer() -> object:
        with torch.no_grad():
            return tm(tx)

    case = f"T={T} B={B} I={IN} H={H} P={P} f32"
    rows += compare(f"train {case}", {
        "bptt proj": train_fn(proj, x), "bptt plain H": train_fn(plain, x),
        "torch proj": torch_train}, args.rounds, args.block_s)
    rows += compare(f"infer {case}", {
        "bptt proj": lambda: proj(x), "bptt plain H": lambda: plain(x),
        "torch proj": torch_infer}, args.rounds, args.block_s)

    L3 = bptt.LSTM(IN, 128, 3, seed=0, dropout=0.2)
    rows += compare("train 3-layer LSTM T=100 B=32 I=64 H=128 f32", {
        "dropout 0.2": train_fn(L3, x), "train=False (no dropout)": train_fn(L3, x, train=False)},
        args.rounds, args.block_s)

    T2, B2, I2, H2 = 1000, 4, 8, 32
    x2 = rng.standard_normal((T2, B2, I2))
    two = bptt.LSTM(I2, H2, 2, bidirectional=True, dtype=np.float64, seed=0)
    full = two.forward(x2)[2].nbytes
    tape16 = two.forward(x2, memory_budget=full // 16)[2]
    rows += compare(f"train 2-layer bi LSTM T={T2} B={B2} I={I2} H={H2} f64", {
        "full tape": train_fn(two, x2),
        f"1/16 budget (segment {tape16.segment})": train_fn(two, x2, memory_budget=full // 16)},
        args.rounds, args.block_s)
    print("\n".join(rows))
    print(f"\nthreads={args.threads}, rounds={args.rounds}, {bptt.build_info()}")


if __name__ == "__main__":
    main()
