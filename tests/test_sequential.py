"""Embedding, Sequential and their use by TBPTT: PyTorch's names, initialisation and
results (same weights, float64), one gradient dict keyed like ``parameters()``, the
last-step loss, integer streams and streams read piece by piece."""

from __future__ import annotations

import bptt
import numpy as np
import pytest


def test_embedding_init_padding_and_errors():
    emb = bptt.Embedding(300, 50, padding_idx=3, seed=0)
    w = emb.params["weight"]
    assert w.shape == (300, 50) and w.dtype == np.float32
    assert np.all(w[3] == 0)
    rest = np.delete(w, 3, axis=0)
    assert abs(rest.mean()) < 0.02 and abs(rest.std() - 1) < 0.02     # N(0, 1)
    assert emb(np.array([[3, 4]])).shape == (1, 2, 50)
    with pytest.raises(TypeError, match="x: expected an integer array of token ids"):
        emb(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"x: expected token ids in \[0, 300\), got 300"):
        emb(np.array([1, 300]))
    with pytest.raises(ValueError, match=r"x: expected token ids in \[0, 300\), got -1"):
        emb(np.array([-1, 3]))
    with pytest.raises(ValueError, match="padding_idx: expected a value in"):
        bptt.Embedding(5, 2, padding_idx=5)
    assert bptt.Embedding(5, 2, padding_idx=-1).padding_idx == 4


def _char_model(dtype=np.float64, **names):
    return bptt.Sequential(embed=bptt.Embedding(11, 6, dtype=dtype, seed=0),
                           rnn=bptt.LSTM(6, 8, num_layers=2, dtype=dtype, seed=1),
                           fc=bptt.Linear(8, 11, dtype=dtype, seed=2))


def test_sequential_names_state_dict_and_checks():
    m = _char_model()
    keys = list(m.parameters())
    assert keys[0] == "embed.weight" and keys[1] == "rnn.weight_ih_l0" and keys[-1] == "fc.bias"
    assert m.state_dict().keys() == m.parameters().keys()
    sd = {k: v + 1 for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    assert all(np.array_equal(m.parameters()[k], sd[k]) for k in sd)
    bad = dict(sd)
    bad["fc.weight"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"state_dict\['fc.weight'\]: expected shape \(11, 8\)"):
        m.load_state_dict(bad)
    assert np.array_equal(m.parameters()["embed.weight"], sd["embed.weight"])  # unchanged
    with pytest.raises(ValueError, match="missing keys"):
        m.load_state_dict({k: v for k, v in sd.items() if k != "fc.bias"})
    plain = bptt.Sequential(bptt.GRU(3, 4), bptt.Linear(4, 1))
    assert next(iter(plain.parameters())) == "0.weight_ih_l0" and "1.weight" in plain.parameters()
    with pytest.raises(ValueError, match="in_features"):
        bptt.Sequential(bptt.GRU(3, 4), bptt.Linear(5, 1))
    with pytest.raises(ValueError, match="embedding_dim"):
        bptt.Sequential(bptt.Embedding(4, 2), bptt.GRU(3, 4))
    with pytest.raises(ValueError, match="expected \\[Embedding\\] -> RNN/LSTM/GRU"):
        bptt.Sequential(bptt.Linear(4, 1), bptt.GRU(3, 4))
    with pytest.raises(TypeError, match="must be a bptt Embedding"):
        bptt.Sequential(bptt.GRU(3, 4), "fc")


def test_sequential_gradients_by_finite_differences(rng):
    m = _char_model()
    ids = rng.integers(0, 11, (7, 3))
    y = rng.integers(0, 11, (7, 3))
    _, grads = m.loss(ids, y, bptt.cross_entropy_loss)
    assert grads.keys() == m.parameters().keys()
    for key, idx in (("embed.weight", (int(ids[2, 1]), 3)), ("rnn.weight_hh_l1", (5, 2)),
                     ("fc.weight", (4, 7)), ("rnn.bias_ih_l0", (1,))):
        p = m.parameters()[key]
        old = p[idx]
        p[idx] = old + 1e-6
        up = m.loss(ids, y, bptt.cross_entropy_loss)[0]
        p[idx] = old - 1e-6
        down = m.loss(ids, y, bptt.cross_entropy_loss)[0]
        p[idx] = old
        assert abs((up - down) / 2e-6 - grads[key][idx]) < 1e-7, key


@pytest.mark.parametrize("batch_first", [False, True])
def test_last_step_loss_is_the_hand_built_one(batch_first, rng):
    m = bptt.Sequential(rnn=bptt.GRU(2, 5, batch_first=batch_first, dtype=np.float64, seed=0),
                        fc=bptt.Linear(5, 1, dtype=np.float64, seed=1))
    x = rng.standard_normal((4, 9, 2) if batch_first else (9, 4, 2))
    y = rng.standard_normal((4, 1))
    loss, grads = m.loss(x, y, last_step=True)
    out, _, cache = m.forward(x)
    last = out[:, -1] if batch_first else out[-1]
    want, d_last = bptt.mse_loss(last, y)
    d_out = np.zeros_like(out)
    if batch_first:
        d_out[:, -1] = d_last
    else:
        d_out[-1] = d_last
    hand = m.backward(cache, d_out)
    assert loss == want
    for k in grads:
        np.testing.assert_allclose(grads[k], hand[k], rtol=1e-13, atol=1e-15)
    lengths = np.array([9, 3, 5, 1])
    loss_l, _ = m.loss(x, y, last_step=True, lengths=lengths)
    out_l, _ = m(x, lengths=lengths)
    picked = out_l[np.arange(4), lengths - 1] if batch_first else out_l[lengths - 1, np.arange(4)]
    assert loss_l == pytest.approx(bptt.mse_loss(picked, y)[0], rel=1e-13)


def test_sequential_loads_a_torch_module_and_matches_it(rng):
    torch = pytest.importorskip("torch")

    class CharModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(11, 6)
            self.rnn = torch.nn.LSTM(6, 8, num_layers=2)
            self.fc = torch.nn.Linear(8, 11)

        def forward(self, x):
            return self.fc(self.rnn(self.embed(x))[0])

    torch.manual_seed(0)
    tm = CharModel().double()
    m = _char_model()
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    ids = rng.integers(0, 11, (7, 3))
    y = rng.integers(0, 11, (7, 3))
    t_out = tm(torch.tensor(ids))
    t_loss = torch.nn.functional.cross_entropy(t_out.reshape(-1, 11), torch.tensor(y).ravel())
    t_loss.backward()
    out, _ = m(ids)
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-12, atol=1e-13)
    loss, grads = m.loss(ids, y, bptt.cross_entropy_loss)
    assert abs(loss - t_loss.item()) < 1e-12
    for k, p in tm.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=1e-10, atol=1e-13, err_msg=k)


