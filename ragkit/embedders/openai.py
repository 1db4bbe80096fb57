"""OpenAI embeddings (``text-embedding-3-small`` by default) through the ``openai`` SDK."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ragkit.openai_client import explain, make_client

MODEL_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
MAX_INPUTS = 2048  # inputs per request (API limit)
MAX_REQUEST_TOKENS = 300_000  # tokens per request (API limit)
MAX_INPUT_TOKENS = 8191  # tokens per input (API limit)


def _tiktoken_counter() -> Any:
    try:
        import tiktoken

        return tiktoken.get_encoding("cl100k_base")
    except Exception:  # noqa: BLE001 - any failure to load means "count conservatively"
        return None


class OpenAIEmbedder:
    """Embeds through an OpenAI-compatible ``/embeddings`` endpoint, in token-packed batches."""

    name = "openai"
    max_tokens = MAX_INPUT_TOKENS

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        client: Any = None,
    ) -> None:
        self.model = model
        self.client = client or make_client(api_key=api_key, base_url=base_url)
        self._encoding = _tiktoken_counter()
        self._dimension = MODEL_DIMENSIONS.get(model)

    @property
    def dimension(self) -> int:
        """Vector length: known for OpenAI's models, asked of the server for others."""
        if self._dimension is None:
            self._dimension = int(self._request(["dimension probe"]).shape[1])
        return self._dimension

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """cl100k_base counts when tiktoken's encoding loads; else UTF-8 bytes (never fewer)."""
        if self._encoding is not None:
            return [len(t) for t in self._encoding.encode_ordinary_batch(list(texts))]
        return [len(t.encode("utf-8")) for t in texts]

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Unit vectors for ``texts``, packed into requests within the API's limits."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        counts = self.count_tokens(texts)
        out: list[NDArray[np.float32]] = []
        start = 0
        while start < len(texts):
            end, budget = start, 0
            while (
                end < len(texts)
                and end - start < MAX_INPUTS
                and budget + counts[end] <= MAX_REQUEST_TOKENS
            ):
                budget += counts[end]
                end += 1
            end = max(end, start + 1)
            out.append(self._request(texts[start:end]))
            start = end
        return np.vstack(out)

    def _request(self, texts: Sequence[str]) -> NDArray[np.float32]:
        import openai

        try:
            response = self.client.embeddings.create(
                model=self.model, input=[t if t.strip() else " " for t in texts]
            )
        except openai.OpenAIError as exc:
            raise explain(exc, what="embedding") from exc
        data = sorted(response.data, key=lambda d: d.index)
        vectors = np.asarray([d.embedding for d in data], dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit: NDArray[np.float32] = vectors / np.maximum(norms, 1e-12)
        return unit
