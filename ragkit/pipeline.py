"""The whole flow in one place: files -> documents -> chunks -> vectors -> index -> hits -> answer.

``index(path)`` brings an index in line with a folder: new and changed files are loaded,
chunked and committed one by one, then embedded batch by batch (each batch committed as it
completes); deleted files are removed, renamed files re-pointed, and the FAISS file is rebuilt
from SQLite. ``search`` and ``ask`` always use the embedder recorded in the index; ``doctor``
checks (and repairs) the index's files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragkit.answerer import (
    DEFAULT_ABSTAIN_BELOW,
    Answer,
    abstention,
    llm_answer,
    should_abstain,
)
from ragkit.chat import ChatModel, OpenAIChatModel
from ragkit.chunking import chunk_document
from ragkit.config import Overrides, Settings
from ragkit.context import context_window, fit_prompt
from ragkit.conversation import Turn, fit_history, followup_query, merge_hits
from ragkit.documents import Limits, Selection, Skipped
from ragkit.embedders import (
    Embedder,
    embed_batches,
    make_embedder,
    parse_spec,
    price_per_million_tokens,
)
from ragkit.errors import ConfigError, IndexMismatchError, RagkitError
from ragkit.evaluation import PROTOCOLS, EvalReport, load_beir
from ragkit.evaluation import evaluate as run_evaluation
from ragkit.extractive import extractive_answer, followup_hits
from ragkit.filters import Filters, make_filters
from ragkit.retriever import MODES, Hit, check_mode, check_query
from ragkit.retriever import search as retrieve
from ragkit.store import DocumentRow, HealthReport, Problem, cache_key
from ragkit.store.copy import CopyReport
from ragkit.store.protocol import IndexStore
from ragkit.sync import FolderSync

if TYPE_CHECKING:
    from typing_extensions import Unpack

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
    vector_index: str = "flat"  # the FAISS file's kind: flat (exact) or ivf (approximate)


def _selection(settings: Settings, stored: str | None) -> dict[str, Any]:
    """The file selection for a run: the settings' patterns, else those the index stored."""
    old = json.loads(stored) if stored else {}
    return {
        "include": [p for p in settings.include if p]
        if settings.include is not None
        else old.get("include", []),
        "exclude": [p for p in settings.exclude if p]
        if settings.exclude is not None
        else old.get("exclude", []),
        "skip_generated": settings.skip_generated,
    }


def _folder_sync(
    root: Path, known: dict[str, DocumentRow], settings: Settings, store: IndexStore | None
) -> tuple[FolderSync, str]:
    """The comparison of ``root`` with an index's documents, under the settings' limits and file
    selection; also that selection as stored in the index."""
    stored = store.note("selection") if store is not None else None
    selection = _selection(settings, stored)
    encoded = json.dumps(selection, sort_keys=True)
    # Changed rules (or an index from before they were stored) are applied to every file.
    recheck = bool(known) and encoded != stored
    sync = FolderSync(
        root,
        known,
        exclude=[Path(settings.index_dir)],
        max_file_bytes=int(settings.max_file_mb * 1024 * 1024),
        follow_symlinks=settings.follow_symlinks,
        selection=Selection.for_root(
            root if root.is_dir() else root.parent,
            include=selection["include"],
            exclude=selection["exclude"],
            skip_generated=selection["skip_generated"],
        ),
        limits=Limits(
            max_chars_per_file=settings.max_chars_per_file,
            max_chars_per_page=settings.max_chars_per_page,
            max_seconds_per_file=settings.max_seconds_per_file,
            skip_generated=selection["skip_generated"],
        ),
        recheck=recheck,
    )
    return sync, encoded


def _settings(settings: Settings | None, overrides: Overrides) -> Settings:
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


# A question someone is waiting for gets a short retry budget (about ten seconds at most, each
# retry logged as a warning); indexing keeps the long one, since it resumes unattended work.
QUERY_MAX_RETRIES = 2
QUERY_MAX_RETRY_DELAY = 2.0
QUERY_TIMEOUT = 15.0


