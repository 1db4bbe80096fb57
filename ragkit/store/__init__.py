"""The index on disk: SQLite rows (the truth, vectors included) and the FAISS file derived from it.

Layout of ``indexes/<name>/``:

- ``ragkit.db``: SQLite in WAL mode, written with plain ``sqlite3``. ``documents`` and ``chunks``
  rows, each chunk's float32 vector as a blob beside its text, an FTS5 table kept in step with
  ``chunks`` by triggers, and a ``manifest`` of key/value pairs (embedder, dimension, schema,
  FAISS generation and count).
- ``vectors.faiss``: an ``IndexIDMap2(IndexFlatIP)`` (exact) or, past 50k vectors, an
  ``IndexIVFFlat`` whose ids are the chunk row ids. It is only ever written whole to a temporary
  file and renamed into place; on open it is checked against SQLite (a stamp in the manifest, or
  the same ids) and rebuilt from SQLite when the two disagree.
- ``write.lock``: held (``flock``) by the one process allowed to write.

Why equal ids are enough to trust the FAISS file: chunk ids are never reused (AUTOINCREMENT) and
a chunk's vector is written once, so an id names one vector for the life of the index.

The embedding cache is the ``chunks`` table itself: a new chunk whose ``cache_key`` matches a
stored chunk's takes that chunk's vector instead of being embedded. The key hashes the embedder,
model and dimension with the text, so a vector is only ever reused for the model that made it.

The package is the only code that reads or writes index files:

- ``sqlite.py``: ``Store``, what the rest of ragkit calls (documents, chunks, vectors, search).
  It inherits its write side from ``sqlite_writes.py`` and its FAISS side (build, verify,
  search the vector file) from ``sqlite_vectors.py``.
- ``schema.py``: tables, manifest, row types, the embedding-cache key, opening a connection.
- ``vectors.py``: the FAISS file: build, atomic write, read, search.
- ``keyword.py``: FTS5 queries and BM25 ranking.
- ``lock.py``: the one-writer lock.
- ``health.py``: ``Store.check`` and ``Store.repair`` (``ragkit doctor``).
- ``protocol.py``: ``IndexStore``, the seam every caller uses; ``address.py`` opens the store the
  ``store`` setting names (the folder, or PostgreSQL); ``where.py`` compiles filters for SQLite.
- ``postgres.py`` (``PostgresStore``), ``postgres_schema.py``, ``postgres_search.py``,
  ``postgres_health.py``: the same index as a schema in PostgreSQL with pgvector.
- ``copy.py``: ``ragkit copy``, an index from one store to another with its vectors.
"""

from ragkit.store.health import HealthReport, Problem
from ragkit.store.keyword import STOPWORDS, fts_match
from ragkit.store.schema import (
    DB_NAME,
    LOCK_NAME,
    SCHEMA_VERSION,
    DocumentRow,
    Manifest,
    StoredChunk,
    cache_key,
)
from ragkit.store.sqlite import Store
from ragkit.store.vectors import FAISS_NAME

__all__ = [
    "DB_NAME",
    "FAISS_NAME",
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "STOPWORDS",
    "DocumentRow",
    "HealthReport",
    "Manifest",
    "Problem",
    "Store",
    "StoredChunk",
    "cache_key",
    "fts_match",
]
