"""bptt.dask on a LocalCluster: training and inference samples per second with 1 and 2
worker processes (1 thread each) against the same work in one process, the per-step
overhead of the distributed step, and the bytes it moves.

Usage: python benches/dask_scaling.py [--steps 20] [--shape medium] [--sequences 256]
                                      [--json out.json]

Training: an LSTM (float32, the ``shapes.py`` shape: T steps, minibatch B, input I,
hidden H) with a ``Linear(H, 8)`` readout and ``mse_loss``, Adam. The training set (N
sequences) is scattered once; each step takes a minibatch of B sequences drawn at random.
"one process" runs the same step (gather the rows, forward, loss, full BPTT, Adam) in this
process with bptt on 1 or 2 threads; "DataParallel" runs it on the cluster (parameters out,
per-shard gradient sums, tree reduction, Adam on the client). The overhead is the
distributed step's median time minus the one-process step's with as many threads in all.

Inference: the N sequences as a dask array chunked by B along the batch axis, persisted
on the workers; ``bptt.dask.predict`` then ``persist`` (outputs stay on the workers),
against ``model(x)`` over all N in one process.

Bytes per step: what ``DataParallel.last_step`` counts (parameters to one worker and on
to the others, gradient sums between workers and back to the client), and, as a check,
the bytes the loopback interface carried per step (all processes on this machine, so it
includes the scheduler's own messages and anything else running).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable

import bptt
import bptt.dask as bd
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster, wait
from shapes import SHAPES


def paired_s(fns: dict[str, Callable[[], object]], rounds: int, per_block: int = 2
             ) -> dict[str, float]:
    """Median seconds of each function over ``rounds`` timed calls, run in alternating
    blocks of ``per_block`` (each block after one untimed call): the machine is shared and
    its speed drifts, and alternating makes every contender see the same drift."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    while min(len(v) for v in times.values()) < rounds:
        for name, fn in fns.items():
            fn()
            for _ in range(per_block):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def loopback_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    counters = psutil.net_io_counters(pernic=True).get("lo")
    return None if counters is None else int(counters.bytes_sent)


def make_task(shape: str, n: int, seed: int = 0):
    t, _, i, _ = SHAPES[shape]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, n, i)).astype(np.float32)
    y = rng.standard_normal((t, n, 8)).astype(np.float32)
    return x, y


def fresh(shape: str):
    _, _, i, h = SHAPES[shape]
    model = bptt.LSTM(i, h, dtype=np.float32, seed=0)
    readout = bptt.Linear(h, 8, dtype=np.float32, seed=1)
    opt = bptt.optim.Adam(bptt.tbptt.parameters(model, readout), lr=1e-3)
    return model, readout, opt