def _embedder(
    spec: str, settings: Settings, *, count_only: bool = False, query: bool = False
) -> Embedder:
    if query:
        retries = {
            "timeout": min(settings.openai_timeout, QUERY_TIMEOUT),
            "max_retries": min(settings.openai_max_retries, QUERY_MAX_RETRIES),
            "max_retry_delay": QUERY_MAX_RETRY_DELAY,
            "purpose": "query embedding",
        }
    else:
        retries = {"timeout": settings.openai_timeout, "max_retries": settings.openai_max_retries}
    return make_embedder(
        spec,
        **openai_credentials(settings),
        azure_deployment=settings.azure_deployment,
        concurrency=settings.openai_concurrency,
        batch_size=settings.batch_size,
        count_only=count_only,  # a dry run counts tokens: no credentials needed
        **retries,
    )


def _cost(embedder: Embedder, tokens: int) -> float | None:
    price = price_per_million_tokens(embedder)
    return None if price is None else tokens * price / 1e6


def open_index(
    settings: Settings, *, count_only: bool = False, query: bool = False
) -> tuple[IndexStore, Embedder]:
    """The index named by ``settings`` and the embedder it was built with (``query``: set up to
    embed questions, with a short retry budget)."""
    store = settings.address.open()
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
        return store, _embedder(m.embedder_spec, settings, count_only=count_only, query=query)
    except BaseException:
        store.close()
        raise