def test_tbptt_with_an_embedding_is_the_full_gradient_for_one_chunk(rng):
    m = _char_model()
    ids = rng.integers(0, 11, (12, 3))
    y = rng.integers(0, 11, (12, 3))
    tr = bptt.TBPTT(m, loss_fn=bptt.cross_entropy_loss, k1=12)
    res = tr.train(ids, y, keep_grads=True)
    loss, grads = m.loss(ids, y, bptt.cross_entropy_loss)
    assert res.losses[0] == pytest.approx(loss, rel=1e-13)
    assert res.grads is not None and res.grads[0] is not None
    assert res.grads[0].keys() == grads.keys()
    for k in grads:
        np.testing.assert_allclose(res.grads[0][k], grads[k], rtol=1e-11, atol=1e-14)


def test_tbptt_embedding_gradient_with_resets_by_finite_differences(rng):
    m = _char_model()
    ids = rng.integers(0, 11, (10, 3))
    y = rng.integers(0, 11, (10, 3))
    resets = np.zeros((10, 3), dtype=bool)
    resets[4, 0] = resets[7, 2] = True
    tr = bptt.TBPTT(m, loss_fn=bptt.cross_entropy_loss, k1=10)
    g = tr.train(ids, y, resets=resets, keep_grads=True).grads[0]
    w = m.parameters()["embed.weight"]
    for idx in ((int(ids[5, 0]), 1), (int(ids[8, 2]), 4)):
        old = w[idx]
        w[idx] = old + 1e-6
        up = tr.train(ids, y, resets=resets).losses[0]
        w[idx] = old - 1e-6
        down = tr.train(ids, y, resets=resets).losses[0]
        w[idx] = old
        assert abs((up - down) / 2e-6 - g["embed.weight"][idx]) < 1e-7


def test_train_stream_equals_train_over_the_whole_array(rng):
    def make():
        m = _char_model()
        return m, bptt.optim.Adam(m.parameters(), lr=1e-2)

    ids = rng.integers(0, 11, (24, 2))
    y = rng.integers(0, 11, (24, 2))
    m1, o1 = make()
    whole = bptt.TBPTT(m1, loss_fn=bptt.cross_entropy_loss, optimizer=o1, k1=4).train(ids, y)
    m2, o2 = make()
    seen = []
    pieces = ((ids[a:a + 8], y[a:a + 8]) for a in range(0, 24, 8))
    streamed = bptt.TBPTT(m2, loss_fn=bptt.cross_entropy_loss, optimizer=o2, k1=4).train_stream(
        pieces, callback=lambda j, n, loss, norm: seen.append((j, n)))
    np.testing.assert_array_equal(whole.chunk_ends, streamed.chunk_ends)
    np.testing.assert_allclose(whole.losses, streamed.losses, rtol=1e-12)
    for k, v in m1.parameters().items():
        np.testing.assert_allclose(m2.parameters()[k], v, rtol=1e-12, atol=1e-14)
    assert seen == [(j, -1) for j in range(6)]
    with pytest.raises(ValueError, match="k2: train_stream needs k2 == k1"):
        bptt.TBPTT(m2, loss_fn=bptt.cross_entropy_loss, k1=4, k2=8).train_stream(iter([]))
    with pytest.raises(ValueError, match=r"pieces\[1\]: x: expected token ids"):
        bptt.TBPTT(m2, loss_fn=bptt.cross_entropy_loss, k1=4).train_stream(
            [(ids[:4], y[:4]), (ids[:4] + 20, y[:4])])


def test_tbptt_blames_a_batch_first_x(rng):
    model = bptt.LSTM(2, 4, batch_first=True)
    tr = bptt.TBPTT(model, bptt.Linear(4, 1), k1=10)
    x = rng.standard_normal((3, 40, 2)).astype(np.float32)     # batch-first by mistake
    y = rng.standard_normal((40, 3, 1)).astype(np.float32)
    with pytest.raises(ValueError, match=r"^x: expected time-major streams.*batch_first"):
        tr.train(x, y)
    tr2 = bptt.TBPTT(bptt.LSTM(2, 4), bptt.Linear(4, 1), k1=10)
    with pytest.raises(ValueError, match=r"^y: expected leading shape \(3, 40\).*batch-first"):
        tr2.train(x, y)
    with pytest.raises(ValueError, match="readout: the Sequential model has its own layers"):
        bptt.TBPTT(_char_model(), bptt.Linear(8, 1), k1=4)
