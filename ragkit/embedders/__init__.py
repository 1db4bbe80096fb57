"""The Embedder seam: texts in, unit float32 vectors out; plus the factory that names them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray


@runtime_checkable
class Embedder(Protocol):
    """Turns a batch of texts into a float32 matrix of unit vectors, one row per text."""

    name: str  # provider: "local", "openai", or a user's own
    model: str  # model identifier as the provider knows it
    dimension: int  # length of every vector
    max_tokens: int  # most tokens one input may hold, special tokens excluded

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of each text in this embedder's own tokenizer (never an undercount)."""
        ...

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed texts as an (n, dimension) float32 array of unit-length rows."""
        ...
