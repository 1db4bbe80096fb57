"""The whole flow in one place: files -> documents -> chunks -> vectors -> index -> hits -> answer.

``index(path)`` brings an index in line with a folder: new and changed files are loaded,
chunked and embedded batch by batch (each batch committed as it completes), deleted files are
removed, renamed files re-pointed, and the FAISS file is rebuilt from SQLite. ``search`` and
``ask`` always use the embedder recorded in the index.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragkit.answerer import DEFAULT_ABSTAIN_BELOW, Answer, extractive_answer, llm_answer
from ragkit.chunking import chunk_document
from ragkit.config import Settings
from ragkit.documents import Document, Skipped, discover, load_document, relative_path
from ragkit.embedders import (
    Embedder,
    embed_batches,
    make_embedder,
    parse_spec,
    price_per_million_tokens,
)
from ragkit.errors import ConfigError, IndexMismatchError, LoadError, RagkitError
from ragkit.retriever import Hit, check_query
from ragkit.retriever import search as dense_search
from ragkit.store import Store, text_hash

log = logging.getLogger(__name__)

# progress(stage, done, total): stage is "scan", "load" or "embed"
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class IndexReport:
    """What one ``index`` run did."""

    index: str
    embedder: str
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    moved: tuple[tuple[str, str], ...] = ()
    unchanged: int = 0
    skipped: tuple[Skipped, ...] = ()  # deliberately not indexed (unsupported, binary, empty...)
    failed: tuple[Skipped, ...] = ()  # should have been indexed and could not be
    warnings: tuple[tuple[str, str], ...] = ()  # (path, warning) for files indexed with caveats
    chunks_embedded: int = 0
    chunks_reused: int = 0
    documents: int = 0  # in the index after the run
    chunks: int = 0
    tokens_embedded: int = 0
    seconds: float = 0.0
    dry_run: bool = False  # True: nothing was embedded or written; counts are what a run would do
    cost_usd: float | None = None  # tokens_embedded at the model's list price; None if unknown

    @property
    def ok(self) -> bool:
        """True when every file was indexed or deliberately skipped."""
        return not self.failed


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


def _settings(settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    return Settings.load(**overrides) if settings is None else settings.replace(**overrides)


def openai_credentials(settings: Settings) -> dict[str, Any]:
    """The keyword arguments ``make_client`` needs to reach OpenAI, a compatible server or Azure."""
    return {
        "api_key": settings.openai_api_key,
        "base_url": settings.openai_base_url,
        "azure_endpoint": settings.azure_endpoint,
        "azure_api_key": settings.azure_api_key,
        "azure_api_version": settings.azure_api_version,
    }


def _embedder(spec: str, settings: Settings, *, count_only: bool = False) -> Embedder:
    return make_embedder(
        spec,
        **openai_credentials(settings),
        azure_deployment=settings.azure_deployment,
        concurrency=settings.openai_concurrency,
        timeout=settings.openai_timeout,
        max_retries=settings.openai_max_retries,
        batch_size=settings.batch_size,
        count_only=count_only,  # a dry run counts tokens: no credentials needed
    )


def _cost(embedder: Embedder, tokens: int) -> float | None:
    price = price_per_million_tokens(embedder)
    return None if price is None else tokens * price / 1e6


def open_index(settings: Settings, *, count_only: bool = False) -> tuple[Store, Embedder]:
    """The index named by ``settings`` and the embedder it was built with."""
    store = Store.open(settings.index_path)
    m = store.manifest
    if settings.embedder:
        provider, model = parse_spec(settings.embedder)
        if provider != m.embedder or (model and model != m.model):
            store.close()
            raise IndexMismatchError(
                f"index {settings.index} was built with {m.embedder_spec}, not {settings.embedder}:"
                f" drop --embedder (and RAGKIT_EMBEDDER) to use {m.embedder_spec},"
                " or build a new index with --index NEW_NAME"
            )
    try:
        return store, _embedder(m.embedder_spec, settings, count_only=count_only)
    except BaseException:
        store.close()
        raise


def index(
    path: str | Path,
    settings: Settings | None = None,
    *,
    progress: Progress | None = None,
    wait: bool = False,
    dry_run: bool = False,
    **overrides: Any,
) -> IndexReport:
    """Bring the index in line with the files under ``path``; returns what changed.

    With ``dry_run`` nothing is embedded or written (no index is created): the report says what
    a run would embed, how many tokens that is, and what it would cost.
    """
    settings = _settings(settings, overrides)
    started = time.perf_counter()
    root = Path(path)
    if not root.exists():
        raise RagkitError(f"no such file or folder: {path}")
    source = str(root.resolve())
    note = progress or (lambda stage, done, total: None)
    if dry_run:
        return _estimate(root, source, settings, started)

    if Store.exists(settings.index_path):
        store, embedder = open_index(settings)
    else:
        spec = settings.embedder or ("openai" if settings.openai_configured else "local")
        embedder = _embedder(spec, settings)
        store = Store.create(
            settings.index_path,
            embedder=embedder.name,
            model=embedder.model,
            dimension=embedder.dimension,
        )
    with store:
        store.lock(wait=wait)
        if store.manifest.source and store.manifest.source != source:
            raise ConfigError(
                f"index {settings.index} mirrors {store.manifest.source}, not {source}:"
                f" re-index that folder, or pass --index NEW_NAME for this one"
            )
        store.set_source(source)

        # 1. Which files are there, and which changed since the last run.
        note("scan", 0, 0)
        files, skipped = discover(
            root,
            exclude=[Path(settings.index_dir)],
            max_file_bytes=int(settings.max_file_mb * 1024 * 1024),
        )
        known = store.documents()
        present = {relative_path(f, root): f for f in files}
        max_tokens = min(settings.chunk_tokens, embedder.max_tokens)
        added: list[str] = []
        changed: list[str] = []
        moved: list[tuple[str, str]] = []
        failed: list[Skipped] = []
        warnings: list[tuple[str, str]] = []
        unchanged = reused = 0
        loaded: list[tuple[Document, bool]] = []  # (document, is new)

        for done, (rel, file) in enumerate(present.items(), start=1):
            note("load", done, len(present))
            row = known.get(rel)
            try:
                stat = file.stat()
                if row and row.status == "indexed" and (row.size, row.mtime) == (
                    stat.st_size,
                    stat.st_mtime,
                ):
                    unchanged += 1  # fast path: size and mtime unchanged
                    continue
                doc = load_document(file, root)
            except LoadError as exc:
                (failed if exc.failed else skipped).append(Skipped(rel, exc.reason, exc.failed))
                continue
            except OSError as exc:
                failed.append(Skipped(rel, f"unreadable: {exc.strerror or exc}", True))
                continue
            warnings.extend((rel, w) for w in doc.warnings)
            if row and row.sha256 == doc.sha256:
                # Same bytes (touched, or interrupted before all its vectors were stored: those
                # still missing are embedded below).
                store.touch_document(rel, mtime=doc.mtime)
                unchanged += 1
                continue
            loaded.append((doc, row is None))

        # 2. Renames: a new path whose bytes match a document whose path is gone.
        gone = {p: r for p, r in known.items() if p not in present}
        by_hash = {r.sha256: p for p, r in gone.items() if r.status == "indexed"}
        for doc, is_new in list(loaded):
            old = by_hash.pop(doc.sha256, None) if is_new else None
            if old is not None:
                store.move_document(old, doc.path, mtime=doc.mtime)
                moved.append((old, doc.path))
                del gone[old]
                loaded.remove((doc, is_new))
        removed = sorted(gone)
        store.remove_documents(removed)

        # 3. Chunk what is new or changed; unchanged chunk texts keep their vectors.
        for doc, is_new in loaded:
            chunks = chunk_document(
                doc, embedder.count_tokens, max_tokens=max_tokens, overlap=settings.chunk_overlap
            )
            _, reused_here = store.put_document(
                path=doc.path,
                sha256=doc.sha256,
                size=doc.size,
                mtime=doc.mtime,
                kind=doc.kind,
                pages=len(doc.pages),
                warnings=doc.warnings,
                chunks=chunks,
            )
            reused += reused_here
            (added if is_new else changed).append(doc.path)

        # 4. Embed every chunk still without a vector, committing batch by batch.
        pending = store.pending()
        embedded = tokens = 0
        note("embed", 0, len(pending))
        texts = [t for _, t, _ in pending]
        for positions, vectors, used in embed_batches(
            embedder, texts, max(settings.batch_size * 4, 64)
        ):
            # The provider's own count when it reports one (what is billed), else ours.
            batch_tokens = used if used is not None else sum(pending[int(p)][2] for p in positions)
            store.set_vectors([pending[int(p)][0] for p in positions], vectors, batch_tokens)
            embedded += len(positions)
            tokens += batch_tokens
            note("embed", embedded, len(pending))

        # 5. Derive the FAISS file from SQLite when anything changed (or it disagrees).
        if embedded or removed or loaded or moved or not store.vectors_agree():
            store.save_vectors()
        counts = store.counts()
        return IndexReport(
            index=str(settings.index_path),
            embedder=store.manifest.embedder_spec,
            added=tuple(added),
            changed=tuple(changed),
            removed=tuple(removed),
            moved=tuple(moved),
            unchanged=unchanged,
            skipped=tuple(skipped),
            failed=tuple(failed),
            warnings=tuple(warnings),
            chunks_embedded=embedded,
            chunks_reused=reused,
            documents=counts["documents"],
            chunks=counts["chunks"],
            tokens_embedded=tokens,
            seconds=time.perf_counter() - started,
            cost_usd=_cost(embedder, tokens),
        )


def _estimate(root: Path, source: str, settings: Settings, started: float) -> IndexReport:
    """What ``index`` would do (``--dry-run``): load and chunk as it would, embed and write nothing."""
    store: Store | None = None
    if Store.exists(settings.index_path):
        store, embedder = open_index(settings, count_only=True)
    else:
        spec = settings.embedder or ("openai" if settings.openai_configured else "local")
        embedder = _embedder(spec, settings, count_only=True)
    try:
        if store is not None and store.manifest.source and store.manifest.source != source:
            raise ConfigError(
                f"index {settings.index} mirrors {store.manifest.source}, not {source}:"
                f" re-index that folder, or pass --index NEW_NAME for this one"
            )
        files, skipped = discover(
            root,
            exclude=[Path(settings.index_dir)],
            max_file_bytes=int(settings.max_file_mb * 1024 * 1024),
        )
        known = store.documents() if store is not None else {}
        present = {relative_path(f, root): f for f in files}
        by_hash = {r.sha256: p for p, r in known.items() if p not in present and r.status == "indexed"}
        max_tokens = min(settings.chunk_tokens, embedder.max_tokens)
        added: list[str] = []
        changed: list[str] = []
        moved: list[tuple[str, str]] = []
        failed: list[Skipped] = []
        warnings: list[tuple[str, str]] = []
        unchanged = to_embed = reused = tokens = chunks = 0
        kept: set[str] = set()  # unchanged documents: a run embeds their chunks still missing vectors
        for rel, file in present.items():
            row = known.get(rel)
            try:
                stat = file.stat()
                if row and row.status == "indexed" and (row.size, row.mtime) == (
                    stat.st_size,
                    stat.st_mtime,
                ):
                    unchanged += 1
                    chunks += row.chunks
                    continue
                doc = load_document(file, root)
            except LoadError as exc:
                (failed if exc.failed else skipped).append(Skipped(rel, exc.reason, exc.failed))
                continue
            except OSError as exc:
                failed.append(Skipped(rel, f"unreadable: {exc.strerror or exc}", True))
                continue
            warnings.extend((rel, w) for w in doc.warnings)
            if row and row.sha256 == doc.sha256:
                unchanged += 1
                chunks += row.chunks
                kept.add(rel)
                continue
            old = by_hash.pop(doc.sha256, None) if row is None else None
            if old is not None:  # a rename keeps its vectors
                moved.append((old, rel))
                chunks += known[old].chunks
                continue
            pieces = chunk_document(
                doc, embedder.count_tokens, max_tokens=max_tokens, overlap=settings.chunk_overlap
            )
            # The embedding cache: chunk texts that already have a vector in this index.
            hashes = [text_hash(c.text) for c in pieces]
            cached = Store._cached_vectors(store.db.conn, hashes) if store is not None else {}
            for piece, h in zip(pieces, hashes):
                if h in cached:
                    reused += 1
                else:
                    to_embed += 1
                    tokens += piece.tokens
            chunks += len(pieces)
            (added if row is None else changed).append(rel)
        if store is not None and kept:
            waiting = store.pending()
            where = store.chunks([i for i, _, _ in waiting])
            for i, _, n in waiting:
                if where[i].path in kept:
                    to_embed += 1
                    tokens += n
    finally:
        if store is not None:
            store.close()
    gone = {old for old, _ in moved}
    return IndexReport(
        index=str(settings.index_path),
        embedder=f"{embedder.name}:{embedder.model}",
        added=tuple(added),
        changed=tuple(changed),
        removed=tuple(sorted(p for p in known if p not in present and p not in gone)),
        moved=tuple(moved),
        unchanged=unchanged,
        skipped=tuple(skipped),
        failed=tuple(failed),
        warnings=tuple(warnings),
        chunks_embedded=to_embed,
        chunks_reused=reused,
        documents=unchanged + len(added) + len(changed) + len(moved),
        chunks=chunks,
        tokens_embedded=tokens,
        seconds=time.perf_counter() - started,
        dry_run=True,
        cost_usd=_cost(embedder, tokens),
    )


def search(query: str, settings: Settings | None = None, **overrides: Any) -> list[Hit]:
    """The passages most similar to ``query``, best first."""
    settings = _settings(settings, overrides)
    query = check_query(query)
    store, embedder = open_index(settings)
    with store:
        return dense_search(
            store,
            embedder,
            query,
            k=settings.k,
            min_score=settings.min_score,
            path_glob=settings.path,
        )


def ask(
    question: str,
    settings: Settings | None = None,
    *,
    on_text: Callable[[str], None] | None = None,
    **overrides: Any,
) -> Answer:
    """Answer ``question`` from the index, with numbered citations.

    Uses the chat model when OpenAI (or a compatible server) is configured, otherwise quotes the
    most relevant sentences. ``on_text`` receives the LLM answer as it streams.
    """
    settings = _settings(settings, overrides)
    question = check_query(question)
    store, embedder = open_index(settings)
    with store:
        hits = dense_search(
            store, embedder, question, k=settings.k, min_score=settings.min_score, path_glob=settings.path
        )
    threshold = settings.abstain_below
    if threshold is None:
        threshold = DEFAULT_ABSTAIN_BELOW.get(embedder.name, 0.3)
    use_llm = settings.openai_configured if settings.llm is None else settings.llm
    if not use_llm:
        return extractive_answer(question, hits, embedder, abstain_below=threshold)
    from ragkit.chat import OpenAIChatModel
    from ragkit.openai_client import make_client

    # One client builder for OpenAI, compatible servers and Azure (where the model names a deployment).
    chat = OpenAIChatModel(settings.chat_model, client=make_client(**openai_credentials(settings)))
    return llm_answer(question, hits, chat, abstain_below=threshold, stream=on_text)


def status(settings: Settings | None = None, **overrides: Any) -> IndexStatus:
    """Where the index is, what built it, what it holds, and whether FAISS agrees with SQLite."""
    settings = _settings(settings, overrides)
    with Store.open(settings.index_path) as store:
        m = store.manifest
        counts = store.counts()
        return IndexStatus(
            index=settings.index,
            path=str(settings.index_path),
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
        )
