"""Times two builds of bptt against each other in one run (e.g. before and after a refactor).

Usage::

    python benches/compare_builds.py --old /path/to/old/venv/bin/python \\
        --new /path/to/new/venv/bin/python [--rounds 10] [--cases lstm,gru/small] \\
        [--block-s 0.2] [--rest-s 0.2] [--min-calls 3]

Each build lives in its own interpreter (``--old`` and ``--new``: each must ``import bptt``
as the build to time; run from a directory where that holds, not from a source tree
whose ``python/`` would shadow it). The script starts one long-lived worker per
interpreter (this same file with ``--worker``: commands in JSON lines on stdin, answers
in JSON lines on stdout). For each case both workers build the same model and inputs
(fixed seeds) and warm up; then, for ``--rounds`` rounds: old block, rest, new block,
rest. A block is one untimed call (so the build's threads are awake) and then ``calls``
timed calls, of which it keeps the median; ``calls`` is the same for both builds, chosen
from the old build's warm-up time so that a block takes about ``--block-s`` (at least
``--min-calls``). Per round the ratio new/old of the block medians; per case the median
of those ratios and their range (min-max). Speed drifts on a shared or heating machine;
alternating short blocks makes both builds see the same drift.

Cases: LSTM, GRU and RNN (tanh) at (T, B, I, H) tiny (100, 1, 32, 64), small
(100, 16, 64, 128) and medium (100, 32, 256, 256), float32, one layer; ``infer`` (``m(x)``)
and ``train`` (``m.forward`` + ``m.backward``); ``bptt.set_num_threads`` 1 and 2. Names
read ``lstm/small/train/t2``; ``--cases`` takes comma-separated regular expressions and
keeps the cases any of them matches (``re.search``).

Output: a markdown table on stdout (progress and both builds' ``build_info`` on stderr).
A ratio below 1 means the new build is faster.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import re
import statistics
import subprocess
import sys
import time
from typing import Any

SHAPES = {
    "tiny": (100, 1, 32, 64),
    "small": (100, 16, 64, 128),
    "medium": (100, 32, 256, 256),
}
KINDS = ("lstm", "gru", "rnn")
MODES = ("infer", "train")
THREADS = (1, 2)


def all_cases() -> list[dict[str, Any]]:
    cases = []
    for kind, shape, mode, threads in itertools.product(KINDS, SHAPES, MODES, THREADS):
        t, b, i, h = SHAPES[shape]
        cases.append({"name": f"{kind}/{shape}/{mode}/t{threads}", "kind": kind, "T": t,
                      "B": b, "I": i, "H": h, "mode": mode, "threads": threads})
    return cases


# ---------------------------------------------------------------------------- worker
class Runner:
    """The model, inputs and the call to time of one case, inside a worker."""

    def __init__(self, case: dict[str, Any]) -> None:
        import bptt
        import numpy as np

        bptt.set_num_threads(case["threads"])
        cls: Any = {"lstm": bptt.LSTM, "gru": bptt.GRU, "rnn": bptt.RNN}[case["kind"]]
        self.model = cls(case["I"], case["H"], dtype=np.float32, seed=0)
        rng = np.random.default_rng(0)
        t, b = case["T"], case["B"]
        self.x = rng.standard_normal((t, b, case["I"])).astype(np.float32)
        self.d_out = rng.standard_normal((t, b, case["H"])).astype(np.float32)
        self.call = self.infer if case["mode"] == "infer" else self.train

    def infer(self) -> None:
        self.model(self.x)

    def train(self) -> None:
        _, _, tape = self.model.forward(self.x)
        self.model.backward(tape, self.d_out)

    def block(self, calls: int) -> list[float]:
        self.call()  # untimed: wakes the build's threads, warms the caches
        times = []
        gc.disable()
        try:
            for _ in range(calls):
                t0 = time.perf_counter()
                self.call()
                times.append(time.perf_counter() - t0)
        finally:
            gc.enable()
        return times


def worker() -> int:
    import bptt

    runner: Runner | None = None
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            op = cmd["op"]
            if op == "info":
                reply: dict[str, Any] = {"file": bptt.__file__, "python": sys.executable,
                                         "build_info": dict(bptt.build_info())}
            elif op == "setup":
                runner = None
                gc.collect()
                runner = Runner(cmd["case"])
                warm = runner.block(2)
                reply = {"warm_s": min(warm)}
            elif op == "block":
                if runner is None:
                    raise RuntimeError("block before setup")
                reply = {"times": runner.block(cmd["calls"])}
            elif op == "quit":
                return 0
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as e:  # noqa: BLE001 - reported to the parent, which stops
            reply = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


# ---------------------------------------------------------------------------- parent
class Worker:
    """A worker subprocess running one interpreter's bptt."""

    def __init__(self, label: str, python: str) -> None:
        self.label = label
        self.proc = subprocess.Popen([python, __file__, "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.label} worker exited (code {self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.label} worker: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def measure(case: dict[str, Any], old: Worker, new: Worker, args: argparse.Namespace
            ) -> dict[str, Any]:
    warm = [w.ask(op="setup", case=case)["warm_s"] for w in (old, new)]
    calls = max(args.min_calls, math.ceil(args.block_s / max(warm[0], 1e-9)))
    olds, news, ratios = [], [], []
    for _ in range(args.rounds):
        o = statistics.median(old.ask(op="block", calls=calls)["times"])
        time.sleep(args.rest_s)
        n = statistics.median(new.ask(op="block", calls=calls)["times"])
        time.sleep(args.rest_s)
        olds.append(o)
        news.append(n)
        ratios.append(n / o)
    return {"name": case["name"], "calls": calls, "old_ms": 1e3 * statistics.median(olds),
            "new_ms": 1e3 * statistics.median(news), "ratio": statistics.median(ratios),
            "lo": min(ratios), "hi": max(ratios)}


def table(rows: list[dict[str, Any]], rounds: int) -> str:
    head = (f"| case | old ms | new ms | new/old (median of {rounds} rounds) | range | "
            "calls/block |")
    lines = [head, "|---|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['old_ms']:.3f} | {r['new_ms']:.3f} | "
                     f"{r['ratio']:.3f} | {r['lo']:.3f}-{r['hi']:.3f} | {r['calls']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--old", help="Python interpreter whose bptt is the baseline")
    p.add_argument("--new", help="Python interpreter whose bptt is compared to it")
    p.add_argument("--rounds", type=int, default=10, help="old/new block pairs per case")
    p.add_argument("--cases", default="",
                   help="comma-separated regular expressions; keep the cases any matches")
    p.add_argument("--block-s", type=float, default=0.2, help="target seconds per block")
    p.add_argument("--rest-s", type=float, default=0.2, help="seconds of rest after a block")
    p.add_argument("--min-calls", type=int, default=3, help="least timed calls per block")
    args = p.parse_args(argv)
    if args.worker:
        return worker()
    if not args.old or not args.new:
        p.error("--old and --new are required")
    if args.rounds < 1 or args.min_calls < 1:
        p.error("--rounds and --min-calls must be at least 1")

    patterns = [re.compile(s) for s in args.cases.split(",") if s]
    cases = [c for c in all_cases() if not patterns or any(q.search(c["name"]) for q in patterns)]
    if not cases:
        p.error(f"--cases {args.cases!r} matches none of: "
                + ", ".join(c["name"] for c in all_cases()))

    old, new = Worker("old", args.old), Worker("new", args.new)
    rows = []
    try:
        for w in (old, new):
            info = w.ask(op="info")
            print(f"{w.label}: {info['python']} -> {info['file']} {info['build_info']}",
                  file=sys.stderr)
        for k, case in enumerate(cases, 1):
            row = measure(case, old, new, args)
            rows.append(row)
            print(f"[{k}/{len(cases)}] {row['name']}: {row['old_ms']:.3f} -> "
                  f"{row['new_ms']:.3f} ms, new/old {row['ratio']:.3f} "
                  f"({row['lo']:.3f}-{row['hi']:.3f})", file=sys.stderr, flush=True)
    finally:
        old.close()
        new.close()
    print(table(rows, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
