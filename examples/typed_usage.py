"""bptt from typed code: this file must stay clean under ``mypy --strict`` (CI checks it).

It uses the public API the way an application would: build models, run forward and full
BPTT, read gradients and diagnostics, train a readout with an optimizer and clipping, and
query the build. Run: python examples/typed_usage.py
"""

from __future__ import annotations

import bptt
import numpy as np
import numpy.typing as npt
from bptt import optim

F32 = npt.NDArray[np.float32]


def last_step_mse(out: npt.NDArray[np.floating], target: F32) -> tuple[float, F32]:
    """Loss on the last time step only, and ``dL/dout`` (zero at every other step)."""
    diff = out[-1].astype(np.float32) - target
    d_out = np.zeros(out.shape, dtype=np.float32)
    d_out[-1] = 2.0 * diff / diff.size
    return float(np.mean(diff * diff)), d_out


def train_lstm(steps: int, seed: int = 0) -> list[float]:
    """A few full-BPTT steps of an LSTM regressing a sum over its input sequence."""
    rng = np.random.default_rng(seed)
    T, B, I, H = 20, 8, 3, 16
    x: F32 = rng.standard_normal((T, B, I)).astype(np.float32)
    target: F32 = np.tanh(x.sum(axis=0)[:, :1]).repeat(H, axis=1).astype(np.float32)

    model = bptt.LSTM(I, H, num_layers=2, seed=seed)
    opt = optim.Adam(model.params, lr=1e-2)
    losses: list[float] = []
    for _ in range(steps):
        out, (h, c), tape = model.forward(x)
        assert h.shape == c.shape == (2, B, H)
        loss, d_out = last_step_mse(out, target)
        grads: bptt.Gradients = model.backward(tape, d_out)
        norm: float = bptt.clip_grad_norm(grads.params, max_norm=1.0)
        assert norm >= 0.0
        opt.step(grads.params)
        losses.append(loss)
    return losses


def gradient_flow() -> npt.NDArray[np.floating]:
    """``||dL/dh_t||`` through 100 steps of a tanh RNN (loss at the last step)."""
    model = bptt.RNN(1, 32, nonlinearity="tanh", dtype=np.float64, seed=1)
    x = np.random.default_rng(1).standard_normal((100, 4, 1))
    out, _state, tape = model.forward(x)
    d_out = np.zeros_like(out)
    d_out[-1] = 1.0
    g = model.backward(tape, d_out)
    norms: npt.NDArray[np.floating] = g.dh_norm
    return norms


def gru_with_lengths() -> tuple[int, ...]:
    """A bidirectional GRU over a padded batch; outputs past each length are zero."""
    model = bptt.GRU(4, 8, bidirectional=True, batch_first=True, seed=2)
    x = np.ones((3, 10, 4), dtype=np.float32)
    out, h = model(x, lengths=np.array([10, 7, 2]))
    assert not out[2, 2:].any()
    shape: tuple[int, ...] = h.shape
    return shape


def main() -> None:
    info = bptt.build_info()
    level: str = info["simd"]
    threads: int = bptt.get_num_threads()
    print(f"bptt {bptt.__version__}: simd={level}, threads={threads}")
    losses = train_lstm(steps=5)
    print("LSTM loss:", " ".join(f"{v:.4f}" for v in losses))
    norms = gradient_flow()
    print(f"RNN ||dL/dh_0|| / ||dL/dh_99|| = {norms[0, 0] / norms[0, -1]:.2e}")
    print("GRU final state shape:", gru_with_lengths())
    state: dict[str, npt.NDArray[np.floating]] = bptt.LSTM(3, 16, seed=0).state_dict()
    print("LSTM parameters:", sorted(state))


if __name__ == "__main__":
    main()
