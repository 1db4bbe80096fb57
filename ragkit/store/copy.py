"""``ragkit copy``: an index moved to another store (SQLite folder <-> PostgreSQL), vectors and all.

Only the store seam is used, so any store copies to any other: documents keep their paths,
hashes and mtimes (the next ``ragkit index`` of the same folder finds nothing changed), chunks
keep their text and source spans, and each chunk keeps its stored vector bit for bit (float32
in both stores), so nothing is embedded again. Chunk ids are the target's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ragkit.chunking import Chunk
from ragkit.errors import RagkitError
from ragkit.store.address import Address
from ragkit.store.protocol import IndexStore, pending_pages
from ragkit.store.schema import DocumentRow

BATCH_CHUNKS = 2000  # chunks read, written and committed together


@dataclass(frozen=True)
class CopyReport:
    """What ``copy`` wrote."""

    source: str
    target: str
    documents: int
    chunks: int
    vectors: int


def copy_index(
    source: IndexStore,
    source_name: str,
    target: Address,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> CopyReport:
    """Copy every document, chunk and vector of ``source`` into a new index at ``target``."""
    if target.exists():
        raise RagkitError(
            f"an index already exists at {target}: copy to another name with --to-index NAME"
        )
    m = source.manifest
    note = progress or (lambda done, total: None)
    with source.snapshot():  # one consistent state of the source, even while it is written
        documents = source.documents()
        owner = source.chunk_documents()
        with_vectors = {int(i) for i in source.chunk_ids()}
        by_path: dict[str, list[int]] = {}
        for chunk_id, path in sorted(owner.items()):
            by_path.setdefault(path, []).append(chunk_id)
        out = target.create(embedder=m.embedder, model=m.model, dimension=m.dimension)
        try:
            with out:
                out.lock()
                copied = _copy_all(source, out, documents, by_path, with_vectors, note)
                if m.source:
                    out.set_source(m.source)
                out.save_vectors()
                counts = out.counts()
        except BaseException:
            target.drop()  # a partial copy would pass for a whole index: leave none
            raise
    return CopyReport(
        source=source_name,
        target=str(target),
        documents=counts["documents"],
        chunks=counts["chunks"],
        vectors=copied,
    )


def _copy_all(
    source: IndexStore,
    out: IndexStore,
    documents: dict[str, DocumentRow],
    by_path: dict[str, list[int]],
    with_vectors: set[int],
    note: Callable[[int, int], None],
) -> int:
    """Copy document by document in batches of about BATCH_CHUNKS chunks; returns vectors."""
    tokens = source.manifest.tokens_embedded  # recorded once, with the first batch
    done = copied = size = 0
    seen = 0  # highest waiting chunk id looked at: a later batch's chunks all lie above it
    batch: list[str] = []
    paths = list(documents)
    for n, path in enumerate(paths):
        batch.append(path)
        size += len(by_path.get(path, ()))
        if size >= BATCH_CHUNKS or n == len(paths) - 1:
            written, seen = _copy_batch(
                source, out, documents, by_path, batch, with_vectors, tokens, seen
            )
            copied += written
            tokens = size = 0
            done += len(batch)
            batch = []
            note(done, len(paths))
    return copied


def _copy_batch(
    source: IndexStore,
    out: IndexStore,
    documents: dict[str, DocumentRow],
    by_path: dict[str, list[int]],
    paths: list[str],
    with_vectors: set[int],
    tokens: int,
    seen: int,
) -> tuple[int, int]:
    """Write ``paths``' documents and chunks, then their vectors; returns (vectors written, the
    highest waiting chunk id looked at, ``seen`` if none was above it)."""
    ids = [i for p in paths for i in by_path.get(p, ())]
    rows = source.chunks(ids)
    vector_of: dict[tuple[str, int], int] = {}  # (path, ordinal) -> position in `stored`
    keep = [i for i in ids if i in with_vectors]
    stored = source.vectors(keep)
    for n, chunk_id in enumerate(keep):
        vector_of[(rows[chunk_id].path, rows[chunk_id].ordinal)] = n
    with out.bulk():
        for path in paths:
            doc = documents[path]
            chunks = [
                Chunk(
                    ordinal=r.ordinal,
                    text=r.text,
                    start_char=r.start_char,
                    end_char=r.end_char,
                    start_line=r.start_line,
                    end_line=r.end_line,
                    page=r.page,
                    heading=r.heading,
                    tokens=r.tokens,
                )
                for r in (rows[i] for i in by_path.get(path, ()))
            ]
            out.put_document(
                path=path,
                sha256=doc.sha256,
                size=doc.size,
                mtime=doc.mtime,
                kind=doc.kind,
                pages=doc.pages,
                warnings=[w for w in doc.warnings.split("\n") if w],
                chunks=chunks,
            )
    # Chunks that took a vector from the embedding cache are not pending; the rest get theirs.
    # A page at a time, and only above ``seen``: chunks the source had no vector for stay
    # waiting, and reading them again batch after batch made a copy quadratic in their number.
    targets: list[int] = []
    picks: list[int] = []
    for page in pending_pages(out, after=seen):
        seen = page[-1][0]
        where = out.chunks([i for i, _, _ in page])
        for chunk_id, _, _ in page:
            row = where[chunk_id]
            n = vector_of.get((row.path, row.ordinal), -1)
            if n >= 0:
                targets.append(chunk_id)
                picks.append(n)
    if targets:
        out.set_vectors(targets, stored[np.array(picks, dtype=np.int64)], tokens)
    return len(keep), seen
