"""Thread scaling of bptt against PyTorch on one machine, for the README's scaling table.

Usage: python benches/scaling.py [--threads 1,2,4,8,16] [--shapes small,medium,large]
                                 [--json out.json]

For every thread count, cell, shape and mode (inference forward; forward + full backward)
it times bptt and, when importable, ``torch.nn.{RNN,LSTM,GRU}`` (same float32 weights and
input) in alternating blocks of a few calls (the machine's speed drifts; alternating
keeps the ratio fair), and reports medians, the ratio torch/bptt (> 1: bptt faster), the
speed-up over bptt's own 1-thread time, and the float32 GEMM rate (torch matmul of
2048²) at that thread count as the machine's peak. Shapes and the FLOP model
are those of ``shapes.py``.
"""

from __future__ import annotations

import argparse
import json
import time

import bptt
import numpy as np
from shapes import SHAPES, flops


def median_ms(fn, rounds: int) -> float:
    return paired_ms([fn], rounds)[0]


def paired_ms(fns, rounds: int, per_block: int = 3, rest_s: float = 0.0,
              before=None) -> list[float]:
    """Median milliseconds of each function over `rounds` timed calls, run in alternating
    blocks of `per_block` (each after one untimed call): a machine whose speed drifts
    slows all of them alike, and each library's threads are awake when its block starts
    rather than still spinning in the other library's code. `rest_s`: a pause after each
    block (the previous library's spinning threads go to sleep before the next block
    starts). `before`: one callable per function, called at the start of each of its
    blocks, before the untimed call (e.g. setting the thread count)."""
    times = [[] for _ in fns]
    while len(times[0]) < rounds:
        for k, (fn, ts) in enumerate(zip(fns, times)):
            if before is not None:
                before[k]()
            fn()
            for _ in range(min(per_block, rounds - len(ts))):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            if rest_s:
                time.sleep(rest_s)
    return [float(np.median(ts) * 1e3) for ts in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2,4,8,16")
    ap.add_argument("--shapes", default="small,medium,large")
    ap.add_argument("--cells", default="LSTM,GRU,RNN")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    threads = [int(v) for v in args.threads.split(",")]
    rows = []
    own_1t: dict[tuple[str, str, str], float] = {}
    for n in threads:
        bptt.set_num_threads(n)
        peak = None
        if torch is not None:
            torch.set_num_threads(n)
            a = torch.rand(2048, 2048)
            peak = 2 * 2048**3 / median_ms(lambda a=a: a @ a, 5) / 1e6
            print(f"threads {n}: float32 GEMM {peak:.0f} GFLOP/s", flush=True)
        for shape_name in args.shapes.split(","):
            shape = SHAPES[shape_name]
            t, b, i, h = shape
            rounds = {"large": 4, "medium": 9, "long": 9}.get(shape_name, 15)
            x = np.random.default_rng(0).standard_normal((t, b, i)).astype(np.float32)
            for cell in args.cells.split(","):
                model = getattr(bptt, cell)(i, h, dtype=np.float32, seed=0)
                peer = None
                if torch is not None:
                    peer = getattr(torch.nn, cell)(i, h)
                    with torch.no_grad():
                        for k, v in model.state_dict().items():
                            getattr(peer, k).copy_(torch.from_numpy(v))
                    xt = torch.from_numpy(x)
                    xg = xt.clone().requires_grad_(True)

                def ours_inf(model=model, x=x):
                    model.forward(x)

                def ours_train(model=model, x=x):
                    out, _, tape = model.forward(x)
                    model.backward(tape, np.ones_like(out))

                def peer_inf(peer=peer, xt=xt if peer else None):
                    with torch.no_grad():
                        peer(xt)

                def peer_train(peer=peer, xg=xg if peer else None):
                    out, _ = peer(xg)
                    out.backward(torch.ones_like(out))

                for mode, ours, theirs in (("inference", ours_inf, peer_inf),
                                           ("train", ours_train, peer_train)):
                    if peer is not None:
                        ms, peer_ms = paired_ms([ours, theirs], rounds)
                    else:
                        ms, peer_ms = median_ms(ours, rounds), None
                    key = (cell, shape_name, mode)
                    own_1t.setdefault(key, ms)
                    gflops = flops(cell, shape_name, mode) / ms / 1e6
                    row = {
                        "threads": n, "cell": cell, "shape": shape_name, "mode": mode,
                        "bptt_ms": ms, "torch_ms": peer_ms,
                        "ratio": peer_ms / ms if peer_ms else None,
                        "speedup_vs_first": own_1t[key] / ms,
                        "gflops": gflops,
                        "peak_fraction": gflops / peak if peak else None,
                    }
                    rows.append(row)
                    ratio = f"{row['ratio']:.2f}x" if row["ratio"] else "-"
                    print(f"  {cell:4s} {shape_name:6s} {mode:9s} bptt {ms:9.2f} ms"
                          f"  torch {peer_ms or float('nan'):9.2f} ms  ratio {ratio:>6s}"
                          f"  scaling {row['speedup_vs_first']:.2f}x"
                          f"  {gflops:6.0f} GFLOP/s", flush=True)
                    if args.json:
                        with open(args.json, "w") as f:
                            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
