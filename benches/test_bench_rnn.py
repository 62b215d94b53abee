"""bptt against the plain-NumPy reference and torch.nn.{RNN,LSTM,GRU}, side by side.

One pytest-benchmark group per (cell, shape, mode, threads); FLOPs in ``extra_info``.
Run ``python -m pytest benches --benchmark-enable --benchmark-only --benchmark-json=b.json``
(the project's pytest settings disable benchmarks by default), then
``python benches/table.py b.json``. torch is optional (skipped when absent); the NumPy
reference runs only where it finishes in reasonable time (tiny, small).

FLOP model: forward ``2·T·B·(I+H)·G·H`` with G = 4, 3, 1 for LSTM, GRU, RNN; backward
twice the forward.
"""

import bptt
import numpy as np
import pytest
import reference
from shapes import GATES, SHAPES, flops

CELLS = GATES
MODES = ("inference", "train")
THREADS = (1, 2)
REFERENCE_SHAPES = ("tiny", "small")


def rounds_for(shape):
    return {"large": 3, "long": 5, "medium": 5}.get(shape, 10)


def _inputs(shape, seed=0):
    T, B, I, _ = SHAPES[shape]
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, I)).astype(np.float32)


def _bptt_model(cell, shape):
    _, _, I, H = SHAPES[shape]
    cls = {"lstm": bptt.LSTM, "gru": bptt.GRU, "rnn": bptt.RNN}[cell]
    return cls(I, H, seed=0)


def _record(benchmark, cell, shape, mode, threads, impl):
    benchmark.group = f"{cell}-{shape}-{mode}-{threads}t"
    benchmark.extra_info.update(
        cell=cell, shape=shape, mode=mode, threads=threads, impl=impl,
        flops=flops(cell, shape, mode), dims=SHAPES[shape],
    )


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("cell", list(CELLS))
def test_bptt(benchmark, cell, shape, mode, threads):
    bptt.set_num_threads(threads)
    m = _bptt_model(cell, shape)
    x = _inputs(shape)
    d_out = np.ones((x.shape[0], x.shape[1], m.hidden_size), np.float32)

    def train():
        _, _, tape = m.forward(x)
        return m.backward(tape, d_out)

    fn = (lambda: m(x)) if mode == "inference" else train
    _record(benchmark, cell, shape, mode, threads, "bptt")
    benchmark.pedantic(fn, rounds=rounds_for(shape), warmup_rounds=1)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("cell", list(CELLS))
def test_torch(benchmark, cell, shape, mode, threads):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(threads)
    _, _, I, H = SHAPES[shape]
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    torch.manual_seed(0)
    m = cls(I, H)
    x = torch.from_numpy(_inputs(shape))

    def infer():
        with torch.no_grad():
            return m(x)

    def train():
        xr = x.detach().requires_grad_(True)
        out, _ = m(xr)
        out.backward(torch.ones_like(out))
        return xr.grad

    _record(benchmark, cell, shape, mode, threads, "torch")
    benchmark.pedantic(infer if mode == "inference" else train,
                       rounds=rounds_for(shape), warmup_rounds=1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", REFERENCE_SHAPES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_numpy_reference(benchmark, cell, shape, mode):
    _, _, I, H = SHAPES[shape]
    kind = {"lstm": "lstm", "gru": "gru", "rnn": "rnn_tanh"}[cell]
    params = reference.init_params(kind, I, H, seed=0)
    x = _inputs(shape).astype(np.float64)

    def infer():
        return reference.forward(kind, params, x, num_layers=1, hidden_size=H)[0]

    def train():
        out, _, cache = reference.forward(kind, params, x, num_layers=1, hidden_size=H)
        return reference.backward(cache, np.ones_like(out))

    # The reference is single-threaded Python per step; it is recorded under "1t" and "2t"
    # groups alike would be misleading, so it lives in the 1-thread group only.
    _record(benchmark, cell, shape, mode, 1, "numpy")
    benchmark.pedantic(infer if mode == "inference" else train, rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("threads", THREADS)
def test_gemm_peak(benchmark, threads):
    """float32 2048² matmul through NumPy: the machine's GEMM peak in the same run."""
    torch = pytest.importorskip("torch")  # NumPy's BLAS thread count cannot be set at run time
    torch.set_num_threads(threads)
    n = 2048
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.standard_normal((n, n)).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal((n, n)).astype(np.float32))
    benchmark.group = f"gemm-peak-{threads}t"
    benchmark.extra_info.update(impl="torch-matmul", threads=threads, flops=2 * n**3)
    benchmark.pedantic(lambda: a @ b, rounds=10, warmup_rounds=2)
