"""The index on disk: SQLite rows (the truth, vectors included) and the FAISS file derived from it.

Layout of ``indexes/<name>/``:

- ``ragkit.db``: SQLite in WAL mode, written through sqlite-utils. ``documents`` and ``chunks``
  rows, each chunk's float32 vector as a blob beside its text, an FTS5 table kept in step with
  ``chunks`` by triggers, and a ``manifest`` of key/value pairs (embedder, dimension, schema,
  FAISS generation and count).
- ``vectors.faiss``: an ``IndexIDMap2(IndexFlatIP)`` whose ids are the chunk row ids. It is only
  ever written whole to a temporary file and renamed into place; on open it is checked against
  SQLite (same ids) and rebuilt from SQLite when the two disagree.
- ``write.lock``: held (``flock``) by the one process allowed to write.

This is the only module that reads or writes index files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ragkit.errors import IndexLockedError, IndexMismatchError, IndexNotFoundError, RagkitError

if TYPE_CHECKING:
    import sqlite_utils

    from ragkit.chunking import Chunk

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_NAME = "ragkit.db"
FAISS_NAME = "vectors.faiss"
LOCK_NAME = "write.lock"
_FAISS_THREADS = threading.Lock()
_ADD_SLICE = 65_536  # rows per FAISS add: IndexFlat copies what it is given


def text_hash(text: str) -> str:
    """The key of a chunk's text in the embedding cache."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What an index was built with, and the state of its FAISS file."""

    embedder: str
    model: str
    dimension: int
    schema_version: int
    created: str
    updated: str
    tokens_embedded: int
    faiss_generation: int
    faiss_count: int
    source: str = ""  # absolute path of the folder (or file) this index mirrors

    @property
    def embedder_spec(self) -> str:
        """The ``--embedder`` value that reproduces this index's embedder."""
        return f"{self.embedder}:{self.model}"


@dataclass(frozen=True)
class DocumentRow:
    """One indexed file as the index remembers it."""

    id: int
    path: str
    sha256: str
    size: int
    mtime: float
    kind: str
    pages: int
    chunks: int
    status: str  # "indexed" once every chunk has its vector, "pending" before
    warnings: str


@dataclass(frozen=True)
class StoredChunk:
    """A chunk row joined with its document's path."""

    id: int
    path: str
    ordinal: int
    text: str
    page: int | None
    start_line: int
    end_line: int
    start_char: int
    end_char: int
    heading: str
    tokens: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    kind TEXT NOT NULL,
    pages INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    warnings TEXT NOT NULL DEFAULT '',
    indexed_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_sha256 ON documents(sha256);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    document_id INTEGER NOT NULL REFERENCES documents(id),
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    start_line INTEGER NOT NULL,
    end_line INTEGER NOT NULL,
    start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL,
    heading TEXT NOT NULL DEFAULT '',
    tokens INTEGER NOT NULL,
    text_hash TEXT NOT NULL,
    vector BLOB
);
CREATE INDEX IF NOT EXISTS chunks_document ON chunks(document_id, ordinal);
CREATE INDEX IF NOT EXISTS chunks_text_hash ON chunks(text_hash);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, heading, content='chunks', content_rowid='id', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text, heading) VALUES (new.id, new.text, new.heading);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text, heading)
        VALUES ('delete', old.id, old.text, old.heading);
END;
CREATE TRIGGER IF NOT EXISTS chunks_au AFTER UPDATE OF text, heading ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text, heading)
        VALUES ('delete', old.id, old.text, old.heading);
    INSERT INTO chunks_fts(rowid, text, heading) VALUES (new.id, new.text, new.heading);
