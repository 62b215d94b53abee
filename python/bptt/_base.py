"""What the models share: the identity that ties what ``forward`` keeps to its model.

Every model (``RNN``, ``LSTM``, ``GRU``, ``Linear``) makes one ``Identity`` when it is
built. What its ``forward`` keeps for ``backward`` (a ``Tape``, a ``LinearCache``) holds
that identity, and ``backward`` accepts it only with the very same object (``is``), so a
tape handed to another model is a clear error, never wrong numbers. The identity is a
fresh object rather than ``id(model)`` or a counter: it cannot be reused while a tape
holds it (an ``id`` can, once its model is gone), and a deep copy of a model gets a new
one (a copied counter would be shared).
"""

from __future__ import annotations


class Identity:
    """The identity of one model; compared with ``is`` only."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<bptt model identity 0x{id(self):x}>"
