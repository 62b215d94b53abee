"""bptt against its peers (PyTorch, ONNX Runtime) at 1 and 2 threads, and bptt's own
thread scaling while another process keeps a core busy: the measurements of the LSTM speed
issue, as markdown tables.

Usage::

    python benches/peers.py [--runs 7] [--large-runs 3] [--shapes tiny,small,medium,large,long]
                            [--threads 1,2] [--cells LSTM,GRU,RNN] [--busy-shapes ...]
                            [--block-s 0.25] [--rest-s 0.1] [--dtype float32]
                            [--json out.json] > out.md

Needs a release build of bptt (``maturin build --release``; a dev-profile build is several
times slower) and, optionally, ``torch`` and ``onnxruntime`` + ``onnx`` (each peer that is
not importable is skipped with a note). Run it on an otherwise idle machine.

What it measures (float32 unless ``--dtype float64``, one layer, shapes and FLOP model of
``shapes.py``; ONNX Runtime and the busy-core case run float32 only, and are skipped with
``--dtype float64``):

- Peers: for every thread count, shape, cell and mode (inference ``m(x)``; training
  ``m.forward`` + full ``m.backward``), bptt and ``torch.nn.{LSTM,GRU,RNN}`` with the same
  weights, and for LSTM inference also ONNX Runtime running one ONNX ``LSTM`` node with the
  same weights (``intra_op_num_threads`` = the thread count; torch pinned with
  ``torch.set_num_threads``). Each peer's outputs are checked against bptt's (float32
  tolerance) before it is timed. Timing: ``scaling.paired_ms``: ``--runs`` rounds (large:
  ``--large-runs``), each round one block per library (an untimed call, then as many timed
  calls as fill about ``--block-s``, at least 2) followed by a rest of ``--rest-s``; the
  median of all timed calls. Ratios are peer/bptt (> 1: bptt faster).
- GEMM peak: float32 2048³ products through ``torch.mm`` (at the thread count) and NumPy
  (in a subprocess with ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set
  to the thread count); the higher is the peak, and large LSTM training's GFLOP/s is given
  as a percentage of it.
- Busy core (``--busy-shapes``, empty to skip): bptt LSTM at 2 threads against bptt at 1
  thread (alternating blocks, ``bptt.set_num_threads`` at each block's start), first on the
  idle machine, then while a pure-Python ``while True: pass`` subprocess (started before,
  killed after) keeps one core busy. The issue's goals: 2-thread/1-thread ≤ 1.0 idle and
  ≤ 1.15 busy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import bptt
import numpy as np
from scaling import median_ms, paired_ms
from shapes import SHAPES, flops

HERE = Path(__file__).resolve().parent
MODES = ("inference", "train")
GEMM_N = 2048


# ------------------------------------------------------------------------------ peers
def import_optional(name: str):
    try:
        return __import__(name)
    except ImportError:
        return None


def torch_model(torch, cell: str, model):
    """``torch.nn.<cell>`` with the weights of the bptt model."""
    peer = getattr(torch.nn, cell)(model.input_size, model.hidden_size)
    if model.dtype == np.float64:
        peer = peer.double()
    with torch.no_grad():
        for k, v in model.state_dict().items():
            getattr(peer, k).copy_(torch.from_numpy(v))
    return peer


def onnx_lstm_session(onnx, ort, model, x_shape, threads: int):
    """An ONNX Runtime session running one ONNX ``LSTM`` node with the bptt model's weights.

    ONNX gate order is i, o, f, c (PyTorch's and bptt's: i, f, g, o); W is
    (directions, 4H, I), R (directions, 4H, H), B (directions, 8H) = [Wb; Rb]."""
    from onnx import TensorProto, helper, numpy_helper

    h = model.hidden_size
    sd = model.state_dict()
    order = [0, 3, 1, 2]  # i, o, f, c from i, f, g, o

    def reorder(a):
        return np.ascontiguousarray(a.reshape(4, h, *a.shape[1:])[order].reshape(a.shape))

    w = reorder(sd["weight_ih_l0"])[None]
    r = reorder(sd["weight_hh_l0"])[None]
    b = np.concatenate([reorder(sd["bias_ih_l0"]), reorder(sd["bias_hh_l0"])])[None]
    t, batch, i = x_shape
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y", "Y_h", "Y_c"], hidden_size=h)
    graph = helper.make_graph(
        [node], "lstm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [t, batch, i])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [t, 1, batch, h]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, batch, h]),
         helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, [1, batch, h])],
        initializer=[numpy_helper.from_array(w.astype(np.float32), "W"),
                     numpy_helper.from_array(r.astype(np.float32), "R"),
                     numpy_helper.from_array(b.astype(np.float32), "B")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def check_close(name: str, got, want) -> float:
    """Raises unless `got` equals `want` within float32 tolerance; returns the max |diff|."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4, err_msg=name)
    return float(np.max(np.abs(got - want)))


