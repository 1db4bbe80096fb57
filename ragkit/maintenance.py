"""What an index is and whether it is sound: ``status``, ``doctor``, ``evaluate``, ``copy``."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragkit.components import (
    embedder_for,
    resolve_settings,
)
from ragkit.config import Overrides, Settings
from ragkit.errors import ConfigError, IndexMismatchError
from ragkit.evaluation import PROTOCOLS, EvalReport, load_beir
from ragkit.evaluation import evaluate as run_evaluation
from ragkit.retriever import MODES, check_mode
from ragkit.store import HealthReport, Problem
from ragkit.store.copy import CopyReport
from ragkit.store.protocol import IndexStore

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ragkit.pipeline import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexStatus:
    """An index's location, embedder, contents and health."""

    index: str
    path: str
    embedder: str
    dimension: int
    source: str
    documents: int
    chunks: int
    vectors: int
    pending_documents: int
    size_bytes: int
    created: str
    updated: str
    tokens_embedded: int
    faiss_generation: int
    faiss_agrees: bool
    extra: dict[str, Any] = field(default_factory=dict)
    vector_index: str = "flat"  # the FAISS file's kind: flat (exact) or ivf (approximate)


def status(settings: Settings | None = None, **overrides: Unpack[Overrides]) -> IndexStatus:
    """Where the index is, what built it, what it holds, and whether FAISS agrees with SQLite."""
    settings = resolve_settings(settings, overrides)
    with settings.address.open() as store:
        return index_status(store, settings)


def index_status(store: IndexStore, settings: Settings) -> IndexStatus:
    """The status of an open store (its manifest and counts as committed now)."""
    store.refresh_manifest()
    m = store.manifest
    counts = store.counts()
    return IndexStatus(
        index=settings.index,
        path=str(settings.address),
        embedder=m.embedder_spec,
        dimension=m.dimension,
        source=m.source,
        documents=counts["documents"],
        chunks=counts["chunks"],
        vectors=counts["vectors"],
        pending_documents=counts["pending_documents"],
        size_bytes=store.size_on_disk(),
        created=m.created,
        updated=m.updated,
        tokens_embedded=m.tokens_embedded,
        faiss_generation=m.faiss_generation,
        faiss_agrees=store.vectors_agree(),
        vector_index=m.vector_index,
    )


def evaluate(
    dataset: str | Path,
    settings: Settings | None = None,
    *,
    protocols: Sequence[str] = PROTOCOLS,
    modes: Sequence[str] = MODES,
    split: str = "test",
    progress: Progress | None = None,
    **overrides: Unpack[Overrides],
) -> EvalReport:
    """Score retrieval on a BEIR-format dataset: nDCG@10, Recall@10/100, MRR@10 per mode.

    The corpus is indexed once per protocol under ``index_dir`` as ``eval-<dataset>-…``
    and reused by later runs. Only each query's text is given to the retriever.
    """
    settings = resolve_settings(settings, overrides)
    for mode in modes:
        check_mode(mode)
    data = load_beir(dataset, split)
    spec = settings.embedder or "local"
    embedder = embedder_for(spec, settings)
    return run_evaluation(
        data,
        embedder,
        Path(settings.index_dir),
        protocols=protocols,
        modes=modes,
        chunk_tokens=settings.chunk_tokens,
        chunk_overlap=settings.chunk_overlap,
        batch_size=max(settings.batch_size * 2, 64),
        progress=progress,
        store=settings.store,
    )


def copy(
    to: str | Path,
    settings: Settings | None = None,
    *,
    to_index: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    **overrides: Unpack[Overrides],
) -> CopyReport:
    """Copy the index to ``to`` (a postgresql:// URL, or a folder of indexes) without re-embedding.

    The copy is named ``to_index`` (default: the same name); an index already there is refused.
    """
    from ragkit.store.address import SCHEMES
    from ragkit.store.copy import copy_index

    settings = resolve_settings(settings, overrides)
    target = str(to)
    url = target.split("://", 1)[0] in SCHEMES
    # A new Settings is checked as it is built: a bad target name or URL is refused here.
    there = dataclasses.replace(
        settings,
        index=to_index or settings.index,
        store=target if url else None,
        index_dir=settings.index_dir if url else Path(target),
    )
    dest = there.address
    if str(dest) == str(settings.address):
        raise ConfigError(f"the copy would replace its source {dest}: give --to-index NAME")
    with settings.address.open() as source:
        return copy_index(source, str(settings.address), dest, progress=progress)


def doctor(
    settings: Settings | None = None,
    *,
    repair: bool = False,
    wait: bool = False,
    **overrides: Unpack[Overrides],
) -> HealthReport:
    """Check that the index's parts agree (FAISS, SQLite, keyword index, manifest); ``repair`` fixes
    what can be fixed without the source files. Embedding what is missing is ``index``'s job."""
    settings = resolve_settings(settings, overrides)
    try:
        store = settings.address.open()
    except IndexMismatchError as exc:  # a manifest that names no embedder, or another schema
        return HealthReport(
            index=str(settings.address),
            problems=(Problem("manifest", str(exc), "build a new index", repairable=False),),
        )
    with store:
        if not repair:
            return store.check()
        store.lock(wait=wait)
        return store.repair()
