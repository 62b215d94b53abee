"""Token embeddings: ``Embedding(num_embeddings, embedding_dim, padding_idx=None)``.

A lookup table ``weight`` (num_embeddings, embedding_dim) under PyTorch's name, shape and
initialisation (``N(0, 1)``, the ``padding_idx`` row zero). ``forward`` takes integer token
ids of any shape (``(T, B)`` for a sequence) and returns their rows, shape ``ids.shape +
(embedding_dim,)``; ``backward`` adds the output gradient's rows into the rows of their
tokens in the Rust core (no one-hot matrix is ever made), leaving the ``padding_idx``
row's gradient zero.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from . import _core
from ._base import Identity, Parametrized
from ._checks import (
    as_array,
    check_parameter_memory,
    floating,
    model_dtype,
    positive_int,
    rng_from_seed,
)

__all__ = ["Embedding", "EmbeddingCache"]


class EmbeddingCache:
    """What ``Embedding.forward`` keeps for ``backward``: the token ids (flat int64), their
    shape and the identity of the layer that made it."""

    __slots__ = ("ids", "owner", "shape")

    def __init__(self, ids: np.ndarray, shape: tuple[int, ...], owner: Identity) -> None:
        self.ids = ids
        self.shape = shape
        self.owner = owner


class Embedding(Parametrized):
    """A table of ``num_embeddings`` vectors of size ``embedding_dim``, indexed by integer
    token ids (``torch.nn.Embedding``).

    ``Embedding(num_embeddings, embedding_dim, padding_idx=None, *, dtype=np.float32,
    seed=None)``. ``weight`` is drawn from ``N(0, 1)``; ``padding_idx`` (negative counts
    from the end, as in PyTorch) names a row that starts at zero and gets no gradient.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 padding_idx: int | None = None, *, dtype: Any = np.float32,
                 seed: int | None = None) -> None:
        self.num_embeddings = positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = positive_int("embedding_dim", embedding_dim)
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, numbers.Integral):
                raise TypeError(f"padding_idx: expected an int or None, got "
                                f"{type(padding_idx).__name__}")
            n = self.num_embeddings
            if not -n <= padding_idx < n:
                raise ValueError(f"padding_idx: expected a value in [{-n}, {n}), got "
                                 f"{padding_idx}")
            padding_idx = int(padding_idx) % n
        self.padding_idx: int | None = padding_idx
        self.dtype = model_dtype(dtype)
        check_parameter_memory(
            f"Embedding(num_embeddings={self.num_embeddings}, "
            f"embedding_dim={self.embedding_dim})",
            self.num_embeddings * self.embedding_dim, 1, self.dtype)
        self._identity = Identity()
        rng = rng_from_seed(seed)
        w = rng.standard_normal((self.num_embeddings, self.embedding_dim)).astype(self.dtype)
        if self.padding_idx is not None:
            w[self.padding_idx] = 0
        self._params: dict[str, np.ndarray] = {"weight": w}

    def _ids(self, x: Any) -> np.ndarray:
        ids = as_array("x", x, "an integer array of token ids")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"x: expected an integer array of token ids in "
                            f"[0, {self.num_embeddings}), got dtype {ids.dtype}")
        if ids.size:
            lo, hi = int(ids.min()), int(ids.max())
            bad = lo if lo < 0 else hi if hi >= self.num_embeddings else None
            if bad is not None:
                raise ValueError(f"x: expected token ids in [0, {self.num_embeddings}), got "
                                 f"{bad}")
        return ids

    def __call__(self, x: Any) -> np.ndarray:
        """The rows of the tokens ``x`` (no cache kept)."""
        return self.forward(x)[0]

    def forward(self, x: Any) -> tuple[np.ndarray, EmbeddingCache]:
        """``out, cache = emb.forward(x)``: ``out`` has shape ``x.shape +
        (embedding_dim,)``; ``cache`` feeds ``backward``."""
        ids = self._ids(x)
        flat = np.ascontiguousarray(ids.ravel(), dtype=np.int64)
        out = np.take(self._params["weight"], flat, axis=0)
        return (out.reshape(ids.shape + (self.embedding_dim,)),
                EmbeddingCache(flat, ids.shape, self._identity))

    def backward(self, cache: EmbeddingCache, d_out: Any) -> dict[str, np.ndarray]:
        """``grads = emb.backward(cache, d_out)``: ``{"weight": dL/dweight}``, each row the
        sum of the rows of ``d_out`` (shape of ``out``) at that token (the ``padding_idx``
        row zero)."""
        if not isinstance(cache, EmbeddingCache):
            raise TypeError(f"cache: expected the EmbeddingCache returned by forward(), got "
                            f"{type(cache).__name__}")
        if cache.owner is not self._identity:
            raise ValueError("cache: it was made by another Embedding layer")
        d = floating("d_out", d_out, self.dtype)
        want = cache.shape + (self.embedding_dim,)
        if d.shape != want:
            raise ValueError(f"d_out: expected shape {want}, got {d.shape}")
        d2 = np.ascontiguousarray(d).reshape(-1, self.embedding_dim)
        g = _core.embedding_backward(cache.ids, d2, self.num_embeddings, self.padding_idx)
        return {"weight": g}

    def __repr__(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return (f"Embedding({self.num_embeddings}, {self.embedding_dim}{pad}, "
                f"dtype={self.dtype.name})")