# ------------------------------------------------------------------------------ timing
def per_block_for(fns, block_s: float, min_calls: int = 2) -> int:
    """Timed calls per block so that the slowest library's block takes about `block_s`."""
    slowest = 0.0
    for fn in fns:
        fn()  # first call: page faults, thread start-up
        t = time.perf_counter()
        fn()
        slowest = max(slowest, time.perf_counter() - t)
    return max(min_calls, min(200, math.ceil(block_s / max(slowest, 1e-6))))


def timed(fns, args, shape: str, before=None) -> list[float]:
    per_block = per_block_for(fns, args.block_s)
    runs = args.large_runs if shape == "large" else args.runs
    return paired_ms(fns, runs * per_block, per_block, rest_s=args.rest_s, before=before)


def gemm_peak(torch, threads: int) -> dict:
    """float32 2048³ GFLOP/s through torch.mm and NumPy at `threads` threads."""
    out = {"torch": None, "numpy": None}
    work = 2 * GEMM_N**3
    if torch is not None:
        a = torch.rand(GEMM_N, GEMM_N)
        b = torch.rand(GEMM_N, GEMM_N)
        out["torch"] = work / median_ms(lambda: torch.mm(a, b), 7) / 1e6
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    res = subprocess.run([sys.executable, __file__, "--numpy-gemm"], env=env,
                         capture_output=True, text=True, check=True)
    out["numpy"] = float(res.stdout.strip())
    return out


