"""What the models share: named parameter arrays, and the identity that ties what
``forward`` keeps to its model.

``Parametrized`` is the base of every model (``RNN``, ``LSTM``, ``GRU``, ``Linear``): one
``params`` / ``state_dict`` / ``load_state_dict`` for all of them.

Every model makes one ``Identity`` when it is built. What its ``forward`` keeps for
``backward`` (a ``Tape``, a ``LinearCache``) holds that identity, and ``backward`` accepts
it only with the very same object (``is``), so a tape handed to another model is a clear
error, never wrong numbers. The identity is a fresh object rather than ``id(model)`` or a
counter: it cannot be reused while a tape holds it (an ``id`` can, once its model is
gone), and a deep copy of a model gets a new one (a copied counter would be shared).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._checks import check_parameter_memory, check_shape, floating, rng_from_seed


class Identity:
    """The identity of one model; compared with ``is`` only."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<bptt model identity 0x{id(self):x}>"


class Parametrized:
    """A model with named parameter arrays and an ``Identity``.

    ``shapes`` gives the names (in ``state_dict()`` order) and shapes; every parameter is
    drawn from ``U(-bound, bound)`` in that order with ``np.random.default_rng(seed)``,
    as PyTorch initialises them.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], bound: float, dtype: np.dtype,
                 seed: int | None) -> None:
        self._identity = Identity()
        rng = rng_from_seed(seed)
        sizes = {name: math.prod(shape) for name, shape in shapes.items()}
        check_parameter_memory(type(self).__name__, sum(sizes.values()), len(shapes), dtype)
        self._params: dict[str, np.ndarray] = {}
        for name, shape in shapes.items():
            try:
                self._params[name] = rng.uniform(-bound, bound, size=shape).astype(dtype)
            except MemoryError as exc:
                raise MemoryError(f"cannot allocate {sizes[name] * dtype.itemsize} bytes for "
                                  f"the parameter {name} {shape} of {type(self).__name__} "
                                  f"({exc})") from None

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The live parameter arrays, by name. Update them in place (``p[...] = ...``,
        ``p -= lr * g``; optimizers do); rebinding a key of this dict has no effect."""
        return dict(self._params)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, under the names of ``params`` (the recurrent models:
        PyTorch's names, shapes and gate order)."""
        return {k: v.copy() for k, v in self._params.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Copies ``state_dict`` into the parameters. Keys must be exactly those of
        ``state_dict()``; arrays must have the same shapes (any float dtype; converted).
        PyTorch tensors converted with ``.numpy()`` load as they are. On an error nothing
        is changed."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict: expected a dict of arrays (name -> ndarray) with "
                            f"the keys of state_dict(), got {type(state_dict).__name__}")
        keys = set(state_dict)
        missing = [k for k in self._params if k not in keys]
        unknown = sorted(keys - set(self._params), key=repr)
        if missing or unknown:
            raise ValueError(f"state_dict: missing keys {missing}, unknown keys {unknown}")
        new = {}
        for name, cur in self._params.items():
            arr = floating(name, state_dict[name])
            check_shape(name, arr, cur.shape)
            new[name] = arr
        for name, arr in new.items():
            np.copyto(self._params[name], arr, casting="unsafe")
