"""The whole flow in one place: files -> documents -> chunks -> vectors -> index -> hits -> answer.

``index(path)`` brings an index in line with a folder: new and changed files are loaded,
chunked and committed one by one, then embedded batch by batch (each batch committed as it
completes); deleted files are removed, renamed files re-pointed, and the FAISS file is rebuilt
from SQLite. ``search`` and ``ask`` always use the embedder recorded in the index.

How settings become the embedder, store and chat model is ``components``; what changed between
the folder and the index (and ``IndexReport``, what ``index`` returns) is ``sync``; the
``--dry-run`` estimate is ``estimate``; what an index is and whether it is sound (status,
doctor, eval, copy) is ``maintenance``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ragkit.answerer import (
    DEFAULT_ABSTAIN_BELOW,
    Answer,
    abstention,
    llm_answer,
    should_abstain,
)
from ragkit.chat import ChatModel
from ragkit.chunking import chunk_document
from ragkit.components import (
    cost_of,
    embedder_for,
    filters,
    open_index,
    resolve_settings,
)
from ragkit.config import Overrides, Settings
from ragkit.context import context_window, fit_prompt
from ragkit.conversation import Turn, fit_history, followup_query, merge_hits
from ragkit.embedders import (
    Embedder,
    embed_batches,
)
from ragkit.errors import ConfigError, RagkitError
from ragkit.extractive import extractive_answer, followup_hits
from ragkit.retriever import Hit, check_mode, check_query
from ragkit.retriever import search as retrieve
from ragkit.store import cache_key
from ragkit.store.protocol import PENDING_PAGE, IndexStore, pending_pages
from ragkit.sync import IndexReport as IndexReport  # what index returns, importable here
from ragkit.sync import folder_sync

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger(__name__)

# progress(stage, done, total): stage is "scan", "load" or "embed"
Progress = Callable[[str, int, int], None]
EMBED_PAGE = PENDING_PAGE  # chunks read from the store at a time to embed


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
    settings = resolve_settings(settings, overrides)
    started = time.perf_counter()
    root = Path(path)
    if not root.exists():
        raise RagkitError(f"no such file or folder: {path}")
    source = str(root.resolve())
    note = progress or (lambda stage, done, total: None)
    if dry_run:
        from ragkit.estimate import estimate

        return estimate(root, source, settings, started)

    if settings.address.exists():
        store, embedder = open_index(settings)
    else:
        spec = settings.embedder or ("openai" if settings.openai_configured else "local")
        embedder = embedder_for(spec, settings)
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
        sync, selection = folder_sync(root, store.documents(), settings, store)
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

        # 4. Embed every chunk still without a vector, a page at a time, committing batch by
        # batch: memory follows the page, not the corpus.
        embedded, tokens = _embed_pending(store, embedder, settings, note)

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
            cost_usd=cost_of(embedder, tokens),
        )


def _embed_pending(
    store: IndexStore, embedder: Embedder, settings: Settings, note: Progress
) -> tuple[int, int]:
    """Give every chunk without a vector its vector; returns (chunks given one, tokens used).

    Identical texts (copies of a file, repeated boilerplate) share a cache key and are sent
    once: within a page by grouping, across pages by taking the vector an earlier page stored.
    """
    counts = store.counts()
    total = counts["chunks"] - counts["vectors"]
    m = store.manifest
    embedded = tokens = 0
    note("embed", 0, total)
    for page in pending_pages(store, EMBED_PAGE):
        keys = [
            cache_key(text, embedder=m.embedder, model=m.model, dimension=m.dimension)
            for _, text, _ in page
        ]
        filled = store.fill_from_cache([i for i, _, _ in page], keys)
        embedded += len(filled)
        same_text: dict[str, list[int]] = {}  # cache key -> positions in page
        for pos, ((chunk_id, _, _), key) in enumerate(zip(page, keys, strict=True)):
            if chunk_id not in filled:
                same_text.setdefault(key, []).append(pos)
        groups = list(same_text.values())
        texts = [page[g[0]][1] for g in groups]
        for positions, vectors, used in embed_batches(
            embedder, texts, max(settings.batch_size * 4, 64)
        ):
            owners = [groups[int(p)] for p in positions]
            # The provider's own count when it reports one (what is billed), else ours.
            batch_tokens = used if used is not None else sum(page[g[0]][2] for g in owners)
            ids = [page[i][0] for g in owners for i in g]
            rows = np.repeat(vectors, [len(g) for g in owners], axis=0)
            store.set_vectors(ids, rows, batch_tokens)
            embedded += len(ids)
            tokens += batch_tokens
            note("embed", embedded, total)
    return embedded, tokens


def retrieve_hits(
    store: IndexStore, embedder: Embedder, query: str, settings: Settings, *, cosine: bool = False
) -> list[Hit]:
    """The hits for one query on an open store, with the settings' k, mode, filters and MMR
    (``cosine``: keyword hits carry their cosine too, as abstention needs)."""
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
        cosine=cosine,
    )


def search(
    query: str, settings: Settings | None = None, **overrides: Unpack[Overrides]
) -> list[Hit]:
    """The passages that best match ``query`` in the settings' mode, best first.

    ``Hit.score`` is the mode's score (cosine, BM25 or fused); ``Hit.dense_score`` is always
    the cosine. Opens the index for this one call: apps that search often use ``ragkit.open``.
    """
    settings = resolve_settings(settings, overrides)
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
    settings = resolve_settings(settings, overrides)
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
