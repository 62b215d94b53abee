"""Turns a pytest-benchmark JSON from ``benches/`` into a table of ratios.

Usage: ``python benches/table.py bench.json``. For every (cell, shape, mode, threads):
the median time of bptt, torch and the NumPy reference, the speed-up of bptt over each
(peer median / bptt median), bptt's GFLOP/s, and that as a fraction of the same run's
float32 GEMM peak at that thread count.
"""

import json
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    rows = {}
    peak = {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        median = b["stats"]["median"]
        if b["group"].startswith("gemm-peak"):
            peak[info["threads"]] = info["flops"] / median / 1e9
            continue
        key = (info["cell"], info["shape"], info["mode"], info["threads"])
        rows.setdefault(key, {})[info["impl"]] = (median, info["flops"])
    order = {"tiny": 0, "small": 1, "medium": 2, "large": 3, "long": 4}
    print("| cell | shape | mode | thr | bptt ms | torch ms | vs torch | numpy ms | vs numpy "
          "| GFLOP/s | % peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(rows, key=lambda k: (k[0], order[k[1]], k[2], k[3])):
        cell, shape, mode, thr = key
        r = rows[key]
        if "bptt" not in r:
            continue
        t, fl = r["bptt"]
        gf = fl / t / 1e9
        torch_ms = f"{r['torch'][0] * 1e3:.2f}" if "torch" in r else "-"
        vs_torch = f"{r['torch'][0] / t:.2f}x" if "torch" in r else "-"
        np_ms = f"{r['numpy'][0] * 1e3:.1f}" if "numpy" in r else "-"
        vs_np = f"{r['numpy'][0] / t:.1f}x" if "numpy" in r else "-"
        pk = f"{100 * gf / peak[thr]:.0f}%" if thr in peak else "-"
        print(f"| {cell} | {shape} | {mode} | {thr} | {t * 1e3:.2f} | {torch_ms} | {vs_torch} "
              f"| {np_ms} | {vs_np} | {gf:.1f} | {pk} |")
    for thr, p in sorted(peak.items()):
        print(f"\nfloat32 GEMM peak ({thr} thread(s)): {p:.0f} GFLOP/s")


if __name__ == "__main__":
    main(sys.argv[1])
