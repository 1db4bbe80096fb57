"""The index's SQLite schema, its manifest, the rows it holds, and opening a connection."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shlex
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ragkit.errors import IndexMismatchError
from ragkit.store.disk import writable

SCHEMA_VERSION = 2  # 2: chunk ids never reused, cache_key names the model, unique ordinals
DB_NAME = "ragkit.db"
LOCK_NAME = "write.lock"


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
    faiss_count: int  # live vectors in the FAISS file (deleted ones it still holds excluded)
    source: str = ""  # absolute path of the folder (or file) this index mirrors
    vector_index: str = "flat"  # the FAISS file's kind: "flat" (exact) or "hnsw" (approximate)

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


class StoredChunk(NamedTuple):
    """A chunk row joined with its document's path (a tuple: a search builds k of them, and a
    frozen dataclass costs ~8x as much to make)."""

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


SCHEMA = (
    """
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
    + """
-- Added to schema 2 without a version bump (``migrate`` adds them to older files on open).
-- Partial indexes: which chunks have vectors and which wait for one, without reading the rows
-- (a chunk row carries its vector, so scanning chunks reads every vector).
CREATE INDEX IF NOT EXISTS chunks_with_vector ON chunks(id) WHERE vector IS NOT NULL;
CREATE INDEX IF NOT EXISTS chunks_pending ON chunks(id) WHERE vector IS NULL;
-- Ids whose vectors left SQLite but may still be in the FAISS file: searches exclude them, so
-- an approximate index (which cannot remove) never returns a deleted chunk. Kept by triggers,
-- in the same transaction as the delete; trimmed when a new FAISS file is written.
CREATE TABLE IF NOT EXISTS vectors_deleted (id INTEGER PRIMARY KEY);
CREATE TRIGGER IF NOT EXISTS chunks_vector_ad AFTER DELETE ON chunks
WHEN old.vector IS NOT NULL BEGIN
    INSERT OR IGNORE INTO vectors_deleted(id) VALUES (old.id);
END;
CREATE TRIGGER IF NOT EXISTS chunks_vector_au AFTER UPDATE OF vector ON chunks
WHEN old.vector IS NOT NULL AND new.vector IS NULL BEGIN
    INSERT OR IGNORE INTO vectors_deleted(id) VALUES (old.id);
END;
"""
)
# The last object SCHEMA creates: a database without it predates the statements above.
_NEWEST = "chunks_vector_au"


def needs_migration(conn: sqlite3.Connection) -> bool:
    """True when the database lacks objects this version of schema 2 adds."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (_NEWEST,)).fetchone()
    return row is None


def migrate(conn: sqlite3.Connection) -> None:
    """Add what ``needs_migration`` finds missing, in one transaction (call under the lock)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(SCHEMA):
            conn.execute(statement)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """``script`` split into complete SQL statements (triggers hold semicolons of their own)."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    return out


# Manifest keys that only keep count or record history, with the value a fresh index has.
BOOKKEEPING = {
    "created": "",
    "updated": "",
    "tokens_embedded": "0",
    "faiss_generation": "0",
    "faiss_count": "0",
    "source": "",
}


def index_flags(path: Path) -> str:
    """The ``--index`` (and ``--index-dir``) flags that name the index at ``path``."""
    flags = f" --index {shlex.quote(path.name)}"
    if path.parent != Path("indexes"):
        flags += f" --index-dir {shlex.quote(str(path.parent))}"
    return flags


def has_page_label(conn: sqlite3.Connection) -> bool:
    """True when ``chunks`` has the ``page_label`` column (indexes made before it lack it)."""
    return any(row[1] == "page_label" for row in conn.execute("PRAGMA table_info(chunks)"))


def add_page_label_column(conn: sqlite3.Connection) -> bool:
    """Give an index made before page labels its (nullable) ``chunks.page_label`` column.

    Returns whether the column is there afterwards: a read-only index keeps reading NULL labels.
    """
    if has_page_label(conn):
        return True
    try:
        conn.execute("ALTER TABLE chunks ADD COLUMN page_label TEXT")
    except sqlite3.OperationalError:
        return False
    return True


def now() -> str:
    """The current UTC time, as the manifest records it."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_only(path: Path) -> bool:
    """True when the index folder at ``path`` (or its database) cannot be written by us."""
    file = path / DB_NAME
    return not writable(path) or (file.exists() and not os.access(file, os.W_OK))


def open_db(path: Path) -> sqlite3.Connection:
    """A connection to the database at ``path``: read-write, or read-only on read-only storage."""
    file = path / DB_NAME
    # Not bound to the opening thread: an open Index gives each thread its own Store, and
    # closes them all from whichever thread calls close().
    if not read_only(path):
        return sqlite3.connect(file, timeout=30.0, isolation_level=None, check_same_thread=False)
    # WAL readers need a -shm file that read-only storage cannot hold: with no commits waiting
    # in a -wal file, the database file alone is the whole index, and nobody can change it
    # there, so it is opened immutable; otherwise read-only through the existing -wal/-shm.
    wal = file.with_name(DB_NAME + "-wal")
    mode = "mode=ro" if wal.is_file() and wal.stat().st_size else "immutable=1"
    uri = f"{file.resolve().as_uri()}?{mode}"
    return sqlite3.connect(
        uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False
    )


@dataclass
class Database:
    """The index database's connection, as the store reaches it (``db.conn``).

    A plain ``sqlite3`` connection: the store writes its own SQL, and sqlite-utils' Database
    cost a cold search ~0.2 s (its import, and a scan of every installed package's plugins).
    """

    conn: sqlite3.Connection


def connect(path: Path) -> Database:
    """The index database at ``path`` in WAL mode, autocommit (writes use BEGIN IMMEDIATE)."""
    conn = open_db(path)
    db = Database(conn)
    if read_only(path):
        return db
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    # isolation_level=None is autocommit; `with conn:` is not a transaction in that mode,
    # so writes go through Store.transaction(), which issues BEGIN IMMEDIATE itself.
    return db


def read_manifest(db: Database, path: Path) -> Manifest:
    """The manifest of the index at ``path``; IndexMismatchError when it names no embedder."""
    rows = dict(db.conn.execute("SELECT key, value FROM manifest").fetchall())
    return manifest_from_rows(
        {str(k): str(v) for k, v in rows.items()},
        path,
        vector_index=str(rows.get("vector_index", "flat")),
    )


def manifest_from_rows(rows: dict[str, str], where: object, *, vector_index: str) -> Manifest:
    """A manifest from its key/value rows (either store); IndexMismatchError when it names no
    embedder. ``where`` names the index in the message; ``vector_index`` is the store's kind."""
    try:
        embedder, model = rows["embedder"], rows["model"]
        dimension, schema = int(rows["dimension"]), int(rows["schema_version"])
    except (KeyError, ValueError) as exc:
        raise IndexMismatchError(
            f"the manifest of index {where} is damaged ({exc!r}): the embedder that built it"
            " is unknown; build a new index with `ragkit index PATH --index NEW_NAME`"
        ) from None

    # Bookkeeping a damaged manifest may lack has safe defaults; `ragkit doctor` reports it.
    def book(key: str) -> str:
        value = rows.get(key, BOOKKEEPING[key])
        return value if value.isdigit() or not BOOKKEEPING[key].isdigit() else BOOKKEEPING[key]

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
        vector_index=vector_index,
    )