END;
"""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _import_faiss() -> Any:
    import faiss

    return faiss


class Store:
    """One index folder: open it, change it under the write lock, search its vectors."""

    def __init__(self, path: Path, db: sqlite_utils.Database, manifest: Manifest) -> None:
        self.path = path
        self.db = db
        self.manifest = manifest
        self._faiss: Any = None
        self._lock_fd: int | None = None

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def exists(cls, path: Path) -> bool:
        """True when ``path`` holds an index."""
        return (path / DB_NAME).is_file()

    @classmethod
    def create(cls, path: Path, *, embedder: str, model: str, dimension: int) -> Store:
        """Make a new, empty index at ``path`` for vectors of the given embedder."""
        if cls.exists(path):
            raise RagkitError(f"an index already exists at {path}")
        path.mkdir(parents=True, exist_ok=True)
        db = cls._connect(path)
        now = _now()
        values = {
            "embedder": embedder,
            "model": model,
            "dimension": str(dimension),
            "schema_version": str(SCHEMA_VERSION),
            "created": now,
            "updated": now,
            "tokens_embedded": "0",
            "faiss_generation": "0",
            "faiss_count": "0",
        }
        with db.conn:
            db.conn.executemany(
                "INSERT OR IGNORE INTO manifest(key, value) VALUES (?, ?)", values.items()
            )
        return cls(path, db, cls._read_manifest(db))

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open the index at ``path``; raise IndexNotFoundError when there is none."""
        if not cls.exists(path):
            raise IndexNotFoundError(
                f"no index at {path}: build one with `ragkit index PATH --index {path.name}`"
                + (f" --index-dir {path.parent}" if path.parent != Path("indexes") else "")
            )
        db = cls._connect(path)
        manifest = cls._read_manifest(db)
        if manifest.schema_version != SCHEMA_VERSION:
            raise IndexMismatchError(
                f"index {path} has schema version {manifest.schema_version}, this ragkit reads"
                f" {SCHEMA_VERSION}: rebuild it with `ragkit index PATH --index {path.name}`"
                " into a new index"
            )
        return cls(path, db, manifest)

    @staticmethod
    def _connect(path: Path) -> sqlite_utils.Database:
        import sqlite_utils

        conn = sqlite3.connect(path / DB_NAME, timeout=30.0, isolation_level=None)
        db = sqlite_utils.Database(conn)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        # isolation_level=None is autocommit; `with conn:` is not a transaction in that mode,
        # so writes go through Store.transaction(), which issues BEGIN IMMEDIATE itself.
        conn.executescript(_SCHEMA)
        return db

    @staticmethod
    def _read_manifest(db: sqlite_utils.Database) -> Manifest:
        rows = dict(db.conn.execute("SELECT key, value FROM manifest").fetchall())
        try:
            return Manifest(
                embedder=rows["embedder"],
                model=rows["model"],
                dimension=int(rows["dimension"]),
                schema_version=int(rows["schema_version"]),
                created=rows["created"],
                updated=rows["updated"],
                tokens_embedded=int(rows["tokens_embedded"]),
                faiss_generation=int(rows["faiss_generation"]),
                faiss_count=int(rows["faiss_count"]),
                source=rows.get("source", ""),
            )
        except KeyError as exc:
            raise IndexMismatchError(
                f"the index manifest lacks {exc.args[0]!r}:"
                " run `ragkit doctor` or rebuild the index"
            ) from None

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
        self.manifest = self._read_manifest(self.db)

    # -- the write lock ----------------------------------------------------------------------

    def lock(self, *, wait: bool = False, timeout: float | None = None) -> None:
        """Take the one-writer lock, or raise IndexLockedError (``wait`` blocks instead)."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if not wait or (deadline is not None and time.monotonic() >= deadline):
                    os.close(fd)
                    raise IndexLockedError(
                        f"index {self.path.name} is being written by another process"
                        f" ({self._lock_holder()}): wait for it to finish, or pass --wait"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        self._lock_fd = fd

    def _lock_holder(self) -> str:
        try:
            return (self.path / LOCK_NAME).read_text().strip() or "unknown pid"
        except OSError:
            return "unknown pid"

    def unlock(self) -> None:
        """Release the write lock if this process holds it."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is committed, or none of it."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- documents and chunks ----------------------------------------------------------------

    def documents(self) -> dict[str, DocumentRow]:
        """Every document row, by path."""
        rows = self.db.conn.execute(
            "SELECT id, path, sha256, size, mtime, kind, pages, chunks, status, warnings"
            " FROM documents ORDER BY path"
        ).fetchall()
        return {r[1]: DocumentRow(*r) for r in rows}

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
        hashes = [text_hash(c.text) for c in chunks]
        with self.transaction() as conn:
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
                    _now(),
                ),
            )
            doc_id = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT INTO chunks(document_id, ordinal, text, page, start_line, end_line,"
                " start_char, end_char, heading, tokens, text_hash, vector)"
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
    def _cached_vectors(conn: sqlite3.Connection, hashes: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        unique = list(dict.fromkeys(hashes))
        for start in range(0, len(unique), 500):
            part = unique[start : start + 500]
            marks = ",".join("?" * len(part))
            for h, blob in conn.execute(
                f"SELECT text_hash, vector FROM chunks WHERE vector IS NOT NULL"
                f" AND text_hash IN ({marks})",
                part,
            ):
                found[h] = blob
        return found

    def move_document(self, old_path: str, new_path: str, *, mtime: float) -> None:
        """Re-point a document at its new path (a rename: same bytes, no re-embedding)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE documents SET path = ?, mtime = ? WHERE path = ?",
                (new_path, mtime, old_path),
            )

    def touch_document(self, path: str, *, mtime: float) -> None:
        """Record a new mtime for a document whose content did not change."""
        with self.transaction() as conn:
            conn.execute("UPDATE documents SET mtime = ? WHERE path = ?", (mtime, path))

    def remove_documents(self, paths: Iterable[str]) -> int:
        """Delete documents and their chunks; returns how many documents went."""
        removed = 0
        with self.transaction() as conn:
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
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE chunks SET vector = ? WHERE id = ?",
                ((data[i].tobytes(), int(ids[i])) for i in range(len(ids))),
            )
            # A document is searchable in full once its last chunk has a vector.
            conn.execute(
                "UPDATE documents SET status = 'indexed' WHERE status = 'pending' AND NOT EXISTS"
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

    def chunk_ids(self, *, path_glob: str | None = None) -> NDArray[np.int64]:
        """Ids of the chunks that have vectors, optionally only in documents matching a glob."""
        sql = "SELECT c.id FROM chunks c"
        args: tuple[Any, ...] = ()
        if path_glob:
            sql += " JOIN documents d ON d.id = c.document_id WHERE d.path GLOB ? AND"
            args = (path_glob,)
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

    def _all_vectors(self) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        rows = self.db.conn.execute(
            "SELECT id, vector FROM chunks WHERE vector IS NOT NULL ORDER BY id"
        ).fetchall()
        d = self.manifest.dimension
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), d)
        return ids, vectors.astype(np.float32, copy=False)

    def _build_faiss(self) -> Any:
        faiss = _import_faiss()
        ids, vectors = self._all_vectors()
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.manifest.dimension))
        for start in range(0, len(ids), _ADD_SLICE):
            index.add_with_ids(vectors[start : start + _ADD_SLICE], ids[start : start + _ADD_SLICE])
        return index

    def save_vectors(self) -> int:
        """Rebuild the FAISS file from SQLite, atomically; returns the new generation."""
        faiss = _import_faiss()
        index = self._build_faiss()
        final = self.path / FAISS_NAME
        tmp = self.path / f".{FAISS_NAME}.{os.getpid()}.tmp"
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        generation = self.manifest.faiss_generation + 1
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE manifest SET value = ? WHERE key = ?",
                [
                    (str(generation), "faiss_generation"),
                    (str(index.ntotal), "faiss_count"),
                    (_now(), "updated"),
                ],
            )
        self.manifest = self._read_manifest(self.db)
        self._faiss = index
        return generation

    def vectors_agree(self) -> bool:
        """True when the FAISS file holds exactly the chunk ids that SQLite has vectors for."""
        index = self._load_faiss_file()
        if index is None:
            return False
        faiss = _import_faiss()
        stored = np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))
        return bool(np.array_equal(stored, self.chunk_ids()))

    def _load_faiss_file(self) -> Any | None:
        file = self.path / FAISS_NAME
        if not file.is_file():
            return None
        faiss = _import_faiss()
        try:
            index = faiss.read_index(str(file))
        except RuntimeError as exc:
            log.warning("cannot read %s (%s); rebuilding it from SQLite", file, exc)
            return None
        if index.d != self.manifest.dimension or not isinstance(index, faiss.IndexIDMap2):
            return None
        return index

    def faiss_index(self) -> Any:
        """The FAISS index, verified against SQLite and rebuilt in memory if they disagree."""
        if self._faiss is not None:
            return self._faiss
        index = self._load_faiss_file()
        faiss = _import_faiss()
        if index is not None:
            stored = np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))
            if not np.array_equal(stored, self.chunk_ids()):
                log.warning("FAISS file and SQLite disagree; rebuilding vectors from SQLite")
                index = None
        if index is None:
            index = self._build_faiss()
        self._faiss = index
        return index

    def search_vectors(
        self, queries: NDArray[np.float32], k: int, *, allowed: NDArray[np.int64] | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Top-k (scores, ids) by inner product for each query row; ids -1 pad short results."""
        faiss = _import_faiss()
        index = self.faiss_index()
        q = np.ascontiguousarray(queries, dtype=np.float32)
        params = None
        if allowed is not None:
            params = faiss.SearchParameters()
            params.sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        if len(q) >= 8:
            scores, ids = index.search(q, k, params=params)
            return scores, ids
        # OpenMP threads make a single small query slower on few cores (17x at 10k vectors here).
        # The thread count is process-wide, so concurrent searches change it under one lock.
        with _FAISS_THREADS:
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                scores, ids = index.search(q, k, params=params)
            finally:
                faiss.omp_set_num_threads(threads)
        return scores, ids
