"""The whole flow in one place: files -> documents -> chunks -> vectors -> index -> hits -> answer.

``index(path)`` brings an index in line with a folder: new and changed files are loaded,
chunked and committed one by one, then embedded batch by batch (each batch committed as it
completes); deleted files are removed, renamed files re-pointed, and the FAISS file is rebuilt
from SQLite. ``search`` and ``ask`` always use the embedder recorded in the index; ``doctor``
checks (and repairs) the index's files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragkit.answerer import DEFAULT_ABSTAIN_BELOW, Answer, extractive_answer, llm_answer
from ragkit.chat import ChatModel, OpenAIChatModel
from ragkit.chunking import chunk_document
from ragkit.config import Settings
from ragkit.conversation import Turn, fit_history, followup_query, merge_hits
from ragkit.documents import Skipped, discover, load_document, relative_path
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
from ragkit.store import HealthReport, Problem, Store, cache_key

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


def _under(path: str, folder: str) -> bool:
    """True when ``path`` is ``folder`` or inside it (relative POSIX paths; "" is the root)."""
    return folder in ("", ".") or path == folder or path.startswith(folder + "/")


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

        # 1. Which files are there. A failure to look (unlistable folder, broken link) is not a
        # deletion: what is indexed under it stays.
        note("scan", 0, 0)
        files, passed_over = discover(
            root,
            exclude=[Path(settings.index_dir)],
            max_file_bytes=int(settings.max_file_mb * 1024 * 1024),
        )
        skipped = [s for s in passed_over if not s.failed]
        failed = [s for s in passed_over if s.failed]
        known = store.documents()
        present = {relative_path(f, root): f for f in files}
        kept = {p for p in known if any(_under(p, s.path) for s in failed)}
        gone = {p: r for p, r in known.items() if p not in present and p not in kept}
        # Renames: a new path whose bytes match a document whose path is gone.
        by_hash = {r.sha256: p for p, r in gone.items()}
        max_tokens = min(settings.chunk_tokens, embedder.max_tokens)
        added: list[str] = []
        changed: list[str] = []
        moved: list[tuple[str, str]] = []
        warnings: list[tuple[str, str]] = []
        unchanged = reused = 0

        # 2. Load what is new or changed (size and mtime say which; the content hash decides),
        # committing each document with its chunks; unchanged chunk texts keep their vectors.
        for done, (rel, file) in enumerate(present.items(), start=1):
            note("load", done, len(present))
            row = known.get(rel)
            try:
                stat = file.stat()
                size_mtime = (stat.st_size, stat.st_mtime)
                if row and row.status == "indexed" and (row.size, row.mtime) == size_mtime:
                    unchanged += 1  # fast path: size and mtime unchanged
                    continue
                doc = load_document(file, root)
            except LoadError as exc:
                if exc.failed:  # the indexed version, if any, stays searchable
                    failed.append(Skipped(rel, exc.reason, True))
                else:  # now empty, binary...: nothing of it belongs in the index any more
                    skipped.append(Skipped(rel, exc.reason, False))
                    if row:
                        gone[rel] = row
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
            old = by_hash.pop(doc.sha256, None) if row is None else None
            if old is not None:
                store.move_document(old, doc.path, mtime=doc.mtime)
                moved.append((old, doc.path))
                del gone[old]
                continue
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
            (changed if row else added).append(doc.path)

        # 3. Remove what is gone, after the loads above could take over its vectors.
        removed = sorted(gone)
        store.remove_documents(removed)

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

        # 5. Derive the FAISS file from SQLite when anything changed, or when a killed run left
        # it (or the manifest's count of it) behind.
        counts = store.counts()
        if (
            embedded
            or removed
            or added
            or changed
            or store.manifest.faiss_count != counts["vectors"]
            or not store.vectors_agree()
        ):
            store.save_vectors()
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
    """What ``index`` would do (``--dry-run``): load and chunk, but embed and write nothing."""
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
        files, passed_over = discover(
            root,
            exclude=[Path(settings.index_dir)],
            max_file_bytes=int(settings.max_file_mb * 1024 * 1024),
        )
        skipped = [s for s in passed_over if not s.failed]
        failed = [s for s in passed_over if s.failed]
        known = store.documents() if store is not None else {}
        present = {relative_path(f, root): f for f in files}
        kept = {p for p in known if any(_under(p, s.path) for s in failed)}
        gone = {p: r for p, r in known.items() if p not in present and p not in kept}
        by_hash = {r.sha256: p for p, r in gone.items()}
        max_tokens = min(settings.chunk_tokens, embedder.max_tokens)
        added: list[str] = []
        changed: list[str] = []
        moved: list[tuple[str, str]] = []
        warnings: list[tuple[str, str]] = []
        unchanged = to_embed = reused = tokens = new_chunks = 0
        same: set[str] = set()  # unchanged bytes: a run embeds their chunks still without vectors
        for rel, file in present.items():
            row = known.get(rel)
            try:
                stat = file.stat()
                size_mtime = (stat.st_size, stat.st_mtime)
                if row and row.status == "indexed" and (row.size, row.mtime) == size_mtime:
                    unchanged += 1
                    continue
                doc = load_document(file, root)
            except LoadError as exc:
                if exc.failed:
                    failed.append(Skipped(rel, exc.reason, True))
                else:
                    skipped.append(Skipped(rel, exc.reason, False))
                    if row:
                        gone[rel] = row
                continue
            except OSError as exc:
                failed.append(Skipped(rel, f"unreadable: {exc.strerror or exc}", True))
                continue
            warnings.extend((rel, w) for w in doc.warnings)
            if row and row.sha256 == doc.sha256:
                unchanged += 1
                same.add(rel)
                continue
            old = by_hash.pop(doc.sha256, None) if row is None else None
            if old is not None:  # a rename keeps its vectors
                moved.append((old, rel))
                del gone[old]
                continue
            pieces = chunk_document(
                doc, embedder.count_tokens, max_tokens=max_tokens, overlap=settings.chunk_overlap
            )
            cached: dict[str, bytes] = {}
            if store is not None:  # the embedding cache: texts this model has already embedded
                m = store.manifest
                keys = [
                    cache_key(c.text, embedder=m.embedder, model=m.model, dimension=m.dimension)
                    for c in pieces
                ]
                cached = Store._cached_vectors(store.db.conn, keys)
            else:
                keys = [""] * len(pieces)
            for piece, key in zip(pieces, keys, strict=True):
                if key in cached:
                    reused += 1
                else:
                    to_embed += 1
                    tokens += piece.tokens
            (changed if row else added).append(rel)
            new_chunks += len(pieces)
        if store is not None and same:
            waiting = store.pending()
            where = store.chunks([i for i, _, _ in waiting])
            for i, _, n in waiting:
                if where[i].path in same:
                    to_embed += 1
                    tokens += n
        documents = len(known) - len(gone) + len(added)
        staying = (r.chunks for p, r in known.items() if p not in gone and p not in changed)
        chunks = sum(staying) + new_chunks
    finally:
        if store is not None:
            store.close()
    return IndexReport(
        index=str(settings.index_path),
        embedder=f"{embedder.name}:{embedder.model}",
        added=tuple(added),
        changed=tuple(changed),
        removed=tuple(sorted(gone)),
        moved=tuple(moved),
        unchanged=unchanged,
        skipped=tuple(skipped),
        failed=tuple(failed),
        warnings=tuple(warnings),
        chunks_embedded=to_embed,
        chunks_reused=reused,
        documents=documents,
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
    history: Sequence[Turn] = (),
    **overrides: Any,
) -> Answer:
    """Answer ``question`` from the index, with numbered citations.

    Uses the chat model when OpenAI (or a compatible server) is configured, otherwise quotes the
    most relevant sentences. ``on_text`` receives the LLM answer as it streams. ``history`` holds
    a conversation's earlier turns: the newest that fit ``chat_history_tokens`` go to the model,
    and the previous question helps retrieval for follow-ups.
    """
    settings = _settings(settings, overrides)
    question = check_query(question)
    history = fit_history(history, settings.chat_history_tokens)
    use_llm = settings.openai_configured if settings.llm is None else settings.llm
    queries = [question]
    followup = followup_query(question, history)
    # Only a model can tell a follow-up from a change of topic (an earlier question's words
    # would make any new question look answerable), so extractive answers search the question
    # alone.
    if followup and use_llm:
        queries.append(followup)
    store, embedder = open_index(settings)
    with store:
        found = [
            dense_search(
                store,
                embedder,
                q,
                k=settings.k,
                min_score=settings.min_score,
                path_glob=settings.path,
            )
            for q in queries
        ]
    hits = merge_hits(found, settings.k)
    threshold = settings.abstain_below
    if threshold is None:
        threshold = DEFAULT_ABSTAIN_BELOW.get(embedder.name, 0.3)
    if not use_llm:
        return extractive_answer(question, hits, embedder, abstain_below=threshold)
    return llm_answer(
        question,
        hits,
        chat_model(settings),
        abstain_below=threshold,
        stream=on_text,
        history=history,
    )


def chat_model(settings: Settings) -> ChatModel:
    """The chat model ``settings`` describe, its request shaped for the model's family."""
    client = None
    if settings.azure_endpoint:
        # Azure OpenAI through the SDK's Azure client; the chat model names the deployment.
        from ragkit.chat import without_quota_retries
        from ragkit.openai_client import make_client

        client = without_quota_retries(make_client(**openai_credentials(settings)))
    return OpenAIChatModel(
        settings.chat_model,
        api_key=settings.openai_api_key,
        base_url=settings.openai_base_url,
        client=client,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_tokens,
        seed=settings.seed,
        stop=settings.stop,
        reasoning_effort=settings.reasoning_effort,
    )


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


def doctor(
    settings: Settings | None = None, *, repair: bool = False, wait: bool = False, **overrides: Any
) -> HealthReport:
    """Check that the index's parts agree (FAISS, SQLite, keyword index, manifest); ``repair`` fixes
    what can be fixed without the source files. Embedding what is missing is ``index``'s job."""
    settings = _settings(settings, overrides)
    try:
        store = Store.open(settings.index_path)
    except IndexMismatchError as exc:  # a manifest that names no embedder, or another schema
        return HealthReport(
            index=str(settings.index_path),
            problems=(Problem("manifest", str(exc), "build a new index", repairable=False),),
        )
    with store:
        if not repair:
            return store.check()
        store.lock(wait=wait)
        return store.repair()
