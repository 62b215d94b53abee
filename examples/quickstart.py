"""A first look at bptt: one LSTM, one forward pass, full BPTT, and what the gradients say.

Run: python examples/quickstart.py
"""

import bptt
import numpy as np

rng = np.random.default_rng(0)
T, B, I, H = 50, 8, 4, 32
x = rng.standard_normal((T, B, I)).astype(np.float32)

model = bptt.LSTM(I, H, num_layers=2, seed=0)
out, (h, c), tape = model.forward(x)  # keeps a tape for BPTT
print(f"out {out.shape}, h {h.shape}, c {c.shape}; tape keeps {tape.nbytes / 1e3:.1f} kB")

# Loss: mean squared output at the last step only, so every earlier step learns only
# through the recurrence.
d_out = np.zeros_like(out)
d_out[-1] = 2.0 * out[-1] / out[-1].size
g = model.backward(tape, d_out)
print("parameter gradients:", {k: v.shape for k, v in list(g.params.items())[:4]}, "...")
print("||dL/dh_t|| of the top layer, every 10th step:")
for t in range(0, T, 10):
    print(f"  t={t:3d}  {g.dh_norm[-1, t]:.3e}")
print(f"ratio first/last step: {g.dh_norm[-1, 0] / g.dh_norm[-1, -1]:.2e}")
