"""Every setting, its default, and where it comes from: keyword argument, then RAGKIT_* variable.

One name per setting: the field ``index_dir`` is the keyword ``index_dir``, the flag
``--index-dir`` and the variable ``RAGKIT_INDEX_DIR``. Only ``pipeline`` and ``cli`` read this
module; components take explicit arguments.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from ragkit.errors import ConfigError

if TYPE_CHECKING:
    from ragkit.store.address import Address

DEFAULT_OPENAI_EMBEDDING_MODEL = "text-embedding-3-small"
DEFAULT_CHAT_MODEL = "gpt-4o-mini"


# Settings also read from the variables their providers' own tools use (RAGKIT_* comes first).
_FALLBACK_ENV = {
    "openai_api_key": "OPENAI_API_KEY",
    "openai_base_url": "OPENAI_BASE_URL",
    "azure_endpoint": "AZURE_OPENAI_ENDPOINT",
    "azure_api_key": "AZURE_OPENAI_API_KEY",
    "azure_api_version": "OPENAI_API_VERSION",
}


class Overrides(TypedDict, total=False):
    """Settings as keyword arguments (``ragkit.search(q, k=3)``): a misspelt name is a type error.

    One entry per :class:`Settings` field, same name and type, ``None`` meaning "not given"; a
    test keeps the two in step.
    """

    index: str | None
    index_dir: Path | str | None
    store: str | None
    embedder: str | None
    k: int | None
    min_score: float | None
    mode: str | None
    mmr: bool | None
    mmr_lambda: float | None
    path: str | None
    file_type: str | None
    modified_after: str | None
    modified_before: str | None
    heading: str | None
    abstain_below: float | None
    chunk_tokens: int | None
    chunk_overlap: int | None
    max_file_mb: float | None
    max_chars_per_file: int | None
    max_chars_per_page: int | None
    max_seconds_per_file: float | None
    follow_symlinks: bool | None
    include: tuple[str, ...] | None
    exclude: tuple[str, ...] | None
    skip_generated: bool | None
    llm: bool | None
    chat_model: str | None
    context_tokens: int | None
    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    seed: int | None
    stop: tuple[str, ...] | None
    reasoning_effort: str | None
    chat_history_tokens: int | None
    max_concurrency: int | None
    openai_api_key: str | None
    openai_base_url: str | None
    openai_concurrency: int | None
    openai_timeout: float | None
    openai_max_retries: int | None
    azure_endpoint: str | None
    azure_api_key: str | None
    azure_api_version: str | None
    azure_deployment: str | None
    batch_size: int | None
    host: str | None
    port: int | None
    token: str | None
    cors_origin: tuple[str, ...] | None
    max_k: int | None
    max_request_bytes: int | None
    vector_index: str | None


@dataclass(frozen=True)
class Settings:
    """All of ragkit's settings; build with ``Settings.load(**overrides)``."""

    index: str = "default"  # name of the index under index_dir
    index_dir: Path = Path("indexes")  # where named indexes live
    # a postgresql:// URL: indexes live in that database (one schema each), not in index_dir
    store: str | None = None
    # "local", "openai" or "openai:MODEL"; None = the index's own, or openai when a key is set
    embedder: str | None = None
    k: int = 5  # passages retrieved per query
    min_score: float | None = None  # drop hits below this cosine score (in every mode)
    # "hybrid" (dense + BM25, rank-fused), "dense" (cosine) or "keyword" (BM25). Hybrid is the
    # default because it wins on BEIR SciFact: nDCG@10 0.717 vs 0.645 dense, 0.682 keyword.
    mode: str = "hybrid"
    mmr: bool = False  # re-rank for diversity with maximal marginal relevance
    mmr_lambda: float = 0.5  # MMR trade-off: 1 = relevance only, 0 = diversity only
    path: str | None = None  # glob on document paths, e.g. "docs/*.md"
    file_type: str | None = None  # comma-separated kinds (pdf, markdown) or suffixes (.md)
    modified_after: str | None = None  # ISO date: only documents modified on or after it
    modified_before: str | None = None  # ISO date: only documents modified before it
    heading: str | None = None  # only chunks whose heading path contains this
    # abstain when the best cosine score is below this; None = the embedder's calibrated default
    abstain_below: float | None = None
    chunk_tokens: int = 240  # most tokens per chunk (capped at the embedder's input limit)
    chunk_overlap: int = 40  # tokens shared by neighbouring chunks
    max_file_mb: float = 50.0  # files larger than this are skipped
    # Caps on what one file may cost; a file that reaches one is reported failed, with the cap.
    max_chars_per_file: int = 10_000_000  # extracted characters (about 4,000 book pages)
    max_chars_per_page: int = 200_000  # extracted characters on one PDF page
    max_seconds_per_file: float = 120.0  # reading one PDF (the only format that expands)
    follow_symlinks: bool = False  # read links whose target lies outside the indexed folder
    # gitignore-style globs; None = those stored in the index (or none), () = clear them
    include: tuple[str, ...] | None = None  # index only files matching one of these
    exclude: tuple[str, ...] | None = None  # never index files or folders matching these
    skip_generated: bool = True  # leave out minified/generated assets and Sphinx _sources/
    llm: bool | None = None  # None = use the chat model when OpenAI is configured
    chat_model: str = DEFAULT_CHAT_MODEL
    # Tokens the chat model can take in (prompt + answer); None = known for OpenAI's families,
    # else a conservative 8,192 (see ragkit/context.py). Sources that do not fit are left out.
    context_tokens: int | None = None
    # Chat request parameters; None leaves each to ragkit's choice for the model family
    # (temperature 0 for classic models; reasoning models get no sampling parameters at all).
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None  # sent as max_completion_tokens to reasoning models
    seed: int | None = None
    stop: tuple[str, ...] | None = None  # RAGKIT_STOP: one sequence, or a JSON list of up to 4
    reasoning_effort: str | None = None  # reasoning models only: minimal, low, medium, high
    chat_history_tokens: int = 2000  # earlier turns kept by `ragkit chat` (oldest dropped first)
    max_concurrency: int = 4  # async API: most calls running at once (aask, asearch, aindex)
    # Keys are kept out of repr() so that a logged Settings never shows one.
    openai_api_key: str | None = field(default=None, repr=False)  # also read from OPENAI_API_KEY
    openai_base_url: str | None = None  # also read from OPENAI_BASE_URL
    openai_concurrency: int = 4  # embedding requests in flight at once
    openai_timeout: float = 60.0  # seconds before a request is abandoned (and retried)
    openai_max_retries: int = 8  # retries of one request after transient errors
    azure_endpoint: str | None = None  # also AZURE_OPENAI_ENDPOINT; selects Azure OpenAI
    azure_api_key: str | None = field(default=None, repr=False)  # also AZURE_OPENAI_API_KEY
    azure_api_version: str | None = None  # also OPENAI_API_VERSION
    azure_deployment: str | None = None  # embedding deployment name [default: the model name]
    batch_size: int = 32  # texts per local embedding batch
    # `ragkit serve` and `ragkit mcp --http`: binding beyond 127.0.0.1 requires a token.
    host: str = "127.0.0.1"  # address the HTTP servers listen on
    port: int = 8000  # port the HTTP servers listen on
    token: str | None = field(default=None, repr=False)  # Bearer token the HTTP servers require
    cors_origin: tuple[str, ...] | None = None  # browser origins allowed to call the HTTP API
    max_k: int = 50  # most passages one API or MCP request may ask for
    max_request_bytes: int = 65536  # largest request body the HTTP API accepts
    # FAISS index kind: "auto" (exact below 50k vectors, IVF above), "flat" (always exact), "ivf"
    vector_index: str = "auto"

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from keyword overrides, then RAGKIT_* (or OPENAI_*) variables, then defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if overrides.get(f.name) is not None:
                values[f.name] = overrides[f.name]
                continue
            raw = env.get("RAGKIT_" + f.name.upper())
            if raw is None and f.name in _FALLBACK_ENV:
                raw = env.get(_FALLBACK_ENV[f.name])
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, f.type)
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)

    def __post_init__(self) -> None:
        # Every Settings is checked, however it was made: load(), replace() or the constructor.
        self.validate()

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (None leaves a setting as it is), checked again."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def index_path(self) -> Path:
        """The folder holding this index's files."""
        return Path(self.index_dir) / self.index

    @property
    def address(self) -> Address:
        """Where this index lives: its folder, or its schema in the ``store`` database."""
        from ragkit.store.address import Address

        return Address(self.index, self.index_path, self.store)

    @property
    def openai_configured(self) -> bool:
        """True when an OpenAI key, an OpenAI-compatible base URL or an Azure endpoint is set."""
        return bool(self.openai_api_key or self.openai_base_url or self.azure_endpoint)

    def validate(self) -> None:
        """Refuse settings that cannot work, with a message naming the fix."""
        if self.k < 1:
            raise ConfigError(f"k must be at least 1 (got {self.k}); pass -k 5 or similar")
        if not self.index or "/" in self.index or "\\" in self.index or self.index.startswith("."):
            raise ConfigError(
                f"bad index name {self.index!r}: use a plain name such as 'docs'"
                " (use --index-dir to choose the folder)"
            )
        from ragkit.store.address import check_store_url

        check_store_url(self.store)
        if self.chunk_tokens < 16:
            raise ConfigError(f"chunk_tokens must be at least 16 (got {self.chunk_tokens})")
        if not 0 <= self.chunk_overlap < self.chunk_tokens // 2:
            raise ConfigError(
                "chunk_overlap must be between 0 and half of chunk_tokens"
                f" (got {self.chunk_overlap})"
            )
        if self.mode not in ("dense", "keyword", "hybrid"):
            raise ConfigError(f"unknown mode {self.mode!r}: use dense, keyword or hybrid")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ConfigError(f"mmr_lambda must be between 0 and 1 (got {self.mmr_lambda})")
        if self.openai_concurrency < 1:
            raise ConfigError(
                f"openai_concurrency must be at least 1 (got {self.openai_concurrency})"
            )
        if self.openai_timeout <= 0:
            raise ConfigError(
                f"openai_timeout must be positive seconds (got {self.openai_timeout})"
            )
        if self.openai_max_retries < 0:
            raise ConfigError(
                f"openai_max_retries must be 0 or more (got {self.openai_max_retries})"
            )
        if self.max_file_mb <= 0:
            raise ConfigError(f"max_file_mb must be positive (got {self.max_file_mb})")
        for cap in ("max_chars_per_file", "max_chars_per_page", "max_seconds_per_file"):
            if getattr(self, cap) <= 0:
                raise ConfigError(f"{cap} must be positive (got {getattr(self, cap)})")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise ConfigError(f"temperature must be between 0 and 2 (got {self.temperature})")
        if self.top_p is not None and not 0 <= self.top_p <= 1:
            raise ConfigError(f"top_p must be between 0 and 1 (got {self.top_p})")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1 (got {self.max_tokens})")
        if self.stop is not None and (len(self.stop) > 4 or not all(self.stop)):
            raise ConfigError(f"stop takes 1 to 4 non-empty sequences (got {list(self.stop)})")
        if self.chat_history_tokens < 0:
            raise ConfigError(
                f"chat_history_tokens must be 0 or more (got {self.chat_history_tokens})"
            )
        if self.context_tokens is not None and self.context_tokens < 256:
            raise ConfigError(
                f"context_tokens must be at least 256 (got {self.context_tokens}); it is the"
                " chat model's context window, e.g. 8192"
            )
        if self.max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be at least 1 (got {self.max_concurrency})")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be between 1 and 65535 (got {self.port})")
        if self.max_k < 1:
            raise ConfigError(f"max_k must be at least 1 (got {self.max_k})")
        if self.max_request_bytes < 1024:
            raise ConfigError(
                f"max_request_bytes must be at least 1024 (got {self.max_request_bytes})"
            )
        if self.vector_index not in ("auto", "flat", "ivf"):
            raise ConfigError(f"unknown vector_index {self.vector_index!r}: use auto, flat or ivf")


def _parse(name: str, raw: str, annotation: Any) -> Any:
    text = str(annotation)
    try:
        if text.startswith("bool"):
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if text.startswith("int"):
            return int(raw)
        if text.startswith("float"):
            return float(raw)
        if text.startswith("Path"):
            return Path(raw)
        if text.startswith("tuple"):
            # A JSON list for several values, else the whole string is the one value.
            if raw.lstrip().startswith("["):
                items = json.loads(raw)
                if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                    raise ValueError(raw)
                return tuple(items)
            return (raw,)
    except ValueError:
        raise ConfigError(
            f"RAGKIT_{name.upper()}={raw!r} is not a valid {text.split(' | ')[0]}"
        ) from None
    return raw
