"""Character-level language model trained with truncated BPTT on Python's own source code.

The text is the source of a fixed list of standard-library modules (every Python install
has it), so the run needs no download. It trains one LSTM per truncation length with
``bptt.TBPTT(k1=k, k2=k)`` (or a fixed ``k1`` with ``--k1``) over the same characters,
then reports bits per character on held-out text (the last 10% of every file, read as
one stream per batch row with the state carried, so the context is not limited to k at
evaluation).

    python examples/char_lm.py                     # default: k = 4, 16, 64, 300k characters, well under 3 minutes
    python examples/char_lm.py --chars 2000000 --hidden 256 --lengths 8,32,128

Every run sees the same training characters (``--chars``) in the same order. With
k1 = k2 = k a shorter k also means more (and noisier) updates; ``--k1`` holds the number
of updates fixed so that only the backpropagation depth k2 differs. Numbers depend on the
seed and the budget: the default run is short and shows early training, not converged
values.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

import bptt
import numpy as np

MODULES = ["argparse", "textwrap", "string", "fractions", "difflib", "dataclasses",
           "pathlib", "shutil", "tempfile", "enum", "functools", "heapq", "bisect",
           "calendar", "configparser", "csv", "gettext", "glob", "inspect", "ipaddress",
           "json.decoder", "json.encoder", "locale", "logging", "operator", "optparse",
           "pprint", "random", "statistics", "tarfile", "threading", "typing", "uuid",
           "zipfile", "ast", "contextlib", "copy", "decimal", "pickle", "platform"]

# Printable ASCII plus newline; anything else (rare in the stdlib) becomes "?".
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
INDEX = {ch: i for i, ch in enumerate(VOCAB)}
UNKNOWN = INDEX["?"]


def source_text() -> tuple[str, str]:
    """(train, validation): for each module, its first 90% and last 10% of characters."""
    train, valid = [], []
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None) if spec else None
        if not origin or not origin.endswith(".py") or not Path(origin).exists():
            continue
        text = Path(origin).read_text(encoding="utf-8", errors="replace")
        cut = int(0.9 * len(text))
        train.append(text[:cut])
        valid.append(text[cut:])
    if not train:
        raise SystemExit("no standard-library source files found (is this a stripped Python?)")
    return "".join(train), "".join(valid)


def encode(text: str) -> np.ndarray:
    """Characters to int64 ids."""
    return np.fromiter((INDEX.get(ch, UNKNOWN) for ch in text), dtype=np.int64,
                       count=len(text))


def one_hot(ids: np.ndarray, dtype=np.float32) -> np.ndarray:
    """(..., ) int ids to (..., V) one-hot vectors."""
    out = np.zeros(ids.shape + (len(VOCAB),), dtype=dtype)
    np.put_along_axis(out, ids[..., None], 1.0, axis=-1)
    return out


def batches(ids: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-character labels as (L, batch) stream arrays."""
    n = (len(ids) - 1) // batch
    x = ids[: n * batch].reshape(batch, n).T
    y = ids[1: n * batch + 1].reshape(batch, n).T
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def evaluate(model, readout, ids: np.ndarray, batch: int, piece: int = 256) -> float:
    """Bits per character over ``ids``, read as ``batch`` streams with the state carried."""
    x, y = batches(ids, batch)
    state = None
    total, count = 0.0, 0
    for s in range(0, x.shape[0], piece):
        out, state = model(one_hot(x[s:s + piece]), state)
        loss, _ = bptt.cross_entropy_loss(readout(out), y[s:s + piece])
        n = y[s:s + piece].size
        total += loss * n
        count += n
    return total / count / math.log(2)


def train_one(k: int, train_ids: np.ndarray, valid_ids: np.ndarray, args) -> dict:
    """One LSTM trained with TBPTT(k, k) over ``args.chars`` training characters."""
    t0 = time.perf_counter()
    V = len(VOCAB)
    model = bptt.LSTM(V, args.hidden, seed=args.seed)
    readout = bptt.Linear(args.hidden, V, seed=args.seed + 1)
    opt = bptt.optim.Adam(bptt.tbptt.parameters(model, readout), lr=args.lr)
    k1 = args.k1 or k
    trainer = bptt.TBPTT(model, readout, bptt.cross_entropy_loss, opt, k1=k1, k2=k,
                         clip_norm=args.clip)
    x, y = batches(train_ids[: args.chars + 1], args.batch)
    state = None
    losses = []
    # Feed the stream in pieces (the trainer carries the state through ``state=``) so the
    # one-hot inputs stay small; piece boundaries fall on chunk boundaries. (With --k1 < k2
    # the first window of each piece cannot look back past the piece's start.)
    piece = k1 * max(1, 2048 // k1)
    for s in range(0, x.shape[0], piece):
        res = trainer.train(one_hot(x[s:s + piece]), y[s:s + piece], state=state)
        state = res.state
        losses.extend(res.losses.tolist())
        done = min(s + piece, x.shape[0]) / x.shape[0]
        recent = np.mean(losses[-20:]) / math.log(2)
        print(f"\r  k={k:<4d} {100 * done:5.1f}%  train loss {recent:.3f} bpc", end="",
              file=sys.stderr, flush=True)
    print(file=sys.stderr)
    bpc = evaluate(model, readout, valid_ids, args.batch)
    return {"k": k, "k1": k1, "valid_bpc": bpc,
            "train_bpc_last": float(np.mean(losses[-50:]) / math.log(2)),
            "updates": len(losses), "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    """Runs the comparison and prints a table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="4,16,64",
                   help="truncation lengths k (k1 = k2 = k), comma-separated")
    p.add_argument("--k1", type=int, default=0,
                   help="hold k1 fixed (lengths are then k2 >= k1): same updates, only the "
                        "backpropagation depth differs")
    p.add_argument("--chars", type=int, default=300_000, help="training characters per run")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=32, help="parallel streams")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    lengths = [int(v) for v in args.lengths.split(",")]
    train_text, valid_text = source_text()
    train_ids, valid_ids = encode(train_text), encode(valid_text)
    args.chars = min(args.chars, len(train_ids) - 1)
    uniform = math.log2(len(VOCAB))
    unigram = np.bincount(train_ids, minlength=len(VOCAB)) / len(train_ids)
    vb = np.bincount(valid_ids, minlength=len(VOCAB)) / len(valid_ids)
    unigram_bpc = float(-(vb * np.log2(np.maximum(unigram, 1e-12))).sum())
    print(f"text: {len(MODULES)} stdlib modules, {len(train_ids):,} training / "
          f"{len(valid_ids):,} validation characters, vocabulary {len(VOCAB)}")
    print(f"each run: LSTM({len(VOCAB)}, {args.hidden}) + Linear, {args.chars:,} training "
          f"characters, batch {args.batch}, Adam lr {args.lr}, clip {args.clip}, "
          f"seed {args.seed}")
    results = [train_one(k, train_ids, valid_ids, args) for k in lengths]
    print(f"\n{'k1':>4} {'k2':>5}  {'updates':>8}  {'train bpc':>9}  {'valid bpc':>9}  {'time':>6}")
    for r in results:
        print(f"{r['k1']:>4} {r['k']:>5}  {r['updates']:>8}  {r['train_bpc_last']:>9.3f}  "
              f"{r['valid_bpc']:>9.3f}  {r['seconds']:>5.0f}s")
    print(f"references: uniform over the vocabulary {uniform:.3f} bpc; unigram "
          f"frequencies {unigram_bpc:.3f} bpc (validation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
