"""ragkit: semantic search and cited answers over your documents, offline by default.

``open()`` returns an ``Index`` an app keeps open for many queries. The verbs: ``index(path)``,
``search(query)``, ``ask(question)``, ``status()``, ``doctor()``,
``evaluate(dataset)``, and the async forms ``aindex``, ``asearch``, ``aask`` (bounded by
``max_concurrency``). The parts, for apps that assemble their own pipeline, are importable from
here too. Names load on first use, so ``import ragkit`` (and ``ragkit --help``) stays instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragkit.aio import aask, aindex, asearch
    from ragkit.answerer import Answer, Citation
    from ragkit.chat import ChatModel, ChatResult, OpenAIChatModel
    from ragkit.chunking import Chunk, chunk_document
    from ragkit.config import Settings
    from ragkit.conversation import Turn
    from ragkit.documents import Document, Skipped, discover, load_document
    from ragkit.embedders import Embedder, make_embedder
    from ragkit.embedders.local import LocalEmbedder
    from ragkit.embedders.openai import OpenAIEmbedder
    from ragkit.errors import (
        ChatError,
        ConfigError,
        EmbeddingError,
        IndexLockedError,
        IndexMismatchError,
        IndexNotFoundError,
        LoadError,
        QueryError,
        QuotaError,
        RagkitError,
    )
    from ragkit.evaluation import EvalReport
    from ragkit.library import Index, open
    from ragkit.maintenance import IndexStatus, doctor, evaluate, status
    from ragkit.pipeline import IndexReport, ask, index, search
    from ragkit.retriever import Hit
    from ragkit.store import HealthReport, Problem, Store

__version__ = "0.1.0"

_EXPORTS = {
    "index": "ragkit.pipeline",
    "search": "ragkit.pipeline",
    "ask": "ragkit.pipeline",
    "status": "ragkit.maintenance",
    "doctor": "ragkit.maintenance",
    "evaluate": "ragkit.maintenance",
    "open": "ragkit.library",
    "Index": "ragkit.library",
    "EvalReport": "ragkit.evaluation",
    "aask": "ragkit.aio",
    "asearch": "ragkit.aio",
    "aindex": "ragkit.aio",
    "Turn": "ragkit.conversation",
    "IndexReport": "ragkit.pipeline",
    "IndexStatus": "ragkit.maintenance",
    "Settings": "ragkit.config",
    "Document": "ragkit.documents",
    "Skipped": "ragkit.documents",
    "discover": "ragkit.documents",
    "load_document": "ragkit.documents",
    "Chunk": "ragkit.chunking",
    "chunk_document": "ragkit.chunking",
    "Embedder": "ragkit.embedders",
    "make_embedder": "ragkit.embedders",
    "LocalEmbedder": "ragkit.embedders.local",
    "OpenAIEmbedder": "ragkit.embedders.openai",
    "Store": "ragkit.store",
    "HealthReport": "ragkit.store",
    "Problem": "ragkit.store",
    "Hit": "ragkit.retriever",
    "Answer": "ragkit.answerer",
    "Citation": "ragkit.answerer",
    "ChatModel": "ragkit.chat",
    "ChatResult": "ragkit.chat",
    "OpenAIChatModel": "ragkit.chat",
    "RagkitError": "ragkit.errors",
    "ConfigError": "ragkit.errors",
    "QueryError": "ragkit.errors",
    "IndexNotFoundError": "ragkit.errors",
    "IndexMismatchError": "ragkit.errors",
    "IndexLockedError": "ragkit.errors",
    "LoadError": "ragkit.errors",
    "EmbeddingError": "ragkit.errors",
    "QuotaError": "ragkit.errors",
    "ChatError": "ragkit.errors",
}

__all__ = [
    "Answer",
    "ChatError",
    "ChatModel",
    "ChatResult",
    "Chunk",
    "Citation",
    "ConfigError",
    "Document",
    "Embedder",
    "EmbeddingError",
    "EvalReport",
    "HealthReport",
    "Hit",
    "Index",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexReport",
    "IndexStatus",
    "LoadError",
    "LocalEmbedder",
    "OpenAIChatModel",
    "OpenAIEmbedder",
    "Problem",
    "QueryError",
    "QuotaError",
    "RagkitError",
    "Settings",
    "Skipped",
    "Store",
    "Turn",
    "aask",
    "aindex",
    "asearch",
    "ask",
    "chunk_document",
    "discover",
    "doctor",
    "evaluate",
    "index",
    "load_document",
    "make_embedder",
    "open",
    "search",
    "status",
    "__version__",
]


if not TYPE_CHECKING:
    # Hidden from type checkers, which then see only the names imported above: a misspelt
    # ``ragkit.serach`` is a type error, not Any.
    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'ragkit' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return __all__
