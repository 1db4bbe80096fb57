"""Fakes for the seams: a bag-of-words embedder that still ranks texts sharing words together."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ragkit.embedders import register_embedder

_WORD = re.compile(r"\w+")


class BagOfWordsEmbedder:
    """Hashed bag of lower-cased words: texts that share words get high cosine similarity."""

    name = "bow"
    model = "hash-256"
    dimension = 256
    max_tokens = 120

    def __init__(self) -> None:
        self.calls: list[list[str]] = []  # every embed() batch, for asserting what was embedded

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(_WORD.findall(t)) + len(re.findall(r"[^\w\s]", t)) for t in texts]

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                bucket = int.from_bytes(digest[:4], "little") % self.dimension
                out[row, bucket] += 1.0 if digest[4] & 1 else -1.0
            norm = np.linalg.norm(out[row])
            if norm == 0:
                out[row, 0] = 1.0
            else:
                out[row] /= norm
        return out

    @property
    def embedded_texts(self) -> list[str]:
        return [t for batch in self.calls for t in batch]


# The most recently built fake, so a test can see what the pipeline embedded through it.
instances: list[BagOfWordsEmbedder] = []


def _factory(model: str | None, options: Mapping[str, Any]) -> BagOfWordsEmbedder:
    embedder = BagOfWordsEmbedder()
    instances.append(embedder)
    return embedder


register_embedder("bow", _factory)