def numpy_gemm() -> None:
    """The subprocess side of :func:`gemm_peak`: prints NumPy's 2048³ GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.random((GEMM_N, GEMM_N), dtype=np.float32)
    b = rng.random((GEMM_N, GEMM_N), dtype=np.float32)
    print(2 * GEMM_N**3 / median_ms(lambda: a @ b, 7) / 1e6)


# ------------------------------------------------------------------------------ cases
def inputs(shape: str, dtype=np.float32):
    t, b, i, h = SHAPES[shape]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((t, b, i)).astype(dtype)
    return x, np.ones((t, b, h), dtype)


def peer_cases(args, torch, onnx, ort, threads: int, log) -> list[dict]:
    rows = []
    for shape in args.shapes:
        x, d_out = inputs(shape, args.dtype)
        _, _, i, h = SHAPES[shape]
        for cell in args.cells:
            model = getattr(bptt, cell)(i, h, dtype=args.dtype, seed=0)
            out_ref, state_ref = model(x)
            peer = torch_model(torch, cell, model) if torch is not None else None
            if peer is not None:
                xt = torch.from_numpy(x)
                xg = xt.clone().requires_grad_(True)
                dt = torch.from_numpy(d_out)
                with torch.no_grad():
                    check_close(f"torch {cell} {shape}", peer(xt)[0].numpy(), out_ref)
            sess = None
            if cell == "LSTM" and ort is not None and args.dtype == np.float32:
                sess = onnx_lstm_session(onnx, ort, model, x.shape, threads)
                y, y_h, y_c = sess.run(None, {"X": x})
                ort_diff = max(check_close(f"ort {shape} Y", y[:, 0], out_ref),
                               check_close(f"ort {shape} Y_h", y_h, state_ref[0]),
                               check_close(f"ort {shape} Y_c", y_c, state_ref[1]))
                log(f"  ONNX Runtime LSTM {shape}: outputs match bptt (max |diff| "
                    f"{ort_diff:.1e})")

            def ours_inf(model=model, x=x):
                model(x)

            def ours_train(model=model, x=x, d_out=d_out):
                _, _, tape = model.forward(x)
                model.backward(tape, d_out)

            def torch_inf(peer=peer, xt=xt if peer else None):
                with torch.no_grad():
                    peer(xt)

            def torch_train(peer=peer, xg=xg if peer else None, dt=dt if peer else None):
                out, _ = peer(xg)
                out.backward(dt)

            def ort_inf(sess=sess, x=x):
                sess.run(None, {"X": x})

            for mode in MODES:
                fns, names = [ours_inf if mode == "inference" else ours_train], ["bptt"]
                if peer is not None:
                    fns.append(torch_inf if mode == "inference" else torch_train)
                    names.append("torch")
                if sess is not None and mode == "inference":
                    fns.append(ort_inf)
                    names.append("ort")
                ms = dict(zip(names, timed(fns, args, shape)))
                row = {"threads": threads, "cell": cell, "shape": shape, "mode": mode,
                       "bptt_ms": ms["bptt"], "torch_ms": ms.get("torch"),
                       "ort_ms": ms.get("ort"),
                       "gflops": flops(cell, shape, mode) / ms["bptt"] / 1e6}
                row["torch_ratio"] = ms["torch"] / ms["bptt"] if "torch" in ms else None
                row["ort_ratio"] = ms["ort"] / ms["bptt"] if "ort" in ms else None
                rows.append(row)
                log(f"  {threads}t {cell:4s} {shape:6s} {mode:9s} "
                    + "  ".join(f"{k} {v:9.3f} ms" for k, v in ms.items()))
    return rows


def busy_cases(args, log) -> list[dict]:
    """bptt LSTM at 2 threads against 1 thread, idle and with one core kept busy."""
    rows = []
    before = [lambda: bptt.set_num_threads(1), lambda: bptt.set_num_threads(2)]
    for load in ("idle", "busy"):
        hog = None
        if load == "busy":
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
        try:
            for shape in args.busy_shapes:
                x, d_out = inputs(shape)
                _, _, i, h = SHAPES[shape]
                model = bptt.LSTM(i, h, dtype=np.float32, seed=0)

                def inf(model=model, x=x):
                    model(x)

                def train(model=model, x=x, d_out=d_out):
                    _, _, tape = model.forward(x)
                    model.backward(tape, d_out)

                for mode, fn in (("inference", inf), ("train", train)):
                    bptt.set_num_threads(2)
                    one, two = timed([fn, fn], args, shape, before=before)
                    rows.append({"load": load, "cell": "LSTM", "shape": shape, "mode": mode,
                                 "ms_1t": one, "ms_2t": two, "ratio_2t_1t": two / one})
                    log(f"  {load} LSTM {shape:6s} {mode:9s} 1t {one:9.3f} ms  "
                        f"2t {two:9.3f} ms  2t/1t {two / one:.2f}")
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    return rows


# ------------------------------------------------------------------------------ report
def fmt(v, spec=".3g", suffix=""):
    return "-" if v is None else f"{v:{spec}}{suffix}"


def ms_fmt(v):
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def report(meta, rows, peaks, busy) -> str:
    lines = [f"# bptt vs peers ({meta['date']})", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k != "date"]
    lines += ["", "## LSTM (ms; ratio peer/bptt, > 1: bptt faster)", "",
              "| shape | mode | thr | bptt ms | torch ms | ORT ms | torch/bptt | ORT/bptt |",
              "|---|---|---|---|---|---|---|---|"]
    order = {s: k for k, s in enumerate(SHAPES)}
    key = (lambda r: (order[r["shape"]], MODES.index(r["mode"]), r["threads"]))
    for r in sorted((r for r in rows if r["cell"] == "LSTM"), key=key):
        lines.append(f"| {r['shape']} | {r['mode']} | {r['threads']} | {ms_fmt(r['bptt_ms'])} "
                     f"| {ms_fmt(r['torch_ms'])} | {ms_fmt(r['ort_ms'])} "
                     f"| {fmt(r['torch_ratio'], '.2f', 'x')} | {fmt(r['ort_ratio'], '.2f', 'x')} |")
    others = [r for r in rows if r["cell"] != "LSTM"]
    if others:
        lines += ["", "## GRU and RNN against torch (torch/bptt, > 1: bptt faster)", "",
                  "| cell | shape | mode | thr | bptt ms | torch ms | torch/bptt |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(others, key=lambda r: (r["cell"], *key(r))):
            lines.append(f"| {r['cell']} | {r['shape']} | {r['mode']} | {r['threads']} "
                         f"| {ms_fmt(r['bptt_ms'])} | {ms_fmt(r['torch_ms'])} "
                         f"| {fmt(r['torch_ratio'], '.2f', 'x')} |")
    lines += ["", "## GEMM peak (float32 2048³) and large LSTM training", "",
              ("| thr | torch.mm GFLOP/s | NumPy GFLOP/s | peak | LSTM large train GFLOP/s "
               "| % of peak |"), "|---|---|---|---|---|---|"]
    for thr, p in sorted(peaks.items()):
        peak = max(v for v in p.values() if v is not None)
        lt = [r for r in rows if r["cell"] == "LSTM" and r["shape"] == "large"
              and r["mode"] == "train" and r["threads"] == thr]
        gf = lt[0]["gflops"] if lt else None
        pct = f"{100 * gf / peak:.0f}%" if gf else "-"
        lines.append(f"| {thr} | {fmt(p['torch'], '.0f')} | {fmt(p['numpy'], '.0f')} "
                     f"| {peak:.0f} | {fmt(gf, '.0f')} | {pct} |")
    if busy:
        lines += ["", "## bptt LSTM: 2 threads against 1 thread, idle and with one core busy",
                  "", ("(goals: 2t/1t ≤ 1.0 idle, ≤ 1.15 busy; busy = a `while True: pass` "
                       "Python process running throughout)"), "",
                  ("| shape | mode | idle 1t ms | idle 2t ms | idle 2t/1t | busy 1t ms "
                   "| busy 2t ms | busy 2t/1t |"), "|---|---|---|---|---|---|---|---|"]
        by = {(r["load"], r["shape"], r["mode"]): r for r in busy}
        for shape in SHAPES:
            for mode in MODES:
                i, b = by.get(("idle", shape, mode)), by.get(("busy", shape, mode))
                if not (i or b):
                    continue
                cells = []
                for r in (i, b):
                    cells += ["-"] * 3 if r is None else [
                        ms_fmt(r["ms_1t"]), ms_fmt(r["ms_2t"]), f"{r['ratio_2t_1t']:.2f}"]
                lines.append(f"| {shape} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(HERE), "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "--",
                                "../src", "../python", "../Cargo.toml"],
                               capture_output=True, text=True, check=False).stdout.strip()
        core = subprocess.run(["git", "-C", str(HERE), "log", "-1", "--format=%h", "--",
                               "../src", "../python", "../Cargo.toml"],
                              capture_output=True, text=True, check=True).stdout.strip()
        return (head[:100] + f" (last change to src/python: {core})"
                + (" (+ uncommitted changes in src/python)" if dirty else ""))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    if sys.argv[1:] == ["--numpy-gemm"]:
        numpy_gemm()
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="alternating rounds per case")
    ap.add_argument("--large-runs", type=int, default=3, help="rounds for the large shape")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--cells", default="LSTM,GRU,RNN")
    ap.add_argument("--busy-shapes", default=",".join(SHAPES),
                    help="shapes of the busy-core case (empty: skip it)")
    ap.add_argument("--block-s", type=float, default=0.25, help="seconds per timed block")
    ap.add_argument("--rest-s", type=float, default=0.1, help="rest after each block")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.dtype = np.dtype(args.dtype).type
    if args.dtype == np.float64:
        args.busy_shapes = ""
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.cells = [c.upper() for c in args.cells.split(",") if c]
    args.busy_shapes = [s for s in args.busy_shapes.split(",") if s]
    threads = [int(v) for v in args.threads.split(",")]

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    torch = import_optional("torch")
    ort = import_optional("onnxruntime")
    onnx = import_optional("onnx") if ort is not None else None
    if onnx is None:
        ort = None
    notes = []
    if torch is None:
        notes.append("torch not installed: torch columns and the torch GEMM peak skipped")
    if ort is None:
        notes.append("onnxruntime/onnx not installed: ONNX Runtime column skipped")
    for n in notes:
        log("note: " + n)
    start = time.time()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "bptt": f"{bptt.__version__} {bptt.build_info()}",
        "commit": git_commit(),
        "torch": getattr(torch, "__version__", "not installed"),
        "onnxruntime": getattr(ort, "__version__", "not installed"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} CPUs",
        "load average at start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "options": f"runs {args.runs} (large {args.large_runs}), block {args.block_s} s, "
                   f"rest {args.rest_s} s, {np.dtype(args.dtype).name}",
    }
    if notes:
        meta["notes"] = "; ".join(notes)
    rows, peaks, busy = [], {}, []

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"meta": meta, "rows": rows, "gemm_peak": peaks, "busy": busy},
                          f, indent=1)

    for n in threads:
        bptt.set_num_threads(n)
        if torch is not None:
            torch.set_num_threads(n)
        peaks[n] = gemm_peak(torch, n)
        log(f"threads {n}: GEMM torch {fmt(peaks[n]['torch'], '.0f')} GFLOP/s, "
            f"NumPy {peaks[n]['numpy']:.0f} GFLOP/s")
        rows += peer_cases(args, torch, onnx, ort, n, log)
        save()
    if args.busy_shapes:
        busy = busy_cases(args, log)
    meta["load average at end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    meta["wall time"] = f"{time.time() - start:.0f} s"
    save()
    print(report(meta, rows, peaks, busy))


if __name__ == "__main__":
    main()
