"""One model from its layers: ``Sequential`` of [``Embedding``] → recurrent → [``Linear``].

Arrays in, arrays out, as everywhere in bptt; what it adds is one set of names. Its
``parameters()``, ``state_dict()`` and the gradient dict of ``backward`` all use PyTorch's
dotted names ``"<layer>.<parameter>"``: ``Sequential(rnn=..., fc=...)`` has
``rnn.weight_ih_l0``, ..., ``fc.weight``, ``fc.bias``, so the ``state_dict`` of a torch
``nn.Module`` with attributes ``rnn`` and ``fc`` (converted with ``.numpy()``) loads as it
is, and the gradients go straight into an optimizer built over ``parameters()``. Layers
given without names are named ``"0"``, ``"1"``, ... as in ``torch.nn.Sequential``.

``loss(x, y)`` runs forward, the loss and backward in one call; ``last_step=True`` puts
the loss on the last time step only (a many-to-one model: a forecaster, a classifier).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ._base import Identity
from ._checks import check_shape, flag, floating
from ._models import _Recurrent
from .embedding import Embedding, EmbeddingCache
from .nn import Linear, LinearCache, mse_loss

__all__ = ["Sequential", "SequentialCache"]

LossFn = Callable[[np.ndarray, Any, Any], "tuple[float, np.ndarray]"]


class SequentialCache:
    """What ``Sequential.forward`` keeps for ``backward``: the layers' own caches and the
    identity of the model that made it."""

    __slots__ = ("embedding", "owner", "readout", "tape")

    def __init__(self, embedding: EmbeddingCache | None, tape: Any,
                 readout: LinearCache | None, owner: Identity) -> None:
        self.embedding = embedding
        self.tape = tape
        self.readout = readout
        self.owner = owner


class Sequential:
    """[``Embedding``] → ``RNN``/``LSTM``/``GRU`` → [``Linear``], run in that order.

    ``Sequential(layer, ...)`` (names ``"0"``, ``"1"``, ...) or ``Sequential(name=layer,
    ...)`` (names of your choice, in the order given). Sizes and dtypes must chain:
    ``embedding_dim == input_size`` and ``in_features == D * hidden_size``.

    Attributes ``embedding``, ``rnn`` and ``readout`` are the layers (None when absent);
    ``names`` maps those roles to the layers' names.
    """

    def __init__(self, *layers: Any, **named: Any) -> None:
        if layers and named:
            raise TypeError("layers: give them all by position or all by name, not both")
        items = list(named.items()) if named else [(str(i), v) for i, v in enumerate(layers)]
        if not items:
            raise ValueError("layers: expected [Embedding] -> RNN/LSTM/GRU -> [Linear], got "
                             "no layer")
        for name, _ in items:
            if "." in name:
                raise ValueError(f"layers: a name cannot contain '.', got {name!r}")
        kinds = [self._kind(name, layer) for name, layer in items]
        order = "".join(kinds)
        if order not in ("r", "er", "rl", "erl"):
            got = " -> ".join(type(layer).__name__ for _, layer in items)
            raise ValueError(f"layers: expected [Embedding] -> RNN/LSTM/GRU -> [Linear], "
                             f"got {got}")
        by_kind = {k: item for k, item in zip(kinds, items)}
        self.names: dict[str, str] = {}
        self.embedding: Embedding | None = None
        self.readout: Linear | None = None
        name, self.rnn = by_kind["r"]
        self.names["rnn"] = name
        rnn = self.rnn
        if "e" in by_kind:
            ename, emb = by_kind["e"]
            if emb.embedding_dim != rnn.input_size:
                raise ValueError(f"layers: {ename}.embedding_dim ({emb.embedding_dim}) must "
                                 f"equal {name}.input_size ({rnn.input_size})")
            self._same_dtype(ename, emb.dtype, name, rnn.dtype)
            self.embedding = emb
            self.names["embedding"] = ename
        if "l" in by_kind:
            lname, lin = by_kind["l"]
            width = rnn.num_directions * rnn.hidden_size
            if lin.in_features != width:
                raise ValueError(f"layers: {lname}.in_features ({lin.in_features}) must equal "
                                 f"the width of {name}'s output ({width})")
            self._same_dtype(lname, lin.dtype, name, rnn.dtype)
            self.readout = lin
            self.names["readout"] = lname
        self._layers = items
        self._identity = Identity()

    @staticmethod
    def _kind(name: str, layer: Any) -> str:
        if isinstance(layer, Embedding):
            return "e"
        if isinstance(layer, _Recurrent):
            return "r"
        if isinstance(layer, Linear):
            return "l"
        raise TypeError(f"layers: {name!r} must be a bptt Embedding, RNN/LSTM/GRU or Linear, "
                        f"got {type(layer).__name__}")

    @staticmethod
    def _same_dtype(a: str, da: np.dtype, b: str, db: np.dtype) -> None:
        if da != db:
            raise ValueError(f"layers: {a} has dtype {da}, {b} has {db}; give all layers "
                             f"one dtype")

    @property
    def dtype(self) -> np.dtype:
        """The dtype of every layer's parameters."""
        dt: np.dtype = self.rnn.dtype
        return dt

    @property
    def batch_first(self) -> bool:
        """Whether ``x`` and ``out`` are (B, T, ...) (the recurrent layer's setting)."""
        return bool(self.rnn.batch_first)

    # ------------------------------------------------------------------ parameters
    def parameters(self) -> dict[str, np.ndarray]:
        """The live parameter arrays under dotted names ``"<layer>.<parameter>"`` (build an
        optimizer over this dict; it is updated in place)."""
        return {f"{name}.{k}": v for name, layer in self._layers for k, v in layer.params.items()}

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Same as ``parameters()``."""
        return self.parameters()

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters under the names of ``parameters()`` (PyTorch's)."""
        return {k: v.copy() for k, v in self.parameters().items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Loads exactly the keys of ``state_dict()`` (e.g. a torch module's ``state_dict``
        converted with ``.numpy()``); everything is checked before anything changes."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: expected a dict of arrays with the keys of "
                            f"state_dict(), got {type(state_dict).__name__}")
        own = self.parameters()
        missing = [k for k in own if k not in state_dict]
        unknown = sorted((k for k in state_dict if k not in own), key=repr)
        if missing or unknown:
            raise ValueError(f"state_dict: missing keys {missing}, unknown keys {unknown}")
        for k, cur in own.items():
            check_shape(f"state_dict[{k!r}]", floating(f"state_dict[{k!r}]", state_dict[k]),
                        cur.shape)
        for name, layer in self._layers:
            layer.load_state_dict({k: state_dict[f"{name}.{k}"] for k in layer.params})

    # ------------------------------------------------------------------ running
    def __call__(self, x: Any, state: Any = None, lengths: Any = None) -> tuple[np.ndarray, Any]:
        """Inference: ``out, state = model(x, state=None, lengths=None)``; keeps nothing."""
        h = self.embedding(x) if self.embedding is not None else x
        out, st = self.rnn(h, state, lengths)
        return (self.readout(out) if self.readout is not None else out), st

    def forward(self, x: Any, state: Any = None, lengths: Any = None, *,
                memory_budget: int | None = None) -> tuple[np.ndarray, Any, SequentialCache]:
        """Training forward: ``out, state, cache``. ``x`` is (T, B) token ids with an
        embedding (floats (T, B, input_size) without), (B, T[, ...]) with ``batch_first``;
        ``out`` is the last layer's output; ``cache`` feeds ``backward``."""
        e_cache = None
        h: Any = x
        if self.embedding is not None:
            h, e_cache = self.embedding.forward(x)
        out, st, tape = self.rnn.forward(h, state, lengths, memory_budget=memory_budget)
        r_cache = None
        if self.readout is not None:
            out, r_cache = self.readout.forward(out)
        return out, st, SequentialCache(e_cache, tape, r_cache, self._identity)

    def backward(self, cache: SequentialCache, d_out: Any,
                 d_state: Any = None) -> dict[str, np.ndarray]:
        """``grads = model.backward(cache, d_out, d_state=None)``: one dict with the keys
        of ``parameters()``; ``d_out`` is ``dL/dout`` (shape of ``out``), ``d_state``
        ``dL/d(final state)`` (None for zeros)."""
        if not isinstance(cache, SequentialCache):
            raise TypeError(f"cache: expected the SequentialCache returned by forward(), got "
                            f"{type(cache).__name__}")
        if cache.owner is not self._identity:
            raise ValueError("cache: it was made by another Sequential model")
        grads: dict[str, np.ndarray] = {}
        d_h = d_out
        if self.readout is not None and cache.readout is not None:
            d_h, g_ro = self.readout.backward(cache.readout, d_out)
            grads.update({f"{self.names['readout']}.{k}": v for k, v in g_ro.items()})
        g = self.rnn.backward(cache.tape, d_h, d_state)
        grads.update({f"{self.names['rnn']}.{k}": v for k, v in g.params.items()})
        if self.embedding is not None and cache.embedding is not None:
            g_e = self.embedding.backward(cache.embedding, g.dx)
            grads.update({f"{self.names['embedding']}.{k}": v for k, v in g_e.items()})
        return {k: grads[k] for k in self.parameters()}

    def loss(self, x: Any, y: Any, loss_fn: LossFn = mse_loss, *, last_step: bool = False,
             mask: Any = None, state: Any = None,
             lengths: Any = None) -> tuple[float, dict[str, np.ndarray]]:
        """``loss, grads = model.loss(x, y)``: forward, ``loss_fn`` and backward in one call.

        ``last_step=False``: the loss is ``loss_fn(out, y, mask)`` over every step (``y``
        with ``out``'s leading axes). ``last_step=True``: ``loss_fn(out at the last step,
        y, mask)`` with ``y`` (B, ...) and ``mask`` (B,) (each sequence's last step is
        ``lengths[b] - 1`` when ``lengths`` is given). ``grads`` has the keys of
        ``parameters()``, ready for ``optimizer.step(grads)``.
        """
        last = flag("last_step", last_step)
        out, _, cache = self.forward(x, state, lengths)
        t_axis = 1 if self.batch_first else 0
        n_steps, batch = out.shape[t_axis], out.shape[1 - t_axis]
        if last:
            if lengths is None:
                t_idx = np.full(batch, n_steps - 1)
            else:
                t_idx = np.asarray(lengths, dtype=np.int64) - 1
            b_idx = np.arange(batch)
            sel = (b_idx, t_idx) if self.batch_first else (t_idx, b_idx)
            pred = out[sel]
        else:
            pred = out
        loss, d_pred = loss_fn(pred, y, mask)
        d_pred = floating("loss_fn's d_pred", d_pred)
        if d_pred.shape != pred.shape:
            raise ValueError(f"loss_fn: expected d_pred of the shape of pred {pred.shape}, "
                             f"got {d_pred.shape}")
        if last:
            d_out = np.zeros_like(out)
            d_out[sel] = d_pred
        else:
            d_out = d_pred
        return float(loss), self.backward(cache, d_out)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={layer!r}" for name, layer in self._layers)
        return f"Sequential({inner})"