def index(
    path: str | Path,
    /,
    settings: Settings | None = None,
    *,
    progress: Progress | None = None,
    wait: bool = False,
    dry_run: bool = False,
    on_file: Callable[[str, int], None] | None = None,
    **overrides: Unpack[Overrides],
) -> IndexReport:
    """Bring the index in line with the files under ``path``; returns what changed.

    ``progress(stage, done, total)`` follows the stages; ``on_file(path, size)`` is called as
    each new or changed file is read.

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

    if settings.address.exists():
        store, embedder = open_index(settings)
    else:
        spec = settings.embedder or ("openai" if settings.openai_configured else "local")
        embedder = _embedder(spec, settings)
        store = settings.address.create(
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

        # 1. Compare the folder with the index; 2. apply each change as it is found, committing
        # each document with its chunks (unchanged chunk texts keep their vectors).
        note("scan", 0, 0)
        sync, selection = _folder_sync(root, store.documents(), settings, store)
        max_tokens = min(settings.chunk_tokens, embedder.max_tokens)
        reused = 0
        with store.bulk():  # a commit per ~20k chunks, not per document
            for change in sync.changes(note, on_file):
                if change.kind == "same":
                    store.touch_document(change.path, mtime=change.mtime)
                elif change.kind == "moved" and change.old_path is not None:
                    store.move_document(change.old_path, change.path, mtime=change.mtime)
                elif change.doc is not None:
                    doc = change.doc
                    chunks = chunk_document(
                        doc,
                        embedder.count_tokens,
                        max_tokens=max_tokens,
                        overlap=settings.chunk_overlap,
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

        # 3. Remove what is gone, after the loads above could take over its vectors.
        removed = sync.removed
        store.remove_documents(removed)
        store.set_note("selection", selection)

        # 4. Embed every chunk still without a vector, committing batch by batch. Identical
        # texts (copies of a file, repeated boilerplate) share a cache key: each is sent once.
        pending = store.pending()
        embedded = tokens = 0
        note("embed", 0, len(pending))
        m = store.manifest
        same_text: dict[str, list[int]] = {}  # cache key -> positions in pending
        for pos, (_, text, _) in enumerate(pending):
            key = cache_key(text, embedder=m.embedder, model=m.model, dimension=m.dimension)
            same_text.setdefault(key, []).append(pos)
        groups = list(same_text.values())
        texts = [pending[g[0]][1] for g in groups]
        for positions, vectors, used in embed_batches(
            embedder, texts, max(settings.batch_size * 4, 64)
        ):
            owners = [groups[int(p)] for p in positions]
            # The provider's own count when it reports one (what is billed), else ours.
            batch_tokens = used if used is not None else sum(pending[g[0]][2] for g in owners)
            ids = [pending[i][0] for g in owners for i in g]
            rows = np.repeat(vectors, [len(g) for g in owners], axis=0)
            store.set_vectors(ids, rows, batch_tokens)
            embedded += len(ids)
            tokens += batch_tokens
            note("embed", embedded, len(pending))

        # 5. Derive the FAISS file from SQLite when anything changed, or when a killed run left
        # it (or the manifest's count of it) behind.
        counts = store.counts()
        if (
            embedded
            or removed
            or sync.added
            or sync.changed
            or store.vectors_stale(settings.vector_index)
        ):
            store.save_vectors(settings.vector_index)
        return IndexReport(
            index=str(settings.address),
            embedder=store.manifest.embedder_spec,
            **sync.summary(),
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
    store: IndexStore | None = None
    if settings.address.exists():
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
        known = store.documents() if store is not None else {}
        sync, _ = _folder_sync(root, known, settings, store)
        max_tokens = min(settings.chunk_tokens, embedder.max_tokens)
        to_embed = reused = tokens = new_chunks = 0
        same: set[str] = set()  # unchanged bytes: a run embeds their chunks still without vectors
        sent: set[str] = set()  # texts a run would send
        for change in sync.changes(lambda stage, done, total: None):
            if change.kind == "same":
                same.add(change.path)
            if change.doc is None:
                continue
            pieces = chunk_document(
                change.doc,
                embedder.count_tokens,
                max_tokens=max_tokens,
                overlap=settings.chunk_overlap,
            )
            cached: set[str] = set()
            if store is not None:  # the embedding cache: texts this model has already embedded
                m = store.manifest
                keys = [
                    cache_key(c.text, embedder=m.embedder, model=m.model, dimension=m.dimension)
                    for c in pieces
                ]
                cached = store.cached_keys(keys)
            else:
                keys = [""] * len(pieces)
            for piece, key in zip(pieces, keys, strict=True):
                if key in cached:
                    reused += 1
                else:
                    to_embed += 1
                    if piece.text not in sent:  # a run sends identical texts once
                        sent.add(piece.text)
                        tokens += piece.tokens
            new_chunks += len(pieces)
        if store is not None and same:
            waiting = store.pending()
            where = store.chunks([i for i, _, _ in waiting])
            for i, text, n in waiting:
                if where[i].path in same:
                    to_embed += 1
                    if text not in sent:
                        sent.add(text)
                        tokens += n
        documents = len(known) - len(sync.gone) + len(sync.added)
        staying = (
            r.chunks for p, r in known.items() if p not in sync.gone and p not in sync.changed
        )
        chunks = sum(staying) + new_chunks
    finally:
        if store is not None:
            store.close()
    return IndexReport(
        index=str(settings.address),
        embedder=f"{embedder.name}:{embedder.model}",
        **sync.summary(),
        chunks_embedded=to_embed,
        chunks_reused=reused,
        documents=documents,
        chunks=chunks,
        tokens_embedded=tokens,
        seconds=time.perf_counter() - started,
        dry_run=True,
        cost_usd=_cost(embedder, tokens),
    )


def filters(settings: Settings) -> Filters:
    """The metadata filters the settings ask for (path, file type, mtime range, heading)."""
    return make_filters(
        path=settings.path,
        file_type=settings.file_type,
        modified_after=settings.modified_after,
        modified_before=settings.modified_before,
        heading=settings.heading,
    )


def retrieve_hits(
    store: IndexStore, embedder: Embedder, query: str, settings: Settings
) -> list[Hit]:
    """The hits for one query on an open store, with the settings' k, mode, filters and MMR."""
    return retrieve(
        store,
        embedder,
        query,
        k=settings.k,
        mode=check_mode(settings.mode),
        filters=filters(settings),
        min_score=settings.min_score,
        diversify=settings.mmr,
        mmr_lambda=settings.mmr_lambda,
    )


