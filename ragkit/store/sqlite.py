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
from ragkit.store import health, keyword, vectors
from ragkit.store.disk import storage_errors
from ragkit.store.health import HealthReport
from ragkit.store.lock import WriteLock
from ragkit.store.schema import (
    DB_NAME,
    SCHEMA,
    SCHEMA_VERSION,
    DocumentRow,
    Manifest,
    StoredChunk,
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
    import sqlite_utils

    from ragkit.chunking import Chunk

log = logging.getLogger(__name__)


class Store:
    """One index folder: open it, change it under the write lock, search its vectors."""

    def __init__(self, path: Path, db: sqlite_utils.Database, manifest: Manifest) -> None:
        self.path = path
        self.db = db
        self.manifest = manifest
        self._faiss: Any = None
        self._deleted: NDArray[np.int64] | None = None  # vectors_deleted when _faiss was loaded
        self._lock = WriteLock(path)
        self._bulk: list[int] | None = None  # [chunks written, chunks per commit] inside bulk()

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
            self.lock()
        except (IndexLockedError, OSError):
            return
        try:
            if needs_migration(self.db.conn):
                migrate(self.db.conn)
                log.info("added keyword and vector indexes to %s", self.path)
        except sqlite3.OperationalError as exc:  # e.g. a read-only database file
            log.warning("could not update the layout of %s (%s)", self.path, exc)
        finally:
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

    # -- the write lock ----------------------------------------------------------------------

    def lock(self, *, wait: bool = False, timeout: float | None = None) -> None:
        """Take the one-writer lock, or raise IndexLockedError (``wait`` blocks instead)."""
        with storage_errors(self.path):  # read-only storage, or no space for the lock file
            taken = self._lock.acquire(wait=wait, timeout=timeout)
        if not taken:
            return
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
        documents of the open transaction, which the next run reads again. An exception
        inside rolls back the open transaction and propagates.
        """
        if self._bulk is not None:
            yield
            return
        self._bulk = [0, max(1, chunks_per_commit)]
        conn = self.db.conn
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            if conn.in_transaction:
                conn.execute("COMMIT")
        finally:
            self._bulk = None

    @contextlib.contextmanager
    def _write(self, chunks: int = 1) -> Iterator[sqlite3.Connection]:
        """A write transaction of its own, or a share of the open ``bulk()`` one."""
        if self._bulk is None:
            with self.transaction() as conn:
                yield conn
            return
        conn = self.db.conn
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
        yield conn
        self._bulk[0] += chunks
        if self._bulk[0] >= self._bulk[1]:
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
                " start_char, end_char, heading, tokens, cache_key, vector)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

    def pending(self) -> list[tuple[int, str, int]]:
        """(id, text, tokens) of every chunk still waiting for its vector, in document order."""
        return [
            (int(i), str(t), int(n))
            for i, t, n in self.db.conn.execute(
                "SELECT id, text, tokens FROM chunks WHERE vector IS NULL"
                " ORDER BY document_id, ordinal"
            )
        ]

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
        for start in range(0, len(ids), 500):
            part = [int(i) for i in ids[start : start + 500]]
            marks = ",".join("?" * len(part))
            for row in self.db.conn.execute(
                "SELECT c.id, d.path, c.ordinal, c.text, c.page, c.start_line, c.end_line,"
                " c.start_char, c.end_char, c.heading, c.tokens FROM chunks c"
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

    def all_vectors(self) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        d = self.manifest.dimension
        bad = self.wrong_size_vectors()
        if bad:
            raise RagkitError(
                f"{bad} stored vectors of index {self.path.name} are not {d} floats long:"
                f" run `ragkit doctor --repair --index {self.path.name}`, then `ragkit index` again"
            )
        rows = self.db.conn.execute(
            "SELECT id, vector FROM chunks WHERE vector IS NOT NULL ORDER BY id"
        ).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), d)
        return ids, vectors.astype(np.float32, copy=False)

    def wrong_size_vectors(self) -> int:
        return int(
            self.db.conn.execute(
                "SELECT count(*) FROM chunks WHERE vector IS NOT NULL AND length(vector) != ?",
                (4 * self.manifest.dimension,),
            ).fetchone()[0]
        )

    def _build_faiss(self) -> Any:
        ids, stored = self.all_vectors()
        return vectors.build(ids, stored, self.manifest.dimension)

    def save_vectors(self) -> int:
        """Rebuild the FAISS file from SQLite, atomically; returns the new generation."""
        index = self._build_faiss()
        self._write_faiss(index)
        return self.manifest.faiss_generation

    def _write_faiss(self, index: Any) -> None:
        """Replace the FAISS file with ``index`` (whole, or not at all), then record it."""
        vectors.write(self.path, index)
        # A kill here leaves the new file with the old generation and count in the manifest:
        # harmless, because readers trust the ids in the file, not these counters.
        generation = self.manifest.faiss_generation + 1
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO manifest(key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [
                    ("faiss_generation", str(generation)),
                    ("faiss_count", str(index.ntotal)),
                    ("updated", now()),
                ],
            )
        self.manifest = read_manifest(self.db, self.path)
        self._faiss = index

    def vectors_agree(self) -> bool:
        """True when the FAISS file holds exactly the chunk ids that SQLite has vectors for."""
        index = self._load_faiss_file()
        return index is not None and bool(
            np.array_equal(vectors.faiss_ids(index), self.chunk_ids())
        )

    def _load_faiss_file(self) -> Any | None:
        index, problem = vectors.read(self.path, self.manifest.dimension)
        if problem and (self.path / vectors.FAISS_NAME).is_file():
            log.warning("%s; rebuilding it from SQLite", problem)
        return index

    def faiss_index(self) -> Any:
        """The FAISS index, verified against SQLite and rebuilt from it if they disagree."""
        if self._faiss is not None:
            return self._faiss
        index = self._load_faiss_file()
        if index is not None and not np.array_equal(vectors.faiss_ids(index), self.chunk_ids()):
            log.info("FAISS file and SQLite disagree; rebuilding vectors from SQLite")
            index = None
        if index is None:
            index = self._rebuild_faiss()
        self._faiss = index
        return index

    def _rebuild_faiss(self) -> Any:
        """FAISS rebuilt from SQLite, and saved too when no writer is at work."""
        if self._lock.held:  # this process is the writer: it saves when it is done
            return self._build_faiss()
        try:
            self.lock()
        except (RagkitError, OSError):
            # A writer will save its own; or the index is read-only to us. Build in memory.
            return self._build_faiss()
        try:
            # Built under the lock, so no writer can change SQLite between the build and the save.
            index = self._build_faiss()
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
        """Top-k (scores, ids) by inner product for each query row; ids -1 pad short results."""
        return vectors.search(self.faiss_index(), queries, k, allowed=allowed)

    # -- keyword search ----------------------------------------------------------------------

    def keyword_search(
        self, query: str, k: int, *, filters: Filters | None = None
    ) -> list[tuple[int, float]]:
        """Top-k (chunk id, BM25 score) for the words of ``query``, best first.

        FTS5's ``bm25()`` (k1=1.2, b=0.75, Porter-stemmed terms) is negated so that higher is
        better, as for cosine. Only chunks that have vectors are ranked, the same set dense
        search sees; ``filters`` are applied inside the query, before ranking.
        """
        return keyword.keyword_search(self.db.conn, query, k, filters=filters)

    def vectors(self, ids: Sequence[int]) -> NDArray[np.float32]:
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
