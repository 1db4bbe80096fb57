"""The Embedder seam: texts in, unit float32 vectors out; plus the factory that names them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray


@runtime_checkable
class Embedder(Protocol):
    """Turns a batch of texts into a float32 matrix of unit vectors, one row per text."""

    # Read-only members: plain class attributes satisfy them as well as properties do.
    @property
    def name(self) -> str:
        """Provider: "local", "openai", or a user's own."""
        ...

    @property
    def model(self) -> str:
        """Model identifier as the provider knows it."""
        ...

    @property
    def dimension(self) -> int:
        """Length of every vector."""
        ...

    @property
    def max_tokens(self) -> int:
        """Most tokens one input may hold, special tokens excluded."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of each text in this embedder's own tokenizer (never an undercount)."""
        ...

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed texts as an (n, dimension) float32 array of unit-length rows."""
        ...


# provider name -> factory(model or None, options) -> Embedder. "local" and "openai" are built in;
# apps and tests add their own with register_embedder.
EmbedderFactory = Callable[[str | None, Mapping[str, Any]], Embedder]
_FACTORIES: dict[str, EmbedderFactory] = {}


def register_embedder(provider: str, factory: EmbedderFactory) -> None:
    """Make ``--embedder PROVIDER[:MODEL]`` build embedders with ``factory(model, options)``."""
    _FACTORIES[provider.lower()] = factory


def _local(model: str | None, options: Mapping[str, Any]) -> Embedder:
    from ragkit.embedders.local import LocalEmbedder
    from ragkit.embedders.local_onnx import OnnxLocalEmbedder
    from ragkit.errors import ConfigError

    batch_size = int(options.get("batch_size", 32))
    # Each model name is one set of vectors: the float32 model (default) or the int8 graph.
    if model in (None, LocalEmbedder.model):
        return LocalEmbedder(batch_size=batch_size)
    if model in (OnnxLocalEmbedder.alias, OnnxLocalEmbedder.model):
        return OnnxLocalEmbedder(batch_size=batch_size)
    raise ConfigError(
        f"unknown local model {model!r}: use local:{LocalEmbedder.model} (float32, the default)"
        f" or local:{OnnxLocalEmbedder.alias} (int8, needs `pip install 'ragkit[onnx]'`)"
    )


# Local model names an index may record whose vectors this ragkit no longer computes, and the
# spec that names their successor: the int8 graph's first recipe was recorded without "-rN",
# the later ones as "-rN" (local_onnx.RECIPE_VERSION).
_RETIRED = {
    ("local", "all-MiniLM-L6-v2-int8"): "local:all-MiniLM-L6-v2-int8",
    ("local", "all-MiniLM-L6-v2-int8-r2"): "local:all-MiniLM-L6-v2-int8",
    ("local", "all-MiniLM-L6-v2-int8-r3"): "local:all-MiniLM-L6-v2-int8",
}


def retired_model(provider: str, model: str) -> str | None:
    """The spec replacing a recorded model whose vectors ragkit no longer computes, else None."""
    return _RETIRED.get((provider, model))


def _canonical_local(model: str | None) -> str | None:
    """The name an index records for a local model the user named (the int8 alias gets its
    recipe); other names as given."""
    if model is not None and model.startswith("all-MiniLM-L6-v2-int8"):
        from ragkit.embedders.local_onnx import OnnxLocalEmbedder

        if model == OnnxLocalEmbedder.alias:
            return OnnxLocalEmbedder.model
    return model


def _openai(model: str | None, options: Mapping[str, Any]) -> Embedder:
    from ragkit.embedders.openai import OpenAIEmbedder

    known = (
        "api_key",
        "base_url",
        "azure_endpoint",
        "azure_api_key",
        "azure_api_version",
        "azure_deployment",
        "concurrency",
        "timeout",
        "max_retries",
        "max_retry_delay",
        "count_only",
        "purpose",
    )
    return OpenAIEmbedder(
        model or "text-embedding-3-small",
        **{k: options[k] for k in known if options.get(k) is not None},
    )


register_embedder("local", _local)
register_embedder("openai", _openai)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``provider[:model]`` into its parts (the model as an index records it); unknown
    providers are refused."""
    from ragkit.errors import ConfigError

    provider, _, model = spec.strip().partition(":")
    provider = provider.lower()
    if provider not in _FACTORIES:
        raise ConfigError(
            f"unknown embedder {spec!r}: use 'local' (offline default) or 'openai[:MODEL]'"
        )
    if provider == "local":
        return provider, _canonical_local(model or None)
    return provider, (model or None)


def make_embedder(spec: str, **options: Any) -> Embedder:
    """The embedder a spec names (``local``, ``openai``, ``openai:MODEL``), built by its factory."""
    provider, model = parse_spec(spec)
    return _FACTORIES[provider](model, options)


def embed_batches(
    embedder: Embedder, texts: Sequence[str], batch_size: int
) -> Iterator[tuple[NDArray[np.intp], NDArray[np.float32], int | None]]:
    """Yield (positions, vectors, tokens used) batch by batch, to store each as it completes.

    An embedder with its own ``embed_batches`` (concurrent, token-packed requests) is used as
    is; it may yield (positions, vectors) or (positions, vectors, tokens used). Tokens used is
    None when the embedder does not report it.
    """
    own = getattr(embedder, "embed_batches", None)
    if own is not None:
        batches = own(texts)
        try:
            for positions, vectors, *rest in batches:
                yield positions, vectors, (int(rest[0]) if rest and rest[0] is not None else None)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # a caller that stops early stops the embedder's requests too
        return
    for start in range(0, len(texts), batch_size):
        part = texts[start : start + batch_size]
        yield np.arange(start, start + len(part)), embedder.embed(part), None


def price_per_million_tokens(embedder: Embedder) -> float | None:
    """US dollars per million tokens embedded: 0 for the local model, None when unknown."""
    if embedder.name == "local":
        return 0.0
    price = getattr(embedder, "price_per_million_tokens", None)
    return float(price) if price is not None else None