def search(
    query: str, settings: Settings | None = None, **overrides: Unpack[Overrides]
) -> list[Hit]:
    """The passages that best match ``query`` in the settings' mode, best first.

    ``Hit.score`` is the mode's score (cosine, BM25 or fused); ``Hit.dense_score`` is always
    the cosine. Opens the index for this one call: apps that search often use ``ragkit.open``.
    """
    settings = _settings(settings, overrides)
    query = check_query(query)
    filters(settings)  # refuse bad filter values before opening anything
    from ragkit.library import Index

    with Index(settings) as idx:
        return idx.search(query)


def ask(
    question: str,
    settings: Settings | None = None,
    *,
    on_text: Callable[[str], None] | None = None,
    history: Sequence[Turn] = (),
    **overrides: Unpack[Overrides],
) -> Answer:
    """Answer ``question`` from the index, with numbered citations.

    Uses the chat model when OpenAI (or a compatible server) is configured, otherwise quotes the
    most relevant sentences. ``on_text`` receives the LLM answer as it streams. ``history`` holds
    a conversation's earlier turns: the newest that fit ``chat_history_tokens`` go to the model,
    and the previous question helps retrieval for follow-ups.
    """
    settings = _settings(settings, overrides)
    question = check_query(question)
    filters(settings)  # refuse bad filter values before opening anything
    from ragkit.library import Index

    with Index(settings) as idx:
        return idx.ask(question, on_text=on_text, history=history)


def answer(
    question: str,
    settings: Settings,
    search: Callable[[str], list[Hit]],
    embedder: Embedder,
    chat: Callable[[], ChatModel],
    *,
    on_text: Callable[[str], None] | None = None,
    history: Sequence[Turn] = (),
) -> Answer:
    """The answer flow on an open index: ``search`` runs one query, ``chat`` gives the model."""
    question = check_query(question)
    use_llm = settings.openai_configured if settings.llm is None else settings.llm
    # Only a chat model reads the history; extractive answers need not count it (nor load a
    # tokenizer for it): they use the previous question alone, for follow-ups.
    history = fit_history(history, settings.chat_history_tokens) if use_llm else history[-1:]
    queries = [question]
    followup = followup_query(question, history)
    if followup:
        queries.append(followup)
    found = [search(q) for q in queries]
    if followup and not use_llm:
        # With no model to tell a follow-up from a change of topic, the follow-up query's hits
        # count only when they hold one of this question's own terms.
        found[-1] = followup_hits(question, found[-1])
    hits = merge_hits(found, settings.k)
    threshold = settings.abstain_below
    if threshold is None:
        threshold = DEFAULT_ABSTAIN_BELOW.get(embedder.name, 0.3)
    if not use_llm:
        return extractive_answer(question, hits, embedder, abstain_below=threshold)
    if should_abstain(hits, threshold):
        return abstention(question, "llm", settings.chat_model, hits)
    window = context_window(settings.chat_model, settings.context_tokens)
    fitted = fit_prompt(
        question,
        hits,
        history,
        model=settings.chat_model,
        context_tokens=window,
        answer_tokens=settings.max_tokens,
    )
    if fitted.sources_dropped or fitted.turns_dropped:
        log.info(
            "left out %d source(s) and %d earlier turn(s) to fit the %d-token context window",
            fitted.sources_dropped,
            fitted.turns_dropped,
            window,
        )
    result = llm_answer(
        question,
        fitted.hits,
        chat(),
        abstain_below=threshold,
        stream=on_text,
        history=fitted.history,
    )
    return dataclasses.replace(result, sources_dropped=fitted.sources_dropped)


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


def status(settings: Settings | None = None, **overrides: Unpack[Overrides]) -> IndexStatus:
    """Where the index is, what built it, what it holds, and whether FAISS agrees with SQLite."""
    settings = _settings(settings, overrides)
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
    settings = _settings(settings, overrides)
    for mode in modes:
        check_mode(mode)
    data = load_beir(dataset, split)
    spec = settings.embedder or "local"
    embedder = _embedder(spec, settings)
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

    settings = _settings(settings, overrides)
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
    settings = _settings(settings, overrides)
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
