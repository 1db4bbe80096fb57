"""``ragkit index --dry-run``: what an index run would embed, and at what cost, writing nothing.

The folder is compared with the index and every new or changed file is loaded and chunked as a
run would; chunk texts the embedding cache already holds are counted as reused, identical texts
are counted once, and chunks an interrupted run left without vectors are counted too. The
embedder only counts tokens (``count_only``: no credentials needed).
"""

from __future__ import annotations

import time
from pathlib import Path

from ragkit.chunking import chunk_document
from ragkit.components import cost_of, embedder_for, open_index
from ragkit.config import Settings
from ragkit.errors import ConfigError
from ragkit.store import cache_key
from ragkit.store.protocol import IndexStore, pending_pages
from ragkit.sync import IndexReport, folder_sync


def estimate(root: Path, source: str, settings: Settings, started: float) -> IndexReport:
    """What ``index`` would do (``--dry-run``): load and chunk, but embed and write nothing."""
    store: IndexStore | None = None
    if settings.address.exists():
        store, embedder = open_index(settings, count_only=True)
    else:
        spec = settings.embedder or ("openai" if settings.openai_configured else "local")
        embedder = embedder_for(spec, settings, count_only=True)
    try:
        if store is not None and store.manifest.source and store.manifest.source != source:
            raise ConfigError(
                f"index {settings.index} mirrors {store.manifest.source}, not {source}:"
                f" re-index that folder, or pass --index NEW_NAME for this one"
            )
        known = store.documents() if store is not None else {}
        sync, _ = folder_sync(root, known, settings, store)
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
            for waiting in pending_pages(store):
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
        cost_usd=cost_of(embedder, tokens),
    )
