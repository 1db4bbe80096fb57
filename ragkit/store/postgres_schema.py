"""The PostgreSQL layout of one index: a schema of three tables, and connecting to it.

Each ragkit index is the schema ``ragkit_<index name>`` (so one database holds many indexes):

- ``manifest(key, value)``: the embedder, model and dimension that made the vectors, the
  schema version, and bookkeeping (created, updated, tokens embedded, generation).
- ``documents``: one row per indexed file (path unique, sha256, size, mtime, status...).
- ``chunks``: the chunk text and its source span, ``cache_key`` (the embedding cache),
  ``embedding vector(d)`` (NULL until embedded), and ``tsv``, a generated ``tsvector``.

Indexes: HNSW on ``embedding`` (``vector_cosine_ops``), GIN on ``tsv``, the embedding cache
key, pending chunks (a partial index), and ``(document_id, ordinal)`` unique.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import TYPE_CHECKING, Any

from ragkit.errors import RagkitError
from ragkit.store.schema import Manifest, manifest_from_rows

if TYPE_CHECKING:
    import psycopg

PG_SCHEMA_VERSION = 1
TEXT_SEARCH_CONFIG = "english"  # Snowball English stemming and stop words, like FTS5's porter
# pgvector's HNSW index takes vectors of at most 2,000 dimensions; larger ones are searched
# exactly (a sequential scan), which stays correct but slows with size.
HNSW_MAX_DIMENSION = 2000
INSTALL_HINT = "PostgreSQL support needs its driver: pip install 'ragkit[postgres]'"


def schema_name(index: str) -> str:
    """The PostgreSQL schema holding index ``index``."""
    return f"ragkit_{index}"


def lock_key(index: str) -> int:
    """The advisory-lock key (a signed 64-bit number) of the writer lock of ``index``."""
    digest = hashlib.sha256(f"ragkit-writer\0{schema_name(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def ddl(dimension: int) -> list[str]:
    """The statements that create an index's tables and indexes (in its schema, on the path)."""
    statements = [
        "CREATE TABLE manifest (key text PRIMARY KEY, value text NOT NULL)",
        """CREATE TABLE documents (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            path text NOT NULL UNIQUE,
            sha256 text NOT NULL,
            size bigint NOT NULL,
            mtime double precision NOT NULL,
            kind text NOT NULL,
            pages integer NOT NULL DEFAULT 0,
            chunks integer NOT NULL DEFAULT 0,
            status text NOT NULL,
            warnings text NOT NULL DEFAULT '',
            indexed_at text NOT NULL
        )""",
        "CREATE INDEX documents_sha256 ON documents (sha256)",
        f"""CREATE TABLE chunks (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            document_id bigint NOT NULL REFERENCES documents (id),
            ordinal integer NOT NULL,
            text text NOT NULL,
            page integer,
            start_line integer NOT NULL,
            end_line integer NOT NULL,
            start_char integer NOT NULL,
            end_char integer NOT NULL,
            heading text NOT NULL DEFAULT '',
            tokens integer NOT NULL,
            cache_key text NOT NULL,
            embedding vector({int(dimension)}),
            tsv tsvector GENERATED ALWAYS AS
                (to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, heading || ' ' || text)) STORED,
            UNIQUE (document_id, ordinal)
        )""",
        "CREATE INDEX chunks_cache_key ON chunks (cache_key) WHERE embedding IS NOT NULL",
        "CREATE INDEX chunks_pending ON chunks (document_id, ordinal) WHERE embedding IS NULL",
        "CREATE INDEX chunks_tsv ON chunks USING gin (tsv)",
    ]
    if dimension <= HNSW_MAX_DIMENSION:
        statements.append(
            "CREATE INDEX chunks_embedding ON chunks USING hnsw (embedding vector_cosine_ops)"
        )
    return statements


def import_driver() -> Any:
    """The psycopg module, or a RagkitError saying how to install it."""
    try:
        import pgvector.psycopg  # noqa: F401
        import psycopg
    except ImportError:
        raise RagkitError(INSTALL_HINT) from None
    return psycopg


def connect(url: str, schema: str | None) -> psycopg.Connection[Any]:
    """An autocommit connection whose search path is ``schema`` (and pgvector's schema)."""
    driver = import_driver()
    from pgvector.psycopg import register_vector
    from psycopg import sql

    try:
        conn: psycopg.Connection[Any] = driver.connect(
            url,
            autocommit=True,
            application_name=f"ragkit pid {os.getpid()} on {socket.gethostname()}"[:63],
        )
    except driver.OperationalError as exc:
        from ragkit.store.address import redact

        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RagkitError(
            f"cannot connect to {redact(url)}: {first}; check the --store URL and that the"
            " server is running"
        ) from None
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'vector'"
    ).fetchone()
    path = [schema] if schema else []
    path.append(row[0] if row else "public")
    if "public" not in path:
        path.append("public")
    conn.execute(
        sql.SQL("SET search_path TO {}").format(sql.SQL(", ").join(map(sql.Identifier, path)))
    )
    if row is not None:
        register_vector(conn)
    return conn


def read_manifest(conn: psycopg.Connection[Any], where: str) -> Manifest:
    """The manifest of the index in the connection's schema."""
    rows = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM manifest")}
    try:
        dimension = int(rows.get("dimension", ""))
    except ValueError:
        dimension = 0  # manifest_from_rows says what is wrong
    kind = "hnsw" if dimension <= HNSW_MAX_DIMENSION else "exact"
    return manifest_from_rows(rows, where, vector_index=kind)
