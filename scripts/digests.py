"""Bitwise digests of bptt's outputs, to check that a refactor changes no number.

Runs a fixed grid of cases through bptt's public Python API and records a SHA-256 digest of
the raw bytes (with dtype and shape) of every output of each case; a second build gives the
same file only if every output is bitwise the same. Run it with the interpreter whose bptt
is to be checked, from a directory where ``import bptt`` finds the installed package (not
the source tree)::

    cd /tmp && /path/to/old/python /path/to/scripts/digests.py save old.json
    cd /tmp && /path/to/new/python /path/to/scripts/digests.py save new.json
    python /path/to/scripts/digests.py compare old.json new.json   # exit 1 on a difference

The grid: kinds rnn_tanh, rnn_relu, lstm, gru; num_layers 1 and 2; uni- and bidirectional;
time-major and ``batch_first``; with and without ``lengths=`` (some shorter than T);
float32 and float64; three tape modes (``infer``: ``m(x)``; ``tape``: ``m.forward`` with
the full tape + ``m.backward``; ``budget``: ``m.forward(memory_budget=...)`` with a budget
that forces checkpoints + ``m.backward``); ``bptt.set_num_threads`` 1 and 2; SIMD levels
scalar and the best the CPU has. Shapes: ``small`` (T=7, B=3, I=5, H=40: H not a multiple
of 32) over the whole grid; ``big`` (T=20, I=24, H=128; B=16 for LSTM/GRU and B=32 for the
RNNs, so one step's recurrent product is at least 2^19 multiply-adds and the multi-threaded
step team engages) over the whole grid except that ``batch_first`` comes only with
``lengths`` and time-major only without (the two paths that copy ``x`` and the one that
does not); ``ragged`` (as ``big`` with H=136, beyond the team threshold too, with tiles
that do not divide H) for one layer, unidirectional, time-major. The scalar SIMD level is
slow (it computes fused multiply-adds in software), so for ``big`` and ``ragged`` it runs
only the configurations L1/uni/no lengths and L2/bi/lengths; every kind x dtype x mode x
threads x level still appears with the ``big`` shape.

Per case the digests cover ``out`` and the final state (``h``, and ``c`` for the LSTM); in
the training modes also ``dx``, ``dstate``, every ``params`` gradient (sorted keys) and
``dh_norm``, plus ``tape.nbytes``, ``tape.segment`` and the memory budget used. Cases with
``batch_first`` give a random initial state and ``d_state``; the others give None (zeros).
Parameters come from ``seed=``, inputs from ``np.random.default_rng`` seeded by the CRC-32
of the case's configuration, so every case is reproducible on its own.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import platform
import sys
import time
import zlib
from typing import Any

FORMAT = 1
KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
DTYPES = ("float32", "float64")
MODES = ("infer", "tape", "budget")
THREADS = (1, 2)
# Fractions of the full tape's size tried, smallest first, as the memory budget: the first
# that forward accepts (and that checkpoints) is used.
BUDGET_FRACTIONS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def shapes(kind: str) -> dict[str, tuple[int, int, int, int]]:
    """(T, B, I, H) of each shape for this kind."""
    rnn = kind.startswith("rnn")
    return {
        "small": (7, 3, 5, 40),
        "big": (20, 32 if rnn else 16, 24, 128),
        "ragged": (20, 32 if rnn else 16, 24, 136),
    }


def configs() -> list[dict[str, Any]]:
    """Every model and input configuration of the grid (without mode, threads, SIMD)."""
    out = []
    for kind, shape, layers, bidir, batch_first, lens, dtype in itertools.product(
            KINDS, ("small", "big", "ragged"), (1, 2), (False, True), (False, True),
            (False, True), DTYPES):
        if shape == "big" and batch_first != lens:
            continue
        if shape == "ragged" and (layers != 1 or bidir or batch_first):
            continue
        t, b, i, h = shapes(kind)[shape]
        name = (f"{kind}/{shape}/L{layers}/{'bi' if bidir else 'uni'}/"
                f"{'bf' if batch_first else 'tm'}/{'lens' if lens else 'full'}/{dtype}")
        # The scalar level is slow (software fused multiply-adds): beyond the small shape it
        # runs only the simplest configuration and the one with everything switched on.
        scalar = shape == "small" or (layers, bidir, lens) in ((1, False, False), (2, True, True))
        out.append({"name": name, "kind": kind, "T": t, "B": b, "I": i, "H": h,
                    "layers": layers, "bidir": bidir, "batch_first": batch_first,
                    "lens": lens, "dtype": dtype, "scalar": scalar})
    return out


def make_model(bptt: Any, c: dict[str, Any]) -> Any:
    common = {"num_layers": c["layers"], "batch_first": c["batch_first"],
              "bidirectional": c["bidir"], "dtype": c["dtype"], "seed": 1234}
    if c["kind"].startswith("rnn"):
        return bptt.RNN(c["I"], c["H"], nonlinearity=c["kind"][4:], **common)
    cls = bptt.LSTM if c["kind"] == "lstm" else bptt.GRU
    return cls(c["I"], c["H"], **common)


def make_inputs(c: dict[str, Any]) -> dict[str, Any]:
    """x, state, lengths, d_out, d_state of a configuration, from its own seed."""
    import numpy as np

    rng = np.random.default_rng(zlib.crc32(c["name"].encode()))
    dt = np.dtype(c["dtype"])
    t, b, d = c["T"], c["B"], 2 if c["bidir"] else 1

    def seq(width: int) -> np.ndarray:
        arr = rng.standard_normal((t, b, width))
        return np.ascontiguousarray(arr.transpose(1, 0, 2) if c["batch_first"] else arr,
                                    dtype=dt)

    def state() -> Any:
        shape = (c["layers"] * d, b, c["H"])
        if c["kind"] == "lstm":
            return (rng.standard_normal(shape).astype(dt),
                    rng.standard_normal(shape).astype(dt))
        return rng.standard_normal(shape).astype(dt)

    x = seq(c["I"])
    d_out = seq(d * c["H"])
    given = c["batch_first"]
    st, d_st = (state(), state()) if given else (None, None)
    lengths = None
    if c["lens"]:
        # Every third sequence shorter than T (one of them length 1), the others full.
        lengths = np.array([t if k % 3 else max(1, t - 1 - (5 * k) % t) for k in range(b)],
                           dtype=np.int64)
        lengths[min(3, b - 1)] = 1
    return {"x": x, "state": st, "lengths": lengths, "d_out": d_out, "d_state": d_st}


def digest(arr: Any) -> str:
    import numpy as np

    a = np.asarray(arr)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def state_digests(prefix: str, st: Any) -> dict[str, str]:
    if isinstance(st, tuple):
        return {f"{prefix}.h": digest(st[0]), f"{prefix}.c": digest(st[1])}
    return {f"{prefix}.h": digest(st)}


def pick_budget(m: Any, inp: dict[str, Any]) -> int:
    """The smallest of the budget ladder that forward accepts and that checkpoints."""
    _, _, tape = m.forward(inp["x"], inp["state"], inp["lengths"])
    full = tape.nbytes
    for frac in BUDGET_FRACTIONS:
        budget = int(full * frac)
        try:
            _, _, tape = m.forward(inp["x"], inp["state"], inp["lengths"],
                                   memory_budget=budget)
        except ValueError:
            continue
        if tape.segment is not None:
            return budget
    raise RuntimeError(f"no budget below the full tape ({full} bytes) checkpoints")


def run_case(m: Any, inp: dict[str, Any], mode: str, budget: int | None) -> dict[str, Any]:
    if mode == "infer":
        out, st = m(inp["x"], inp["state"], inp["lengths"])
        return {"out": digest(out), **state_digests("state", st)}
    out, st, tape = m.forward(inp["x"], inp["state"], inp["lengths"],
                              memory_budget=budget if mode == "budget" else None)
    if mode == "budget" and tape.segment is None:
        raise RuntimeError(f"memory_budget={budget} kept the full tape")
    res: dict[str, Any] = {"out": digest(out), **state_digests("state", st),
                           "tape.nbytes": tape.nbytes, "tape.segment": tape.segment,
                           "memory_budget": budget if mode == "budget" else None}
    g = m.backward(tape, inp["d_out"], inp["d_state"])
    res["dx"] = digest(g.dx)
    res.update(state_digests("dstate", g.dstate))
    for key in sorted(g.params):
        res[f"params.{key}"] = digest(g.params[key])
    res["dh_norm"] = digest(g.dh_norm)
    return res


def simd_levels(core: Any) -> list[str]:
    """``scalar`` and the best level this CPU accepts."""
    for level in ("avx512", "avx2"):
        try:
            core.set_simd_level(level)
        except ValueError:  # the CPU lacks it
            continue
        return ["scalar", level]
    return ["scalar"]


def save(path: str) -> int:
    # Imported here so that ``compare`` runs with any Python, numpy or not.
    import bptt
    import numpy as np
    from bptt import _core as core_module

    core: Any = core_module  # set_simd_level takes our level names as plain str
    start = time.perf_counter()
    info = dict(bptt.build_info())
    levels = simd_levels(core)
    cfgs = configs()
    inputs = {c["name"]: make_inputs(c) for c in cfgs}
    # The budgets depend on the model and input only; found at the fastest level.
    bptt.set_num_threads(max(THREADS))
    core.set_simd_level(levels[-1])
    budgets = {c["name"]: pick_budget(make_model(bptt, c), inputs[c["name"]]) for c in cfgs}
    cases: dict[str, dict[str, Any]] = {}
    for threads, level in itertools.product(THREADS, levels):
        bptt.set_num_threads(threads)
        core.set_simd_level(level)
        for c in cfgs:
            if level == "scalar" and not c["scalar"]:
                continue
            m = make_model(bptt, c)
            inp = inputs[c["name"]]
            for mode in MODES:
                name = f"{c['name']}/{mode}/t{threads}/{level}"
                cases[name] = run_case(m, inp, mode, budgets[c["name"]])
    elapsed = time.perf_counter() - start

    with open(path, "w") as f:
        json.dump({"format": FORMAT, "bptt_version": bptt.__version__, "build_info": info,
                   "simd_levels": levels, "numpy": np.__version__,
                   "python": platform.python_version(), "machine": platform.machine(),
                   "seconds": round(elapsed, 1), "cases": cases}, f, indent=1, sort_keys=True)
    n_scalar = sum(c["scalar"] for c in cfgs)
    print(f"{len(cases)} cases ({len(cfgs)} configurations, {n_scalar} of them at the scalar "
          f"level, x {len(MODES)} modes x threads {list(THREADS)} x SIMD {levels}) in "
          f"{elapsed:.1f} s -> {path}")

    # Not a check of this file, information: do thread count and SIMD level change bits?
    groups: dict[str, set[str]] = {}
    for name, res in cases.items():
        base = name.rsplit("/", 2)[0]
        groups.setdefault(base, set()).add(json.dumps(res, sort_keys=True))
    varying = sorted(k for k, v in groups.items() if len(v) > 1)
    print(f"{len(groups) - len(varying)} of {len(groups)} case groups are bitwise the same "
          f"for every thread count and SIMD level")
    for name in varying:
        print(f"  varies with threads/SIMD: {name}")
    return 0


def compare(old_path: str, new_path: str) -> int:
    with open(old_path) as f:
        old = json.load(f)
    with open(new_path) as f:
        new = json.load(f)
    for key in ("bptt_version", "simd_levels", "numpy", "python", "machine"):
        if old.get(key) != new.get(key):
            print(f"note: {key} differs: {old.get(key)!r} -> {new.get(key)!r}")
    oc, nc = old["cases"], new["cases"]
    missing = sorted(set(oc) - set(nc))
    extra = sorted(set(nc) - set(oc))
    common = sorted(set(oc) & set(nc))
    differing: dict[str, list[str]] = {}
    for name in common:
        fields = sorted(set(oc[name]) | set(nc[name]))
        bad = [k for k in fields if oc[name].get(k, "<absent>") != nc[name].get(k, "<absent>")]
        if bad:
            differing[name] = bad
    print(f"cases compared: {len(common)}")
    print(f"identical:      {len(common) - len(differing)}")
    print(f"differing:      {len(differing)}")
    print(f"missing in new: {len(missing)}")
    if extra:
        print(f"only in new:    {len(extra)} (not compared)")
    if differing:
        counts: dict[str, int] = {}
        for fields in differing.values():
            for k in fields:
                counts[k] = counts.get(k, 0) + 1
        print("differing outputs: " + ", ".join(f"{k} ({n})" for k, n in sorted(counts.items())))
        for name, fields in differing.items():
            print(f"  DIFF {name}: {', '.join(fields)}")
    for name in missing:
        print(f"  MISSING {name}")
    for name in extra:
        print(f"  EXTRA {name}")
    return 1 if differing or missing else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save", help="run the grid with the bptt this Python imports")
    s.add_argument("out", help="JSON file to write")
    c = sub.add_parser("compare", help="compare two saved files; exit 1 on any difference")
    c.add_argument("old")
    c.add_argument("new")
    args = p.parse_args(argv)
    if args.cmd == "save":
        return save(args.out)
    return compare(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
