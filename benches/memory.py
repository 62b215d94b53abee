"""Peak memory and time of LSTM forward + full backward: full tape, memory budgets, torch.

Each case runs in a fresh process. Extra memory is the peak RSS (the kernel's high-water
mark, VmHWM) after the call minus the RSS just before it, so the model and ``x`` are not
counted; a case whose call did not raise the high-water mark reports no number. The unavoidable part is
what any implementation must hold: ``out``, ``d_out`` and ``dx`` (``out`` alone for
inference; ``x`` is allocated before the measurement).

Usage: ``python benches/memory.py [T ...]`` (default 1000 10000); prints a Markdown table.
Linux only.
"""

import json
import subprocess
import sys
import time

B, I, H = 16, 64, 128

CHILD = r"""
import json, sys, time
import numpy as np

def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)

mode, T, B, I, H = sys.argv[1], *map(int, sys.argv[2:6])
x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
if mode == "torch":
    import torch
    torch.manual_seed(0)
    m = torch.nn.LSTM(I, H)
    def run():
        xr = torch.from_numpy(x).requires_grad_(True)
        out, _ = m(xr)
        out.backward(torch.ones_like(out))
        return xr.grad
    nbytes = 0
else:
    import bptt
    m = bptt.LSTM(I, H, seed=0)
    full = None if mode in ("full", "inference") else float(mode)
    def run():
        global nbytes
        if mode == "inference":
            return m(x)[0]
        budget = None
        if full is not None:
            budget = int(FULL_TAPE * full)
        out, _, tape = m.forward(x, memory_budget=budget)
        nbytes = tape.nbytes
        d_out = np.ones_like(out)
        g = m.backward(tape, d_out)
        return g.dx
    nbytes = 0
    FULL_TAPE = int(sys.argv[6])
# Warm-up on a short sequence (thread pool, allocator), so the measured call starts warm
# without leaving freed pages of its own size behind.
x_run = x
x = x_run[:8]
run()
x = x_run
before = rss("VmRSS:")
hwm_before = rss("VmHWM:")
t0 = time.perf_counter()
run()
elapsed = time.perf_counter() - t0
peak = rss("VmHWM:")
# The high-water mark is only this call's when the call raised it.
print(json.dumps({"extra": peak - before if peak > hwm_before else None,
                  "seconds": elapsed, "nbytes": nbytes}))
"""


def full_tape_bytes(T):
    # Full LSTM tape, 1 layer: gates [T,B,4H] + h_prev + c_prev [T,B,H] (x is referenced).
    return 4 * T * B * (4 * H + 2 * H)


def run_case(mode, T):
    cmd = [sys.executable, "-c", CHILD, mode, str(T), str(B), str(I), str(H),
           str(full_tape_bytes(T))]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(ts):
    try:
        import torch  # noqa: F401
        modes = ["inference", "full", "0.25", "0.0625", "torch"]
    except ImportError:
        modes = ["inference", "full", "0.25", "0.0625"]
    print(f"LSTM float32, B={B}, I={I}, H={H}; extra = peak RSS - RSS before the call (MiB)\n")
    print("| T | case | extra MiB | unavoidable MiB | extra beyond unavoidable MiB | tape MiB "
          "| time s |")
    print("|---|---|---|---|---|---|---|")
    for T in ts:
        for mode in modes:
            # out, d_out, dx for training; out alone for inference.
            unavoidable = 4 * T * B * (H if mode == "inference" else H + H + I)
            r = run_case(mode, T)
            name = {"inference": "bptt inference m(x)", "full": "bptt full tape", "0.25": "bptt budget 1/4",
                    "0.0625": "bptt budget 1/16", "torch": "torch.nn.LSTM"}[mode]
            if "error" in r or r["extra"] is None:
                r.setdefault("error", "the call did not raise the high-water mark")
                print(f"| {T} | {name} | error: {r['error'][:60]} | | | | |")
                continue
            mib = 2**20
            print(f"| {T} | {name} | {r['extra'] / mib:.0f} | {unavoidable / mib:.0f} "
                  f"| {(r['extra'] - unavoidable) / mib:.0f} | {r['nbytes'] / mib:.1f} "
                  f"| {r['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    t0 = time.time()
    main([int(a) for a in sys.argv[1:]] or [1000, 10000])
    print(f"\n({time.time() - t0:.0f} s)")