def local_step(model, readout, opt, x, y, rows):
    xb, yb = x[:, rows], y[:, rows]
    out, _, tape = model.forward(xb)
    pred, cache = readout.forward(out)
    loss, d_pred = bptt.mse_loss(pred, yb)
    d_out, g_ro = readout.backward(cache, d_pred)
    grads = {f"readout.{k}": v for k, v in g_ro.items()}
    grads.update({f"rnn.{k}": v for k, v in model.backward(tape, d_out).params.items()})
    opt.step(grads)
    return loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--shape", default="medium")
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="Sending large graph")
    t, b, i, h = SHAPES[args.shape]
    n = args.sequences
    x, y = make_task(args.shape, n)
    rng = np.random.default_rng(1)
    batches = [rng.choice(n, size=b, replace=False) for _ in range(4 * args.steps + 16)]
    load_before = os.getloadavg()

    with contextlib.ExitStack() as stack:
        train: dict[str, Callable[[], object]] = {}
        infer: dict[str, Callable[[], object]] = {}
        for threads in (1, 2):
            model, readout, opt = fresh(args.shape)
            it = iter(batches)

            def one(model=model, readout=readout, opt=opt, it=it, threads=threads):
                bptt.set_num_threads(threads)
                return local_step(model, readout, opt, x, y, next(it))

            def whole(model=model, threads=threads):
                bptt.set_num_threads(threads)
                return model(x)

            train[f"local{threads}"] = one
            infer[f"local{threads}"] = whole

        clients = {}
        trainers = {}
        for workers in (1, 2):
            cluster = stack.enter_context(LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                dashboard_address=None))
            client = stack.enter_context(Client(cluster))
            client.wait_for_workers(workers)
            clients[workers] = client
            model, readout, opt = fresh(args.shape)
            dp = bd.DataParallel(client, model, readout, bptt.mse_loss, opt)
            dp.scatter(x, y)
            trainers[workers] = dp
            it = iter(batches)
            train[f"dask{workers}"] = lambda dp=dp, it=it: dp.step(next(it))
            xd = client.persist(da.from_array(x, chunks=(t, b, i)))
            wait(xd)

            def predict(xd=xd, model=model):
                out = bd.predict(model, xd)[0].persist()
                wait(out)

            infer[f"dask{workers}"] = predict

        step = paired_s(train, args.steps)
        lo = {}
        for workers, dp in trainers.items():
            lo0 = loopback_bytes()
            calls = 5
            for _ in range(calls):
                train[f"dask{workers}"]()
            lo1 = loopback_bytes()
            lo[workers] = None if lo0 is None or lo1 is None else (lo1 - lo0) / calls
        inf = paired_s(infer, max(3, args.steps // 3))
        infos = {w: dp.last_step for w, dp in trainers.items()}
    load_after = os.getloadavg()

    params = sum(v.nbytes for v in bptt.tbptt.parameters(*fresh(args.shape)[:2]).values())
    rows_out = []
    for name in ("local1", "local2", "dask1", "dask2"):
        workers = int(name[-1]) if name.startswith("dask") else 0
        threads = int(name[-1]) if workers == 0 else 1
        info = infos.get(workers)
        rows_out.append({
            "run": "one process" if workers == 0 else "DataParallel / predict",
            "workers": workers, "threads": threads, "train_step_s": step[name],
            "train_samples_s": b / step[name], "infer_samples_s": n / inf[name],
            "overhead_ms": None if workers == 0 else (step[name] - step[f"local{workers}"]) * 1e3,
            "bytes_per_step": None if info is None else info.total_bytes,
            "bytes_from_client": None if info is None else info.bytes_from_client,
            "bytes_between_workers": None if info is None else info.bytes_between_workers,
            "bytes_to_client": None if info is None else info.bytes_to_client,
            "lo_bytes_per_step": lo.get(workers)})
    print(f"LSTM {args.shape} (T={t}, B={b}, I={i}, H={h}, float32) + Linear({h}, 8), Adam; "
          f"{n} sequences; parameters {params / 1e6:.2f} MB; medians of {args.steps} training "
          f"steps and {max(3, args.steps // 3)} inference passes, all contenders alternating; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print()
    print("| run | processes × threads | train step (ms) | train samples/s | overhead vs one "
          "process, same cores (ms/step) | bytes/step (counted) | loopback bytes/step | "
          "inference samples/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows_out:
        procs = f"1 × {r['threads']}" if r["workers"] == 0 else f"{r['workers']} × 1"
        over = "—" if r["overhead_ms"] is None else f"{r['overhead_ms']:+.1f}"
        nbytes = "—" if r["bytes_per_step"] is None else f"{r['bytes_per_step'] / 1e6:.2f} MB"
        lob = ("—" if r["lo_bytes_per_step"] is None
               else f"{r['lo_bytes_per_step'] / 1e6:.2f} MB")
        print(f"| {r['run']} | {procs} | {r['train_step_s'] * 1e3:.1f} | "
              f"{r['train_samples_s']:.1f} | {over} | {nbytes} | {lob} | "
              f"{r['infer_samples_s']:.1f} |")
    for w, info in infos.items():
        print(f"\n{w} worker(s), last step: {info}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": args.shape, "sequences": n, "steps": args.steps,
                       "param_bytes": params, "load": [load_before, load_after],
                       "rows": rows_out}, f, indent=1)


if __name__ == "__main__":
    main()
