"""The write side of ``Store``: documents and chunks in, vectors filled in, in transactions
that leave each document whole or absent.

``StoreWrites`` is a mixin: ``Store`` inherits it, so callers and tests see one class. The
embedding cache lives here too: a new chunk takes the stored vector of a chunk with the same
``cache_key``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from ragkit.store.disk import storage_errors
from ragkit.store.schema import Database, Manifest, cache_key, now

if TYPE_CHECKING:
    from ragkit.chunking import Chunk


class StoreWrites:
    """Writes to one index folder's SQLite rows (``Store``'s), alone or grouped by ``bulk()``."""

    # Set by Store.__init__.
    path: Path
    db: Database
    manifest: Manifest
    _deleted_at: int | None
    _bulk: list[int] | None  # [chunks written, chunks per commit] inside bulk()

    if TYPE_CHECKING:  # Store's, used here

        def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    @contextlib.contextmanager
    def bulk(self, chunks_per_commit: int = 20_000) -> Iterator[None]:
        """Group the document writes made inside into transactions of about this many chunks.

        One commit per document cost about 1 ms each on a busy disk (most of 100k documents'
        write time). Each document is still whole or absent after a kill: a kill loses the
        documents of the open transaction, which the next run reads again. An exception inside
        (Ctrl-C included) commits the documents already written whole and propagates; a
        database error rolls the open transaction back instead.
        """
        if self._bulk is not None:
            yield
            return
        self._bulk = [0, max(1, chunks_per_commit)]
        conn = self.db.conn
        try:
            with storage_errors(self.path):  # a full disk at a commit: its one-line error
                try:
                    yield
                    if conn.in_transaction:
                        conn.execute("COMMIT")
                except BaseException as exc:
                    # SQLite may have rolled back by itself (a full disk): only then nothing to
                    # end. Otherwise every write in the transaction is whole (a savepoint each):
                    # keep them after an interrupt or a failure outside SQLite.
                    if conn.in_transaction:
                        conn.execute("ROLLBACK" if isinstance(exc, sqlite3.Error) else "COMMIT")
                    raise
        finally:
            self._bulk = None

    @contextlib.contextmanager
    def _write(self, chunks: int = 1) -> Iterator[sqlite3.Connection]:
        """A write transaction of its own, or a share of the open ``bulk()`` one."""
        if self._bulk is None:
            self._deleted_at = None  # this connection's own writes leave data_version as it is
            with self.transaction() as conn:
                yield conn
            return
        conn = self.db.conn
        with storage_errors(self.path):
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
            # Each write is whole or absent inside the shared transaction, so an interrupted
            # run can still commit the writes that completed (see bulk()).
            conn.execute("SAVEPOINT ragkit_write")
        self._deleted_at = None
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO ragkit_write")
                conn.execute("RELEASE ragkit_write")
            raise
        conn.execute("RELEASE ragkit_write")
        self._bulk[0] += chunks
        if self._bulk[0] >= self._bulk[1]:
            with storage_errors(self.path):
                conn.execute("COMMIT")
            self._bulk[0] = 0

    def put_document(
        self,
        *,
        path: str,
        sha256: str,
        size: int,
        mtime: float,
        kind: str,
        pages: int,
        warnings: Sequence[str],
        chunks: Sequence[Chunk],
    ) -> tuple[int, int]:
        """Insert or replace one document and its chunks in one transaction.

        A new chunk takes the vector of any stored chunk with the same text (the embedding cache),
        including the document's own old chunks. Returns (chunks needing a vector, chunks reused).
        """
        m = self.manifest
        hashes = [
            cache_key(c.text, embedder=m.embedder, model=m.model, dimension=m.dimension)
            for c in chunks
        ]
        with self._write(len(chunks) + 1) as conn:
            cached = self._cached_vectors(conn, hashes)
            old = conn.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchone()
            if old is not None:
                conn.execute("DELETE FROM chunks WHERE document_id = ?", (old[0],))
                conn.execute("DELETE FROM documents WHERE id = ?", (old[0],))
            missing = sum(1 for h in hashes if h not in cached)
            cur = conn.execute(
                "INSERT INTO documents(path, sha256, size, mtime, kind, pages, chunks, status,"
                " warnings, indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    path,
                    sha256,
                    size,
                    mtime,
                    kind,
                    pages,
                    len(chunks),
                    "pending" if missing else "indexed",
                    "\n".join(warnings),
                    now(),
                ),
            )
            doc_id = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT INTO chunks(document_id, ordinal, text, page, start_line, end_line,"
                " start_char, end_char, heading, tokens, cache_key, vector, page_label)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        doc_id,
                        c.ordinal,
                        c.text,
                        c.page,
                        c.start_line,
                        c.end_line,
                        c.start_char,
                        c.end_char,
                        c.heading,
                        c.tokens,
                        h,
                        cached.get(h),
                        c.page_label,
                    )
                    for c, h in zip(chunks, hashes, strict=True)
                ),
            )
        return missing, len(chunks) - missing

    @staticmethod
    def _cached_vectors(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            part = unique[start : start + 500]
            marks = ",".join("?" * len(part))
            for h, blob in conn.execute(
                f"SELECT cache_key, vector FROM chunks WHERE vector IS NOT NULL"
                f" AND cache_key IN ({marks})",
                part,
            ):
                found[h] = blob
        return found

    def cached_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of these embedding-cache keys already have a stored vector."""
        return set(self._cached_vectors(self.db.conn, keys))

    def move_document(self, old_path: str, new_path: str, *, mtime: float) -> None:
        """Re-point a document at its new path (a rename: same bytes, no re-embedding)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE documents SET path = ?, mtime = ? WHERE path = ?",
                (new_path, mtime, old_path),
            )

    def touch_document(self, path: str, *, mtime: float) -> None:
        """Record a new mtime for a document whose content did not change."""
        with self._write() as conn:
            conn.execute("UPDATE documents SET mtime = ? WHERE path = ?", (mtime, path))

    def remove_documents(self, paths: Iterable[str]) -> int:
        """Delete documents and their chunks; returns how many documents went."""
        removed = 0
        with self._write() as conn:
            for path in paths:
                row = conn.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchone()
                if row is None:
                    continue
                conn.execute("DELETE FROM chunks WHERE document_id = ?", (row[0],))
                conn.execute("DELETE FROM documents WHERE id = ?", (row[0],))
                removed += 1
        return removed

    def fill_from_cache(self, ids: Sequence[int], keys: Sequence[str]) -> set[int]:
        """Give these waiting chunks the stored vector of any chunk with the same cache key and
        commit; returns the ids given one."""
        found = self._cached_vectors(self.db.conn, keys)
        hits = [(int(i), found[k]) for i, k in zip(ids, keys, strict=True) if k in found]
        if hits:
            rows = np.frombuffer(b"".join(blob for _, blob in hits), dtype="<f4")
            self.set_vectors([i for i, _ in hits], rows.reshape(len(hits), -1))
        return {i for i, _ in hits}

    def set_vectors(
        self, ids: Sequence[int], vectors: NDArray[np.float32], tokens: int = 0
    ) -> None:
        """Store one embedded batch and commit it, so a crash later loses none of it."""
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if vectors.ndim != 2 or vectors.shape[1] != self.manifest.dimension:
            raise ValueError(
                f"vectors of shape {vectors.shape}, index wants {self.manifest.dimension}"
            )
        data = np.ascontiguousarray(vectors, dtype="<f4")
        with self._write(len(ids)) as conn:
            conn.executemany(
                "UPDATE chunks SET vector = ? WHERE id = ?",
                ((data[i].tobytes(), int(ids[i])) for i in range(len(ids))),
            )
            # A document is searchable in full once its last chunk has a vector. Only this
            # batch's documents can have changed: checking every pending document made each
            # batch scan them all (quadratic over a large first run).
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS batch_ids (id INTEGER PRIMARY KEY)")
            conn.execute("DELETE FROM batch_ids")
            conn.executemany("INSERT INTO batch_ids(id) VALUES (?)", ((int(i),) for i in ids))
            conn.execute(
                "UPDATE documents SET status = 'indexed' WHERE status = 'pending'"
                " AND id IN (SELECT document_id FROM chunks WHERE id IN (SELECT id FROM batch_ids))"
                " AND NOT EXISTS"
                " (SELECT 1 FROM chunks WHERE document_id = documents.id AND vector IS NULL)"
            )
            if tokens:
                conn.execute(
                    "UPDATE manifest SET value = CAST(value AS INTEGER) + ?"
                    " WHERE key = 'tokens_embedded'",
                    (tokens,),
                )
