"""The SQLite store of one index folder: documents, chunks and their vectors (the truth), and the
FAISS file derived from them. ``Store`` is what the rest of ragkit calls. This module opens
the folder, holds the write lock and transactions, and reads rows; ``Store`` inherits its write
side from ``sqlite_writes.py`` and its FAISS side from ``sqlite_vectors.py``. The pieces they
use live beside them (schema, keyword, vectors, lock, health)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ragkit.errors import IndexMismatchError, IndexNotFoundError, RagkitError
from ragkit.filters import Filters
from ragkit.store import health, keyword, vectors
from ragkit.store.disk import storage_errors
from ragkit.store.health import HealthReport
from ragkit.store.lock import WriteLock
from ragkit.store.schema import (
    DB_NAME,
    SCHEMA,
    SCHEMA_VERSION,
    Database,
    DocumentRow,
    Manifest,
    StoredChunk,
    add_page_label_column,
    connect,
    index_flags,
    migrate,
    needs_migration,
    now,
    open_db,
    read_manifest,
)
from ragkit.store.sqlite_vectors import EXACT_FILTERED, StoreVectors
from ragkit.store.sqlite_writes import StoreWrites
from ragkit.store.where import sqlite_where

if TYPE_CHECKING:
    from ragkit.store.bm25 import KeywordMemory

log = logging.getLogger(__name__)
__all__ = ["EXACT_FILTERED", "Store"]


class Store(StoreWrites, StoreVectors):
    """One index folder: open it, change it under the write lock, search its vectors."""

    def __init__(self, path: Path, db: Database, manifest: Manifest) -> None:
        self.path = path
        self.db = db
        self.manifest = manifest
        self._faiss: Any = None
        # vectors_deleted as of SQLite's data_version _deleted_at (None: read it again)
        self._deleted: vectors.Excluded | None = None
        self._deleted_at: int | None = None
        self._lock = WriteLock(path)
        self._page_labels = True  # False for an old read-only index without the column
        self._bulk: list[int] | None = None  # [chunks written, chunks per commit] inside bulk()
        self._keywords: KeywordMemory | None = None  # an open Index's postings, when shared

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def exists(cls, path: Path) -> bool:
        """True when ``path`` holds an index (a database with its manifest)."""
        file = path / DB_NAME
        if not file.is_file():
            return False
        conn = open_db(path)
        try:
            # The manifest is written in the transaction that creates the tables, so a database
            # without it is a create that was interrupted: no index yet.
            return bool(
                conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'manifest'"
                ).fetchone()
            )
        finally:
            conn.close()

    @classmethod
    def create(cls, path: Path, *, embedder: str, model: str, dimension: int) -> Store:
        """Make a new, empty index at ``path`` for vectors of the given embedder."""
        if cls.exists(path):
            raise RagkitError(f"an index already exists at {path}")
        with storage_errors(path):
            return cls._create(path, embedder=embedder, model=model, dimension=dimension)

    @classmethod
    def _create(cls, path: Path, *, embedder: str, model: str, dimension: int) -> Store:
        path.mkdir(parents=True, exist_ok=True)
        db = connect(path)
        stamp = now()
        values = {
            "embedder": embedder,
            "model": model,
            "dimension": str(dimension),
            "schema_version": str(SCHEMA_VERSION),
            "created": stamp,
            "updated": stamp,
            "tokens_embedded": "0",
            "faiss_generation": "0",
            "faiss_count": "0",
        }
        conn = db.conn
        # Tables and manifest in one transaction: a kill leaves no index or a whole one.
        conn.executescript("BEGIN IMMEDIATE;\n" + SCHEMA)
        try:
            if conn.execute("SELECT count(*) FROM manifest").fetchone()[0]:
                raise RagkitError(
                    f"another process created an index at {path} just now: run the command again"
                )
            conn.executemany("INSERT INTO manifest(key, value) VALUES (?, ?)", values.items())
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
        conn.execute("COMMIT")
        return cls(path, db, read_manifest(db, path))

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open the index at ``path``; raise IndexNotFoundError when there is none."""
        if not cls.exists(path):
            raise IndexNotFoundError(
                f"no index at {path}: build one with `ragkit index PATH{index_flags(path)}`"
            )
        db = connect(path)
        try:
            manifest = read_manifest(db, path)
            labels = add_page_label_column(db.conn)
        except BaseException:
            db.conn.close()
            raise
        if manifest.schema_version != SCHEMA_VERSION:
            db.conn.close()
            raise IndexMismatchError(
                f"index {path} has schema version {manifest.schema_version}, this ragkit reads"
                f" {SCHEMA_VERSION}: rebuild it with `ragkit index PATH --index {path.name}`"
                " into a new index"
            )
        store = cls(path, db, manifest)
        store._page_labels = labels
        store._migrate()
        return store

    def _migrate(self) -> None:
        """Bring an index written by an earlier release of this schema up to date, under the lock.

        Skipped when another process holds the lock (a writer of this release migrated on its
        own open) or the folder is read-only: every reader copes with the older layout.
        """
        if not needs_migration(self.db.conn):
            return
        try:
            self.lock()  # migrates
        except (RagkitError, OSError):  # locked by another writer, or read-only storage
            return
        except sqlite3.OperationalError as exc:  # e.g. a read-only database file
            log.warning("could not update the layout of %s (%s)", self.path, exc)
        self.unlock()

    def close(self) -> None:
        """Release the write lock (if held) and the database connection."""
        self.unlock()
        self.db.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_source(self, source: str) -> None:
        """Record the folder this index mirrors."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO manifest(key, value) VALUES ('source', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (source,),
            )
        self.manifest = read_manifest(self.db, self.path)

    def refresh_manifest(self) -> Manifest:
        """Re-read the manifest (another process may have committed since it was read)."""
        self.manifest = read_manifest(self.db, self.path)
        return self.manifest

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes when another connection commits.

        A cheap check (no table is read) that tells a long-lived reader when to look again.
        """
        return int(self.db.conn.execute("PRAGMA data_version").fetchone()[0])

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: every read inside sees the same committed state.

        Load the FAISS index (``faiss_index()``) before entering: a rebuild may write.
        """
        conn = self.db.conn
        if conn.in_transaction:  # already inside one: it is the snapshot
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def share_vectors(self, index: Any) -> None:
        """Use an already verified FAISS index (an open ``Index`` shares one between threads)."""
        self._faiss = index

    def share_keywords(self, memory: KeywordMemory | None) -> None:
        """Rank keyword queries with postings an open ``Index`` holds in memory, while current."""
        self._keywords = memory

    # -- the write lock ----------------------------------------------------------------------

    def lock(self, *, wait: bool = False, timeout: float | None = None) -> None:
        """Take the one-writer lock, or raise IndexLockedError (``wait`` blocks instead)."""
        with storage_errors(self.path):  # read-only storage, or no space for the lock file
            taken = self._lock.acquire(wait=wait, timeout=timeout)
        if not taken:
            return
        if needs_migration(self.db.conn):  # an index from an earlier release of schema 2
            migrate(self.db.conn)
        # Another writer may have finished while this one waited: start from what it left.
        self.manifest = read_manifest(self.db, self.path)
        self._faiss = None

    def unlock(self) -> None:
        """Release the write lock if this process holds it."""
        self._lock.release()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is committed, or none of it."""
        conn = self.db.conn
        with storage_errors(self.path):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself on some errors (a full disk): a second ROLLBACK
                # would fail and hide the error that matters.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # -- documents and chunks ----------------------------------------------------------------

    def documents(self) -> dict[str, DocumentRow]:
        """Every document row, by path."""
        rows = self.db.conn.execute(
            "SELECT id, path, sha256, size, mtime, kind, pages, chunks, status, warnings"
            " FROM documents ORDER BY path"
        ).fetchall()
        return {r[1]: DocumentRow(*r) for r in rows}

    def pending(self, after: int = 0, limit: int | None = None) -> list[tuple[int, str, int]]:
        """(id, text, tokens) of chunks still waiting for their vectors, ids above ``after``, in
        id order (the order they were stored: document by document); at most ``limit``."""
        return [
            (int(i), str(t), int(n))
            for i, t, n in self.db.conn.execute(
                "SELECT id, text, tokens FROM chunks WHERE vector IS NULL AND id > ?"
                " ORDER BY id LIMIT ?",
                (after, -1 if limit is None else limit),
            )
        ]

    def chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        """Chunk rows (with their document paths) by id."""
        out: dict[int, StoredChunk] = {}
        label = "c.page_label" if self._page_labels else "NULL"
        for start in range(0, len(ids), 500):
            part = [int(i) for i in ids[start : start + 500]]
            marks = ",".join("?" * len(part))
            for row in self.db.conn.execute(
                "SELECT c.id, d.path, c.ordinal, c.text, c.page, c.start_line, c.end_line,"
                f" c.start_char, c.end_char, c.heading, c.tokens, {label} FROM chunks c"
                f" JOIN documents d ON d.id = c.document_id WHERE c.id IN ({marks})",
                part,
            ):
                out[int(row[0])] = StoredChunk(*row)
        return out

    def chunk_documents(self) -> dict[int, str]:
        """Every chunk id with the path of its document."""
        rows = self.db.conn.execute(
            "SELECT c.id, d.path FROM chunks c JOIN documents d ON d.id = c.document_id"
        )
        return {int(i): str(p) for i, p in rows}

    def chunk_ids(
        self, *, path_glob: str | None = None, filters: Filters | None = None
    ) -> NDArray[np.int64]:
        """Ids of the chunks that have vectors, optionally only those passing filters or a glob."""
        sql = "SELECT c.id FROM chunks c"
        args: list[Any] = []
        if path_glob or (filters is not None and filters.active):
            where, args = sqlite_where(filters)
            if path_glob:
                where += " AND d.path GLOB ?"
                args.append(path_glob)
            sql += f" JOIN documents d ON d.id = c.document_id WHERE {where} AND"
        else:
            sql += " WHERE"
        sql += " c.vector IS NOT NULL ORDER BY c.id"
        rows = self.db.conn.execute(sql, args).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def counts(self) -> dict[str, int]:
        """Documents, chunks, chunks with vectors, and pending documents."""
        c = self.db.conn
        return {
            "documents": c.execute("SELECT count(*) FROM documents").fetchone()[0],
            "chunks": c.execute("SELECT count(*) FROM chunks").fetchone()[0],
            "vectors": c.execute("SELECT count(*) FROM chunks WHERE vector IS NOT NULL").fetchone()[
                0
            ],
            "pending_documents": c.execute(
                "SELECT count(*) FROM documents WHERE status = 'pending'"
            ).fetchone()[0],
        }

    def size_on_disk(self) -> int:
        """Bytes used by the index's files."""
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())

    # -- keyword search ----------------------------------------------------------------------

    def keyword_search(
        self, query: str, k: int, *, filters: Filters | None = None
    ) -> list[tuple[int, float]]:
        """Top-k (chunk id, BM25 score) for the words of ``query``, best first.

        FTS5's ``bm25()`` (k1=1.2, b=0.75, Porter-stemmed terms) is negated so that higher is
        better, as for cosine. Only chunks that have vectors are ranked, the same set dense
        search sees; ``filters`` are applied inside the query, before ranking. With postings
        shared by an open Index that match this snapshot, the same ranking comes from memory.
        """
        if self._keywords is not None:
            active = filters is not None and filters.active
            ranked = self._keywords.search(
                self.db.conn,
                query,
                k,
                generation=self.manifest.faiss_generation,
                allowed=(lambda: self.chunk_ids(filters=filters)) if active else None,
            )
            if ranked is not None:
                return ranked
        return keyword.keyword_search(self.db.conn, query, k, filters=filters)

    def note(self, key: str) -> str | None:
        """A value the pipeline keeps in the manifest table (e.g. the file selection), or None."""
        row = self.db.conn.execute(
            "SELECT value FROM manifest WHERE key = ?", ("note:" + key,)
        ).fetchone()
        return None if row is None else str(row[0])

    def set_note(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key`` in the manifest table, replacing what was there."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO manifest(key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                ("note:" + key, value),
            )

    # -- health ------------------------------------------------------------------------------

    def check(self) -> HealthReport:
        """Verify SQLite, the manifest, the keyword index and FAISS against each other."""
        return health.check(self)

    def repair(self) -> HealthReport:
        """Fix what ``check`` finds that can be fixed without the source files (takes the lock).

        Returns the state afterwards, with ``repaired`` saying what was done. Chunks left
        without vectors are for the next ``ragkit index`` to embed.
        """
        return health.repair(self)
