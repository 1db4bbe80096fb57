"""The SQLite store of one index folder: documents, chunks and their vectors (the truth), and the
FAISS file derived from them. This class is what the rest of ragkit calls; the pieces it uses
live beside it (schema, keyword, vectors, lock, health)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ragkit.errors import IndexMismatchError, IndexNotFoundError, RagkitError
from ragkit.filters import Filters
from ragkit.store import freshness, health, keyword, vectors
from ragkit.store.disk import storage_errors
from ragkit.store.freshness import STAMP_KEY
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
    cache_key,
    connect,
    index_flags,
    migrate,
    needs_migration,
    now,
    open_db,
    read_manifest,
)
from ragkit.store.where import sqlite_where

if TYPE_CHECKING:
    from ragkit.chunking import Chunk
    from ragkit.store.bm25 import KeywordMemory

log = logging.getLogger(__name__)
# A filter passing at most this many chunks of an approximate index is scored exactly.
EXACT_FILTERED = 4_096


class Store:
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

    # -- vectors -----------------------------------------------------------------------------

    def _vector_rows(self, rows: list[tuple[int, bytes]]) -> tuple[NDArray[np.int64], Any]:
        """(ids, float32 matrix) of (id, blob) rows; RagkitError when a blob has the wrong size."""
        d = self.manifest.dimension
        if any(len(blob) != 4 * d for _, blob in rows):
            raise RagkitError(
                f"stored vectors of index {self.path.name} are not {d} floats long:"
                f" run `ragkit doctor --repair --index {self.path.name}`, then `ragkit index` again"
            )
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        data = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), d)
        return ids, data.astype(np.float32, copy=False)

    def vector_slices(
        self, ids: NDArray[np.int64] | None = None
    ) -> Iterator[tuple[NDArray[np.int64], NDArray[np.float32]]]:
        """Stored (ids, vectors) a slice at a time, by id: all of them, or those of ``ids``.

        Memory stays bounded by the slice, not the index (a 1M x 384 index is 1.5 GB).
        """
        if ids is None:
            cursor = self.db.conn.execute(
                "SELECT id, vector FROM chunks WHERE vector IS NOT NULL ORDER BY id"
            )
            while rows := cursor.fetchmany(vectors.ADD_SLICE):
                yield self._vector_rows(rows)
            return
        for start in range(0, len(ids), vectors.ADD_SLICE):
            part = ids[start : start + vectors.ADD_SLICE]
            yield np.asarray(part, dtype=np.int64), self.vectors(part)

    def all_vectors(self) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Every stored (id, vector), sorted by id."""
        parts = list(self.vector_slices())
        if not parts:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.manifest.dimension), np.float32)
        return np.concatenate([i for i, _ in parts]), np.concatenate([v for _, v in parts])

    def wrong_size_vectors(self) -> int:
        """How many stored vectors are not ``dimension`` floats long."""
        return int(
            self.db.conn.execute(
                "SELECT count(*) FROM chunks WHERE vector IS NOT NULL AND length(vector) != ?",
                (4 * self.manifest.dimension,),
            ).fetchone()[0]
        )

    def _build_faiss(self, kind: str, ids: NDArray[np.int64]) -> Any:
        """A new index of ``kind`` over every stored vector (``ids``: their sorted ids)."""
        d = self.manifest.dimension
        kind = vectors.choose(kind, len(ids))
        if kind == vectors.IVF:
            rng = np.random.default_rng(0)
            sample = np.sort(rng.choice(ids, vectors.training_size(len(ids)), replace=False))
            index = vectors.empty(kind, d, sample=self.vectors(sample), count=len(ids))
        else:
            index = vectors.empty(kind, d)
        for part_ids, part in self.vector_slices():
            vectors.add(index, part_ids, part)
        return index

    def _updated_faiss(self, vector_index: str, *, rebuild: bool = False) -> Any:
        """The FAISS file brought in line with SQLite: updated in place when it is of the kind
        wanted (new vectors added, deleted ones removed), built anew otherwise."""
        ids = self.chunk_ids()
        kind = vectors.choose(vector_index, len(ids))
        current = None if rebuild else vectors.read(self.path, self.manifest.dimension)[0]
        if (
            current is None
            or vectors.kind_of(current) != kind
            or vectors.outgrown(current, len(ids))
        ):
            return self._build_faiss(kind, ids)
        held = vectors.faiss_ids(current)
        vectors.remove(current, np.setdiff1d(held, ids, assume_unique=True))
        for part_ids, part in self.vector_slices(np.setdiff1d(ids, held, assume_unique=True)):
            vectors.add(current, part_ids, part)
        return current

    def save_vectors(self, vector_index: str | None = None, *, rebuild: bool = False) -> int:
        """Bring the FAISS file in line with SQLite, atomically; returns the new generation.

        ``vector_index`` (auto, flat, ivf) picks the kind; None keeps the index's own. A file of
        that kind is updated (a small change to a large index costs little); ``rebuild`` builds
        it anew from SQLite instead.
        """
        index = self._updated_faiss(vector_index or self.manifest.vector_index, rebuild=rebuild)
        self._write_faiss(index)
        return self.manifest.faiss_generation

    def vectors_stale(self, vector_index: str) -> bool:
        """True when the FAISS file lags SQLite, or is not the kind ``vector_index`` wants."""
        wanted = vectors.choose(vector_index, self.manifest.faiss_count)
        return (
            self.manifest.faiss_count != self.counts()["vectors"]
            or wanted != self.manifest.vector_index
            or not self.vectors_agree()
        )

    def _write_faiss(self, index: Any) -> None:
        """Replace the FAISS file with ``index`` (whole, or not at all), then record it."""
        vectors.write(self.path, index)
        # A kill here leaves the new file with the old generation and count in the manifest:
        # harmless, because readers trust the ids in the file, not these counters (the old
        # stamp names the old file, so a reader compares the ids).
        generation = self.manifest.faiss_generation + 1
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO manifest(key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [
                    ("faiss_generation", str(generation)),
                    ("faiss_count", str(index.ntotal)),
                    ("vector_index", vectors.kind_of(index)),
                    ("updated", now()),
                    (
                        STAMP_KEY,
                        freshness.stamp(conn, self.path / vectors.FAISS_NAME, index.ntotal),
                    ),
                ],
            )
            # Written under the lock from SQLite: the new file holds none of the deleted ids.
            conn.execute("DELETE FROM vectors_deleted")
        self.manifest = read_manifest(self.db, self.path)
        self._faiss = index
        self._deleted_at = None

    def vectors_agree(self) -> bool:
        """True when the FAISS file holds exactly the chunk ids that SQLite has vectors for."""
        index = self._load_faiss_file()
        return index is not None and bool(
            np.array_equal(vectors.faiss_ids(index), self.chunk_ids())
        )

    def _load_faiss_file(self) -> Any | None:
        index, problem = vectors.read(self.path, self.manifest.dimension, mapped=True)
        if problem and (self.path / vectors.FAISS_NAME).is_file():
            log.warning("%s; rebuilding it from SQLite", problem)
        return index

    def _deleted_ids(self) -> vectors.Excluded:
        """Ids deleted from SQLite that the FAISS file may still hold (read again only after a
        commit: ``PRAGMA data_version`` tells, without reading a table)."""
        version = self.data_version()
        if self._deleted is not None and self._deleted_at == version:
            return self._deleted
        try:
            rows = self.db.conn.execute("SELECT id FROM vectors_deleted").fetchall()
        except sqlite3.OperationalError:  # an index from before the table, not yet migrated
            rows = []
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        self._deleted = vectors.Excluded(ids)
        self._deleted_at = version
        return self._deleted

    def faiss_index(self) -> Any:
        """The FAISS index, verified against SQLite and brought in line with it if they disagree.

        A file that lags SQLite while another process writes is used as it is, minus the ids
        deleted since (``vectors_deleted``): that writer saves a current one when it is done.
        """
        if self._faiss is not None:
            return self._faiss
        file = self.path / vectors.FAISS_NAME
        before = freshness.identity(file)
        index = self._load_faiss_file()
        if (
            index is not None
            # The stamp spares a cold search reading every id of both (see freshness.py).
            and not freshness.holds(self.db.conn, file, index, before=before)
            and not np.array_equal(vectors.faiss_ids(index), self.chunk_ids())
        ):
            log.info("FAISS file and SQLite disagree; bringing vectors in line with SQLite")
            index = self._rebuild_faiss(index)
        elif index is None:
            index = self._rebuild_faiss(None)
        self._faiss = index
        return index

    def _rebuild_faiss(self, stale: Any | None) -> Any:
        """FAISS brought in line with SQLite, and saved too when no writer is at work."""
        kind = self.manifest.vector_index if stale is None else vectors.kind_of(stale)
        if self._lock.held:  # this process is the writer: it saves when it is done
            return self._updated_faiss(kind)
        try:
            self.lock()
        except (RagkitError, OSError):
            # A writer will save its own; or the index is read-only to us. A stale approximate
            # index serves as it is (deleted ids excluded); a small flat one is rebuilt in memory.
            if stale is not None and vectors.kind_of(stale) == vectors.IVF:
                return stale
            return self._build_faiss(vectors.FLAT, self.chunk_ids())
        try:
            # Built under the lock, so no writer can change SQLite between the build and the save.
            index = self._updated_faiss(kind)
            try:
                self._write_faiss(index)
            except (OSError, sqlite3.Error, RagkitError) as exc:
                log.warning("could not save the rebuilt %s (%s)", vectors.FAISS_NAME, exc)
            return index
        finally:
            self.unlock()

    def search_vectors(
        self, queries: NDArray[np.float32], k: int, *, allowed: NDArray[np.int64] | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Top-k (scores, ids) by inner product for each query row; ids -1 pad short results.

        ``allowed`` restricts the search to those ids, and it still returns min(k, allowed)
        hits per row. A few allowed ids under an approximate index are scored exactly from
        SQLite instead (cheaper than probing every list for them).
        """
        index = self.faiss_index()
        if (
            allowed is not None
            and len(allowed) <= EXACT_FILTERED
            and vectors.kind_of(index) == "ivf"
        ):
            return self._exact(queries, k, allowed)
        return vectors.search(index, queries, k, allowed=allowed, excluded=self._deleted_ids())

    def _exact(
        self, queries: NDArray[np.float32], k: int, ids: NDArray[np.int64]
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Exact top-k over the stored vectors of ``ids``; ids -1 pad short results."""
        q = np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        found = np.full((len(q), k), -1, dtype=np.int64)
        if not len(ids):
            return scores, found
        ids = np.asarray(ids, dtype=np.int64)
        sims = q @ self.vectors(ids).T
        top = min(k, len(ids))
        for row in range(len(q)):
            best = np.argpartition(-sims[row], top - 1)[:top]
            best = best[np.argsort(-sims[row][best], kind="stable")]
            scores[row, :top] = sims[row][best]
            found[row, :top] = ids[best]
        return scores, found

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

    def vectors(self, ids: Sequence[int] | NDArray[np.int64]) -> NDArray[np.float32]:
        """The stored vectors of these chunks, one row per id in the order given."""
        out = np.zeros((len(ids), self.manifest.dimension), dtype=np.float32)
        where: dict[int, list[int]] = {}
        for row, chunk_id in enumerate(ids):
            where.setdefault(int(chunk_id), []).append(row)
        unique = list(where)
        for start in range(0, len(unique), 500):
            part = unique[start : start + 500]
            marks = ",".join("?" * len(part))
            for chunk_id, blob in self.db.conn.execute(
                f"SELECT id, vector FROM chunks WHERE id IN ({marks}) AND vector IS NOT NULL", part
            ):
                out[where.pop(int(chunk_id))] = np.frombuffer(blob, dtype="<f4")
        if where:
            raise KeyError(f"no stored vector for chunk(s) {sorted(where)[:5]}")
        return out

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
