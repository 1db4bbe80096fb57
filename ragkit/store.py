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

Why equal ids are enough to trust the FAISS file: chunk ids are never reused (AUTOINCREMENT) and
a chunk's vector is written once, so an id names one vector for the life of the index.

The embedding cache is the ``chunks`` table itself: a new chunk whose ``cache_key`` matches a
stored chunk's takes that chunk's vector instead of being embedded. The key hashes the embedder,
model and dimension with the text, so a vector is only ever reused for the model that made it.

``Store.check`` verifies these parts against each other (``ragkit doctor``); ``Store.repair``
mends what it can without the source files. This is the only module that reads or writes index
files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import hashlib
import logging
import os
import re
import shlex
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
from ragkit.filters import Filters

if TYPE_CHECKING:
    import sqlite_utils

    from ragkit.chunking import Chunk

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: chunk ids never reused, cache_key names the model, unique ordinals
DB_NAME = "ragkit.db"
FAISS_NAME = "vectors.faiss"
LOCK_NAME = "write.lock"
_TMP_GLOB = f".{FAISS_NAME}.*.tmp"
_FAISS_THREADS = threading.Lock()
_ADD_SLICE = 65_536  # rows per FAISS add: IndexFlat copies what it is given


def cache_key(text: str, *, embedder: str, model: str, dimension: int) -> str:
    """The key of a chunk's vector in the embedding cache: which model embedded which text."""
    head = f"{embedder}\0{model}\0{dimension}\0".encode()
    return hashlib.sha256(head + text.encode("utf-8")).hexdigest()


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
    page_label: str | None = None  # a PDF page's printed label when it differs from its number


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an index, and what fixes it."""

    code: str  # stable short name: "faiss", "manifest", "fts", "orphans", "pending"...
    detail: str  # what was found
    fix: str  # what `ragkit doctor --repair` does about it, or what to run instead
    repairable: bool  # True when Store.repair() fixes it


@dataclass(frozen=True)
class HealthReport:
    """What ``Store.check`` found, and after ``Store.repair`` what it did."""

    index: str
    documents: int = 0
    chunks: int = 0
    vectors: int = 0  # chunks with a vector in SQLite
    faiss_vectors: int | None = None  # vectors in the FAISS file; None when it cannot be read
    problems: tuple[Problem, ...] = ()
    repaired: tuple[str, ...] = ()  # what repair() did, in order

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


# Row conditions shared by check() and repair().
_ORPHAN = "document_id NOT IN (SELECT id FROM documents)"
_CHUNKS_MISSING = "chunks != (SELECT count(*) FROM chunks WHERE document_id = documents.id)"
_LACKS_VECTORS = "EXISTS (SELECT 1 FROM chunks WHERE document_id = documents.id AND vector IS NULL)"

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
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id INTEGER NOT NULL REFERENCES documents(id),
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    page_label TEXT,
    start_line INTEGER NOT NULL,
    end_line INTEGER NOT NULL,
    start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL,
    heading TEXT NOT NULL DEFAULT '',
    tokens INTEGER NOT NULL,
    cache_key TEXT NOT NULL,
    vector BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS chunks_document ON chunks(document_id, ordinal);
CREATE INDEX IF NOT EXISTS chunks_cache_key ON chunks(cache_key);
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


# Manifest keys that only keep count or record history, with the value a fresh index has.
_BOOKKEEPING = {
    "created": "",
    "updated": "",
    "tokens_embedded": "0",
    "faiss_generation": "0",
    "faiss_count": "0",
    "source": "",
}


def _faiss_ids(index: Any) -> NDArray[np.int64]:
    """The ids an IndexIDMap2 holds, sorted."""
    faiss = _import_faiss()
    return np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))


def _index_flags(path: Path) -> str:
    """The ``--index`` (and ``--index-dir``) flags that name the index at ``path``."""
    flags = f" --index {shlex.quote(path.name)}"
    if path.parent != Path("indexes"):
        flags += f" --index-dir {shlex.quote(str(path.parent))}"
    return flags


def _has_page_label(conn: sqlite3.Connection) -> bool:
    return any(row[1] == "page_label" for row in conn.execute("PRAGMA table_info(chunks)"))


def _add_page_label_column(conn: sqlite3.Connection) -> None:
    """Give an index made before page labels its (nullable) ``chunks.page_label`` column."""
    if not _has_page_label(conn):
        try:
            conn.execute("ALTER TABLE chunks ADD COLUMN page_label TEXT")
        except sqlite3.OperationalError:
            pass  # a read-only index: searches read its labels as NULL (see Store.chunks)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _import_faiss() -> Any:
    import faiss

    return faiss


# Lucene's English stop set (EnglishAnalyzer, also Anserini's default): left out of keyword
# queries because they match nearly every chunk and only add noise to BM25's sum.
# fmt: off
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
})
# fmt: on
# Runs of letters and digits: what the unicode61 tokenizer keeps as one token (it splits at
# everything else, underscores included).
_TERM = re.compile(r"[^\W_]+")


def fts_match(query: str) -> str:
    """User text as a safe FTS5 query: each word a quoted string, OR-joined, ranked by BM25.

    Quoting makes every operator (AND, OR, NOT, NEAR, ``*``, ``^``, ``:``, parentheses, ``-``)
    a plain word, so no user text can break the FTS syntax. Stopwords are dropped unless the
    query has nothing else; repeated words stay, weighting them as BM25's query term frequency.
    Returns "" when the text has no words at all.
    """
    terms = [t.lower() for t in _TERM.findall(query)]
    content = [t for t in terms if t not in STOPWORDS] or terms
    return " OR ".join(f'"{t}"' for t in content)


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
        """True when ``path`` holds an index (a database with its manifest)."""
        file = path / DB_NAME
        if not file.is_file():
            return False
        conn = sqlite3.connect(file, timeout=30.0)
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
        conn = db.conn
        # Tables and manifest in one transaction: a kill leaves no index or a whole one.
        conn.executescript("BEGIN IMMEDIATE;\n" + _SCHEMA)
        try:
            if conn.execute("SELECT count(*) FROM manifest").fetchone()[0]:
                raise RagkitError(
                    f"another process created an index at {path} just now: run the command again"
                )
            conn.executemany("INSERT INTO manifest(key, value) VALUES (?, ?)", values.items())
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        conn.execute("COMMIT")
        return cls(path, db, cls._read_manifest(db, path))

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open the index at ``path``; raise IndexNotFoundError when there is none."""
        if not cls.exists(path):
            raise IndexNotFoundError(
                f"no index at {path}: build one with `ragkit index PATH{_index_flags(path)}`"
            )
        db = cls._connect(path)
        try:
            manifest = cls._read_manifest(db, path)
            _add_page_label_column(db.conn)
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
        return db

    @staticmethod
    def _read_manifest(db: sqlite_utils.Database, path: Path) -> Manifest:
        rows = dict(db.conn.execute("SELECT key, value FROM manifest").fetchall())
        try:
            embedder, model = str(rows["embedder"]), str(rows["model"])
            dimension, schema = int(rows["dimension"]), int(rows["schema_version"])
        except (KeyError, ValueError) as exc:
            raise IndexMismatchError(
                f"the manifest of index {path} is damaged ({exc!r}): the embedder that built it"
                " is unknown; build a new index with `ragkit index PATH --index NEW_NAME`"
            ) from None

        # Bookkeeping a damaged manifest may lack has safe defaults; `ragkit doctor` reports it.
        def book(key: str) -> str:
            value = str(rows.get(key, _BOOKKEEPING[key]))
            return (
                value if value.isdigit() or not _BOOKKEEPING[key].isdigit() else _BOOKKEEPING[key]
            )

        return Manifest(
            embedder=embedder,
            model=model,
            dimension=dimension,
            schema_version=schema,
            created=book("created"),
            updated=book("updated"),
            tokens_embedded=int(book("tokens_embedded")),
            faiss_generation=int(book("faiss_generation")),
            faiss_count=int(book("faiss_count")),
            source=book("source"),
        )

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
        self.manifest = self._read_manifest(self.db, self.path)

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
        # Another writer may have finished while this one waited: start from what it left.
        self.manifest = self._read_manifest(self.db, self.path)
        self._faiss = None

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
        m = self.manifest
        hashes = [
            cache_key(c.text, embedder=m.embedder, model=m.model, dimension=m.dimension)
            for c in chunks
        ]
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
        label = "c.page_label" if _has_page_label(self.db.conn) else "NULL"
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

    def chunk_ids(
        self, *, path_glob: str | None = None, filters: Filters | None = None
    ) -> NDArray[np.int64]:
        """Ids of the chunks that have vectors, optionally only those passing filters or a glob."""
        sql = "SELECT c.id FROM chunks c"
        args: list[Any] = []
        if path_glob or (filters is not None and filters.active):
            where, args = (filters or Filters()).where()
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

    def _all_vectors(self) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        d = self.manifest.dimension
        bad = self._wrong_size_vectors()
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

    def _wrong_size_vectors(self) -> int:
        return int(
            self.db.conn.execute(
                "SELECT count(*) FROM chunks WHERE vector IS NOT NULL AND length(vector) != ?",
                (4 * self.manifest.dimension,),
            ).fetchone()[0]
        )

    def _build_faiss(self) -> Any:
        faiss = _import_faiss()
        ids, vectors = self._all_vectors()
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.manifest.dimension))
        for start in range(0, len(ids), _ADD_SLICE):
            index.add_with_ids(vectors[start : start + _ADD_SLICE], ids[start : start + _ADD_SLICE])
        return index

    def save_vectors(self) -> int:
        """Rebuild the FAISS file from SQLite, atomically; returns the new generation."""
        index = self._build_faiss()
        self._write_faiss(index)
        return self.manifest.faiss_generation

    def _write_faiss(self, index: Any) -> None:
        """Replace the FAISS file with ``index`` (whole, or not at all), then record it."""
        faiss = _import_faiss()
        for stale in self.path.glob(_TMP_GLOB):  # left by a writer that was killed
            stale.unlink(missing_ok=True)
        final = self.path / FAISS_NAME
        tmp = self.path / f".{FAISS_NAME}.{os.getpid()}.tmp"
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        self._replace(tmp, final)
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
                    ("updated", _now()),
                ],
            )
        self.manifest = self._read_manifest(self.db, self.path)
        self._faiss = index

    def _replace(self, tmp: Path, final: Path) -> None:
        """Rename ``tmp`` over ``final`` and make the rename durable."""
        os.replace(tmp, final)
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def vectors_agree(self) -> bool:
        """True when the FAISS file holds exactly the chunk ids that SQLite has vectors for."""
        index = self._load_faiss_file()
        return index is not None and bool(np.array_equal(_faiss_ids(index), self.chunk_ids()))

    def _load_faiss_file(self) -> Any | None:
        index, problem = self._read_faiss_file()
        if problem and (self.path / FAISS_NAME).is_file():
            log.warning("%s; rebuilding it from SQLite", problem)
        return index

    def _read_faiss_file(self) -> tuple[Any | None, str]:
        """The FAISS file's index, or None and what is wrong with it."""
        file = self.path / FAISS_NAME
        if not file.is_file():
            return None, f"{FAISS_NAME} is missing"
        faiss = _import_faiss()
        try:
            index = faiss.read_index(str(file))
        except RuntimeError as exc:
            return None, f"cannot read {FAISS_NAME} ({' '.join(str(exc).split())[:120]})"
        if not isinstance(index, faiss.IndexIDMap2):
            return None, f"{FAISS_NAME} is a {type(index).__name__}, not an IndexIDMap2"
        if index.d != self.manifest.dimension:
            return (
                None,
                f"{FAISS_NAME} holds {index.d}-dim vectors, the index {self.manifest.dimension}",
            )
        return index, ""

    def faiss_index(self) -> Any:
        """The FAISS index, verified against SQLite and rebuilt from it if they disagree."""
        if self._faiss is not None:
            return self._faiss
        index = self._load_faiss_file()
        if index is not None and not np.array_equal(_faiss_ids(index), self.chunk_ids()):
            log.info("FAISS file and SQLite disagree; rebuilding vectors from SQLite")
            index = None
        if index is None:
            index = self._rebuild_faiss()
        self._faiss = index
        return index

    def _rebuild_faiss(self) -> Any:
        """FAISS rebuilt from SQLite, and saved too when no writer is at work."""
        if self._lock_fd is not None:  # this process is the writer: it saves when it is done
            return self._build_faiss()
        try:
            self.lock()
        except (IndexLockedError, OSError):
            # A writer will save its own; or the index is read-only to us. Build in memory.
            return self._build_faiss()
        try:
            # Built under the lock, so no writer can change SQLite between the build and the save.
            index = self._build_faiss()
            try:
                self._write_faiss(index)
            except (OSError, sqlite3.Error) as exc:
                log.warning("could not save the rebuilt %s (%s)", FAISS_NAME, exc)
            return index
        finally:
            self.unlock()

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

    # -- keyword search ----------------------------------------------------------------------

    def keyword_search(
        self, query: str, k: int, *, filters: Filters | None = None
    ) -> list[tuple[int, float]]:
        """Top-k (chunk id, BM25 score) for the words of ``query``, best first.

        FTS5's ``bm25()`` (k1=1.2, b=0.75, Porter-stemmed terms) is negated so that higher is
        better, as for cosine. Only chunks that have vectors are ranked, the same set dense
        search sees; ``filters`` are applied inside the query, before ranking.
        """
        match = fts_match(query)
        if not match or k < 1:
            return []
        where, args = (filters or Filters()).where()
        rows = self.db.conn.execute(
            "SELECT chunks_fts.rowid, bm25(chunks_fts) FROM chunks_fts"
            " JOIN chunks c ON c.id = chunks_fts.rowid JOIN documents d ON d.id = c.document_id"
            f" WHERE chunks_fts MATCH ? AND c.vector IS NOT NULL AND {where}"
            " ORDER BY bm25(chunks_fts) LIMIT ?",
            [match, *args, k],
        ).fetchall()
        return [(int(i), -float(score)) for i, score in rows]

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
        conn = self.db.conn
        problems: list[Problem] = []

        def found(code: str, detail: str, fix: str, repairable: bool = True) -> None:
            problems.append(Problem(code, detail, fix, repairable))

        quick = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
        if quick != ["ok"]:
            found(
                "sqlite",
                f"the database is damaged: {'; '.join(quick[:3])}",
                "build a new index: `ragkit index PATH --index NEW_NAME`",
                repairable=False,
            )
        if bad := self._bad_bookkeeping():
            found("manifest", f"manifest lacks or garbles {', '.join(bad)}", "rewrite them")

        sqlite_ids = self.chunk_ids()
        index, unreadable = self._read_faiss_file()
        if index is None:
            found("faiss", unreadable, "rebuild it from SQLite")
        else:
            ids = _faiss_ids(index)
            if not np.array_equal(ids, sqlite_ids):
                found(
                    "faiss",
                    f"{FAISS_NAME} holds {ids.size} vectors, SQLite {sqlite_ids.size}:"
                    f" {np.setdiff1d(ids, sqlite_ids).size} ids only in FAISS,"
                    f" {np.setdiff1d(sqlite_ids, ids).size} only in SQLite",
                    "rebuild it from SQLite",
                )
            elif differ := self._faiss_vectors_differ(index):
                found(
                    "faiss",
                    f"{differ} vectors in {FAISS_NAME} differ from SQLite's",
                    "rebuild it from SQLite",
                )
            if index.ntotal != self.manifest.faiss_count:
                found(
                    "faiss-count",
                    f"the manifest says {FAISS_NAME} holds {self.manifest.faiss_count} vectors,"
                    f" it holds {index.ntotal}",
                    "rebuild the FAISS file and record its count",
                )
        if temps := list(self.path.glob(_TMP_GLOB)):
            found(
                "temp-files",
                f"{len(temps)} temporary FAISS files left by an interrupted write",
                "delete them",
            )

        def count(sql: str, *args: Any) -> int:
            return int(conn.execute(sql, args).fetchone()[0])

        if n := self._wrong_size_vectors():
            found(
                "vectors",
                f"{n} stored vectors are not {self.manifest.dimension} floats long",
                "clear them; the next `ragkit index` embeds those chunks again",
            )
        if n := count(f"SELECT count(*) FROM chunks WHERE {_ORPHAN}"):
            found("orphans", f"{n} chunks belong to no document", "delete them")
        try:
            conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
        except sqlite3.DatabaseError as exc:
            found(
                "fts",
                f"the keyword index does not match the chunks ({exc})",
                "rebuild the keyword index",
            )
        if n := count(f"SELECT count(*) FROM documents WHERE {_CHUNKS_MISSING}"):
            found(
                "chunks",
                f"{n} documents do not have the chunks they should",
                "mark them so the next `ragkit index` reads them again",
            )
        if n := count(
            f"SELECT count(*) FROM documents WHERE status = 'indexed' AND {_LACKS_VECTORS}"
        ):
            found(
                "status",
                f"{n} documents marked indexed lack vectors",
                "mark them pending; the next `ragkit index` embeds what they lack",
            )
        pending = count("SELECT count(*) FROM documents WHERE status = 'pending'")
        if pending:
            waiting = count("SELECT count(*) FROM chunks WHERE vector IS NULL")
            source = shlex.quote(self.manifest.source) if self.manifest.source else "PATH"
            found(
                "pending",
                f"{pending} documents are not fully indexed ({waiting} chunks wait for vectors):"
                " an index run was interrupted, or a repair marked them to be read again",
                f"run `ragkit index {source}{_index_flags(self.path)}`; doctor does not embed",
                repairable=False,
            )
        counts = self.counts()
        return HealthReport(
            index=str(self.path),
            documents=counts["documents"],
            chunks=counts["chunks"],
            vectors=counts["vectors"],
            faiss_vectors=None if index is None else int(index.ntotal),
            problems=tuple(problems),
        )

    def _bad_bookkeeping(self) -> list[str]:
        rows = dict(self.db.conn.execute("SELECT key, value FROM manifest").fetchall())
        bad = []
        for key, default in _BOOKKEEPING.items():
            if key == "source":
                continue  # set by the first `ragkit index`; an index built by hand has none
            value = rows.get(key)
            if value is None or (default.isdigit() and not str(value).isdigit()):
                bad.append(key)
        return bad

    def _faiss_vectors_differ(self, index: Any) -> int:
        """How many vectors in ``index`` are not bit-for-bit those SQLite holds for their ids."""
        faiss = _import_faiss()
        if index.ntotal == 0 or self._wrong_size_vectors():
            return 0
        order = faiss.vector_to_array(index.id_map).astype(np.int64)
        held = index.index.reconstruct_n(0, index.ntotal)
        ids, vectors = self._all_vectors()  # sorted by id, the same set as `order`
        mine = vectors[np.searchsorted(ids, order)]
        return int(np.count_nonzero(np.any(held != mine, axis=1)))

    def repair(self) -> HealthReport:
        """Fix what ``check`` finds that can be fixed without the source files (takes the lock).

        Returns the state afterwards, with ``repaired`` saying what was done. Chunks left
        without vectors are for the next ``ragkit index`` to embed.
        """
        self.lock()
        before = {p.code for p in self.check().problems}
        done: list[str] = []
        with self.transaction() as conn:
            if "manifest" in before:
                bad = self._bad_bookkeeping()
                conn.executemany(
                    "INSERT INTO manifest(key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [(k, _BOOKKEEPING[k]) for k in bad],
                )
                done.append(f"reset manifest {', '.join(bad)}")
            if "orphans" in before:
                n = conn.execute(f"DELETE FROM chunks WHERE {_ORPHAN}").rowcount
                done.append(f"deleted {n} orphan chunks")
            if "vectors" in before:
                size = 4 * self.manifest.dimension
                n = conn.execute(
                    "UPDATE chunks SET vector = NULL"
                    " WHERE vector IS NOT NULL AND length(vector) != ?",
                    (size,),
                ).rowcount
                done.append(f"cleared {n} vectors of the wrong size")
            if "chunks" in before:
                # An empty hash never matches a file, so the next run reads and re-chunks them;
                # until then what is left of them stays searchable.
                n = conn.execute(
                    "UPDATE documents SET sha256 = '', status = 'pending', chunks ="
                    f" (SELECT count(*) FROM chunks WHERE document_id = documents.id)"
                    f" WHERE {_CHUNKS_MISSING}"
                ).rowcount
                done.append(f"marked {n} documents to be read again")
            if before & {"vectors", "status"}:
                n = conn.execute(
                    "UPDATE documents SET status = 'pending'"
                    f" WHERE status = 'indexed' AND {_LACKS_VECTORS}"
                ).rowcount
                done.append(f"marked {n} documents pending")
            if "fts" in before:
                conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')")
                done.append("rebuilt the keyword index")
        if done or before & {"faiss", "faiss-count", "temp-files"}:
            self.save_vectors()  # also deletes temporary files
            done.append(f"rebuilt {FAISS_NAME} from SQLite ({self.manifest.faiss_count} vectors)")
        after = self.check()
        return dataclasses.replace(after, repaired=tuple(done))

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
