"""``PostgresStore``: one index as a schema in a PostgreSQL database, with pgvector and tsvector.

The same rows as the SQLite store (documents, chunks with their spans, the manifest), but the
vectors live in the ``chunks`` table itself (``vector(d)``, searched through an HNSW index) and
keyword search uses a generated ``tsvector`` with a GIN index. There is no derived file, so
nothing can disagree with the rows. One writer per index across machines: a session-level
advisory lock, released when the writer's connection ends (its process dies included).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ragkit.errors import IndexLockedError, IndexMismatchError, IndexNotFoundError, RagkitError
from ragkit.filters import Filters
from ragkit.store import postgres_health, postgres_search
from ragkit.store.postgres_health import expected_indexes
from ragkit.store.postgres_schema import (
    HNSW_MAX_DIMENSION,
    PG_SCHEMA_VERSION,
    connect,
    ddl,
    lock_key,
    read_manifest,
    schema_name,
)
from ragkit.store.schema import DocumentRow, Manifest, StoredChunk, cache_key, now

if TYPE_CHECKING:
    import psycopg

    from ragkit.chunking import Chunk
    from ragkit.store.health import HealthReport


# A run that embeds at least this many vectors, and more than the index holds, drops the HNSW
# index and builds it once at the end instead of inserting into it vector by vector.
BULK_BUILD = 10_000
HNSW_BUILD_MEMORY = "512MB"  # maintenance_work_mem for the build: the graph should fit


class PostgresStore:
    """One index in a PostgreSQL database: open it, change it under the advisory lock, search."""

    def __init__(self, url: str, index: str, conn: psycopg.Connection[Any], manifest: Manifest):
        self.url = url
        self.index = index
        self.conn = conn
        self.manifest = manifest
        self._locked = False
        self._bulk: list[int] | None = None  # [chunks written, chunks per commit] inside bulk()
        self._tx: Any = None  # the open transaction of bulk() or snapshot()
        self._deferred: bool | None = None  # HNSW dropped for a bulk load (decided once)
        self._stats: tuple[int, tuple[int, float]] | None = None  # (generation, BM25 stats)

    @property
    def where(self) -> str:
        """The index as the user names it, for messages."""
        from ragkit.store.address import Address

        return str(Address(self.index, _no_folder(), self.url))

    @property
    def flags(self) -> str:
        """The CLI flags that name this index."""
        from ragkit.store.address import Address

        return Address(self.index, _no_folder(), self.url).flags

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def exists(cls, url: str, index: str) -> bool:
        """True when the database at ``url`` holds index ``index``."""
        conn = connect(url, None)
        try:
            return _has_manifest(conn, index)
        finally:
            conn.close()

    @classmethod
    def create(
        cls, url: str, index: str, *, embedder: str, model: str, dimension: int
    ) -> PostgresStore:
        """Make a new, empty index ``index`` in the database at ``url``."""
        from psycopg import sql

        conn = connect(url, None)
        try:
            if (
                conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
                is None
            ):
                try:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                except Exception as exc:
                    raise RagkitError(
                        f"the database has no pgvector extension and ragkit cannot add it ({exc}):"
                        " ask its owner to run CREATE EXTENSION vector"
                    ) from None
                conn.close()
                conn = connect(url, None)
            schema = sql.Identifier(schema_name(index))
            stamp = now()
            values = {
                "embedder": embedder,
                "model": model,
                "dimension": str(dimension),
                "schema_version": str(PG_SCHEMA_VERSION),
                "created": stamp,
                "updated": stamp,
                "tokens_embedded": "0",
                "faiss_generation": "0",
                "faiss_count": "0",
            }
            # Schema, tables and manifest in one transaction: a kill leaves none or all of it.
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(index) ^ 1,))
                if _has_manifest(conn, index):
                    raise RagkitError(f"an index named {index} already exists in {_redact(url)}")
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
                conn.execute(sql.SQL("SET LOCAL search_path TO {}, public").format(schema))
                for statement in ddl(dimension):
                    conn.execute(statement)
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO manifest (key, value) VALUES (%s, %s)", list(values.items())
                    )
        finally:
            conn.close()
        return cls.open(url, index)

    @classmethod
    def open(cls, url: str, index: str) -> PostgresStore:
        """Open index ``index`` at ``url``; IndexNotFoundError when there is none."""
        conn = connect(url, schema_name(index))
        try:
            if not _has_manifest(conn, index):
                from ragkit.store.address import Address

                raise IndexNotFoundError(
                    f"no index named {index} in {_redact(url)}: build one with"
                    f" `ragkit index PATH{Address(index, _no_folder(), url).flags}`"
                )
            manifest = read_manifest(conn, index)
            if manifest.schema_version != PG_SCHEMA_VERSION:
                raise IndexMismatchError(
                    f"index {index} has PostgreSQL schema version {manifest.schema_version},"
                    f" this ragkit reads {PG_SCHEMA_VERSION}: build it again under a new --index"
                )
        except BaseException:
            conn.close()
            raise
        return cls(url, index, conn, manifest)

    @classmethod
    def drop(cls, url: str, index: str) -> None:
        """Delete index ``index`` (its schema and everything in it)."""
        from psycopg import sql

        conn = connect(url, None)
        try:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema_name(index))
                )
            )
        finally:
            conn.close()

    def close(self) -> None:
        """Release the write lock (if held) and the connection."""
        with contextlib.suppress(Exception):
            self.unlock()
        self.conn.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_source(self, source: str) -> None:
        """Record the folder this index mirrors."""
        with self._write() as conn:
            _set_manifest(conn, {"source": source})
        self.refresh_manifest()

    def note(self, key: str) -> str | None:
        """A value the pipeline keeps in the manifest table (e.g. the file selection), or None."""
        row = self.conn.execute(
            "SELECT value FROM manifest WHERE key = %s", ("note:" + key,)
        ).fetchone()
        return None if row is None else str(row[0])

    def set_note(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key`` in the manifest table, replacing what was there."""
        with self._write() as conn:
            _set_manifest(conn, {"note:" + key: value})

    def refresh_manifest(self) -> Manifest:
        """Re-read the manifest (another process may have committed since it was read)."""
        self.manifest = read_manifest(self.conn, self.index)
        return self.manifest

    def data_version(self) -> int:
        """The generation the last writer recorded: there is no file to reload between them."""
        row = self.conn.execute("SELECT value FROM manifest WHERE key = 'faiss_generation'")
        value = row.fetchone()
        return int(value[0]) if value and str(value[0]).isdigit() else 0

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """One repeatable-read transaction: every read inside sees the same committed state."""
        if self._tx is not None or self.conn.info.transaction_status != 0:
            yield
            return
        with self.conn.transaction():
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            self._tx = "snapshot"
            try:
                yield
            finally:
                self._tx = None

    # -- the write lock ----------------------------------------------------------------------

    def lock(self, *, wait: bool = False, timeout: float | None = None) -> None:
        """Take the one-writer advisory lock, or raise IndexLockedError (``wait`` queues)."""
        if self._locked:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        key = lock_key(self.index)
        while not self._try_lock(key):
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                raise IndexLockedError(
                    f"index {self.index} is being written by another process ({self.holder()}):"
                    " wait for it to finish, or pass --wait"
                )
            time.sleep(0.2)
        self._locked = True
        self.refresh_manifest()  # another writer may have finished while this one waited

    def _try_lock(self, key: int) -> bool:
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        return bool(row and row[0])

    def holder(self) -> str:
        """Who holds the writer lock, as the server knows them."""
        key = lock_key(self.index) & 0xFFFFFFFFFFFFFFFF
        row = self.conn.execute(
            "SELECT a.application_name, a.client_addr::text FROM pg_locks l"
            " JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
            " AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.objsubid = 1 AND l.granted",
            (key >> 32, key & 0xFFFFFFFF),
        ).fetchone()
        if row is None:
            return "unknown holder"
        return str(row[0] or "a client") + (f" from {row[1]}" if row[1] else "")

    def unlock(self) -> None:
        """Release the write lock if this process holds it."""
        if self._locked:
            self._locked = False
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(self.index),))

    @contextlib.contextmanager
    def bulk(self, chunks_per_commit: int = 20_000) -> Iterator[None]:
        """Group the document writes made inside into transactions of about this many chunks."""
        if self._bulk is not None:
            yield
            return
        self._bulk = [0, max(1, chunks_per_commit)]
        try:
            yield
        except BaseException as exc:
            self._end_bulk_tx(exc)
            raise
        else:
            self._end_bulk_tx(None)
        finally:
            self._bulk = None

    def _end_bulk_tx(self, exc: BaseException | None) -> None:
        tx, self._tx = self._tx, None
        if tx is not None:
            tx.__exit__(type(exc) if exc else None, exc, None)

    @contextlib.contextmanager
    def _write(self, chunks: int = 1) -> Iterator[psycopg.Connection[Any]]:
        """A write transaction of its own, or a share of the open ``bulk()`` one."""
        if self._bulk is None:
            with self.conn.transaction():
                yield self.conn
            return
        if self._tx is None:
            self._tx = self.conn.transaction()
            self._tx.__enter__()
        yield self.conn
        self._bulk[0] += chunks
        if self._bulk[0] >= self._bulk[1]:
            self._end_bulk_tx(None)
            self._bulk[0] = 0

    # -- documents and chunks ----------------------------------------------------------------

    def documents(self) -> dict[str, DocumentRow]:
        """Every document row, by path."""
        rows = self.conn.execute(
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

        A new chunk takes the vector of any stored chunk with the same text (the embedding
        cache). Returns (chunks needing a vector, chunks reused).
        """
        m = self.manifest
        keys = [
            cache_key(c.text, embedder=m.embedder, model=m.model, dimension=m.dimension)
            for c in chunks
        ]
        with self._write(len(chunks) + 1) as conn:
            cached = self._cached_vectors(keys)
            old = conn.execute("SELECT id FROM documents WHERE path = %s", (path,)).fetchone()
            if old is not None:
                conn.execute("DELETE FROM chunks WHERE document_id = %s", (old[0],))
                conn.execute("DELETE FROM documents WHERE id = %s", (old[0],))
            missing = sum(1 for k in keys if k not in cached)
            row = conn.execute(
                "INSERT INTO documents (path, sha256, size, mtime, kind, pages, chunks, status,"
                " warnings, indexed_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " RETURNING id",
                (
                    path,
                    sha256,
                    size,
                    mtime,
                    kind,
                    pages,
                    len(chunks),
                    "pending" if missing else "indexed",
                    _text("\n".join(warnings)),
                    now(),
                ),
            ).fetchone()
            doc_id = int(row[0]) if row else 0
            with (
                conn.cursor() as cur,
                cur.copy(
                    "COPY chunks (document_id, ordinal, text, page, start_line, end_line,"
                    " start_char, end_char, heading, tokens, cache_key, embedding) FROM STDIN"
                ) as copy,
            ):
                for c, key in zip(chunks, keys, strict=True):
                    copy.write_row(
                        (
                            doc_id,
                            c.ordinal,
                            _text(c.text),
                            c.page,
                            c.start_line,
                            c.end_line,
                            c.start_char,
                            c.end_char,
                            _text(c.heading),
                            c.tokens,
                            key,
                            cached.get(key),
                        )
                    )
        return missing, len(chunks) - missing

    def _cached_vectors(self, keys: Sequence[str]) -> dict[str, Any]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        with self.conn.cursor(binary=True) as cur:
            cur.execute(
                "SELECT DISTINCT ON (cache_key) cache_key, embedding FROM chunks"
                " WHERE embedding IS NOT NULL AND cache_key = ANY(%s)",
                (unique,),
            )
            return {str(k): v for k, v in cur.fetchall()}

    def cached_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of these embedding-cache keys already have a stored vector."""
        unique = list(dict.fromkeys(keys))
        rows = self.conn.execute(
            "SELECT DISTINCT cache_key FROM chunks WHERE embedding IS NOT NULL"
            " AND cache_key = ANY(%s)",
            (unique,),
        )
        return {str(r[0]) for r in rows}

    def move_document(self, old_path: str, new_path: str, *, mtime: float) -> None:
        """Re-point a document at its new path (a rename: same bytes, no re-embedding)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE documents SET path = %s, mtime = %s WHERE path = %s",
                (new_path, mtime, old_path),
            )

    def touch_document(self, path: str, *, mtime: float) -> None:
        """Record a new mtime for a document whose content did not change."""
        with self._write() as conn:
            conn.execute("UPDATE documents SET mtime = %s WHERE path = %s", (mtime, path))

    def remove_documents(self, paths: Iterable[str]) -> int:
        """Delete documents and their chunks; returns how many documents went."""
        wanted = list(paths)
        if not wanted:
            return 0
        with self._write() as conn:
            conn.execute(
                "DELETE FROM chunks WHERE document_id IN"
                " (SELECT id FROM documents WHERE path = ANY(%s))",
                (wanted,),
            )
            cur = conn.execute("DELETE FROM documents WHERE path = ANY(%s)", (wanted,))
            return cur.rowcount

    def pending(self, after: int = 0, limit: int | None = None) -> list[tuple[int, str, int]]:
        """(id, text, tokens) of chunks still waiting for their vectors, ids above ``after``, in
        id order (the order they were stored: document by document); at most ``limit``."""
        rows = self.conn.execute(
            "SELECT id, text, tokens FROM chunks WHERE embedding IS NULL AND id > %s"
            " ORDER BY id LIMIT %s",
            (after, limit),
        )
        return [(int(i), str(t), int(n)) for i, t, n in rows]

    def fill_from_cache(self, ids: Sequence[int], keys: Sequence[str]) -> set[int]:
        """Give these waiting chunks the stored vector of any chunk with the same cache key and
        commit; returns the ids given one."""
        found = self._cached_vectors(keys)
        hits = [(int(i), found[k]) for i, k in zip(ids, keys, strict=True) if k in found]
        if hits:
            rows = np.stack([np.asarray(v.to_numpy(), dtype=np.float32) for _, v in hits])
            self.set_vectors([i for i, _ in hits], rows)
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
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        id_list = [int(i) for i in ids]
        if self._deferred is None:
            self._deferred = self._defer_hnsw()
        with self._write(len(ids)) as conn:
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE chunks SET embedding = %b WHERE id = %s",
                    [(data[n], id_list[n]) for n in range(len(id_list))],
                )
            # A document is searchable in full once its last chunk has a vector; only this
            # batch's documents can have changed.
            conn.execute(
                "UPDATE documents d SET status = 'indexed' WHERE d.status = 'pending'"
                " AND d.id IN (SELECT document_id FROM chunks WHERE id = ANY(%s))"
                " AND NOT EXISTS (SELECT 1 FROM chunks c"
                " WHERE c.document_id = d.id AND c.embedding IS NULL)",
                (id_list,),
            )
            if tokens:
                conn.execute(
                    "UPDATE manifest SET value = (value::bigint + %s)::text"
                    " WHERE key = 'tokens_embedded'",
                    (tokens,),
                )

    def chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        """Chunk rows (with their document paths) by id."""
        rows = self.conn.execute(
            "SELECT c.id, d.path, c.ordinal, c.text, c.page, c.start_line, c.end_line,"
            " c.start_char, c.end_char, c.heading, c.tokens FROM chunks c"
            " JOIN documents d ON d.id = c.document_id WHERE c.id = ANY(%s)",
            ([int(i) for i in ids],),
        )
        return {int(r[0]): StoredChunk(*r) for r in rows}

    def chunk_documents(self) -> dict[int, str]:
        """Every chunk id with the path of its document."""
        rows = self.conn.execute(
            "SELECT c.id, d.path FROM chunks c JOIN documents d ON d.id = c.document_id"
        )
        return {int(i): str(p) for i, p in rows}

    def chunk_ids(
        self, *, path_glob: str | None = None, filters: Filters | None = None
    ) -> NDArray[np.int64]:
        """Ids of the chunks that have vectors, optionally only those passing filters or a glob."""
        where, args = postgres_search.where(filters, path_glob)
        rows = self.conn.execute(
            "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id"
            f" WHERE c.embedding IS NOT NULL AND {where} ORDER BY c.id",
            args,
        ).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def counts(self) -> dict[str, int]:
        """Documents, chunks, chunks with vectors, and pending documents."""
        row = self.conn.execute(
            "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM chunks),"
            " (SELECT count(*) FROM chunks WHERE embedding IS NOT NULL),"
            " (SELECT count(*) FROM documents WHERE status = 'pending')"
        ).fetchone()
        assert row is not None
        return dict(
            zip(("documents", "chunks", "vectors", "pending_documents"), map(int, row), strict=True)
        )

    def size_on_disk(self) -> int:
        """Bytes the index's tables and indexes take in the database."""
        row = self.conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind = 'r'",
            (schema_name(self.index),),
        ).fetchone()
        return int(row[0]) if row else 0

    # -- vectors -----------------------------------------------------------------------------

    def vectors(self, ids: Sequence[int]) -> NDArray[np.float32]:
        """The stored vectors of these chunks, one row per id in the order given."""
        out = np.zeros((len(ids), self.manifest.dimension), dtype=np.float32)
        if not len(ids):
            return out
        with self.conn.cursor(binary=True) as cur:
            cur.execute(
                "SELECT id, embedding FROM chunks WHERE id = ANY(%s) AND embedding IS NOT NULL",
                ([int(i) for i in ids],),
            )
            found = {int(i): v.to_numpy() for i, v in cur.fetchall()}
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            raise KeyError(f"no stored vector for chunk(s) {sorted(missing)[:5]}")
        for row, chunk_id in enumerate(ids):
            out[row] = found[int(chunk_id)]
        return out

    def _defer_hnsw(self) -> bool:
        """Drop the HNSW index when a run adds more vectors than it holds (10k at least).

        Inserting into HNSW row by row cost ~3 ms a vector on the test machine; one build at
        the end is several times faster. Searches meanwhile scan exactly (slower, still right);
        a kill before the build leaves the index missing, which ``vectors_agree`` reports so
        the next run (or ``doctor --repair``) builds it.
        """
        if not self._hnsw_present():
            return False
        row = self.conn.execute(
            "SELECT count(*) FILTER (WHERE embedding IS NULL),"
            " count(*) FILTER (WHERE embedding IS NOT NULL) FROM chunks"
        ).fetchone()
        waiting, stored = (int(row[0]), int(row[1])) if row else (0, 0)
        if waiting < BULK_BUILD or waiting < stored:
            return False
        self.conn.execute("DROP INDEX IF EXISTS chunks_embedding")
        return True

    def _hnsw_present(self) -> bool:
        """True when the HNSW index exists (or is not wanted: too many dimensions for it)."""
        if self.manifest.dimension > HNSW_MAX_DIMENSION:
            return True
        row = self.conn.execute(
            "SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = 'chunks_embedding'",
            (schema_name(self.index),),
        ).fetchone()
        return row is not None

    def build_hnsw(self) -> None:
        """Build the HNSW index if it is missing (with room to build it in memory)."""
        if self._hnsw_present():
            return
        with self.conn.transaction():
            self.conn.execute(f"SET LOCAL maintenance_work_mem = '{HNSW_BUILD_MEMORY}'")
            self.conn.execute(expected_indexes(self.manifest.dimension)["chunks_embedding"])

    def save_vectors(self, vector_index: str | None = None, *, rebuild: bool = False) -> int:
        """Build the HNSW index if a bulk load dropped it (``rebuild``: build it anew); record a
        new generation. ``vector_index`` is for FAISS files: PostgreSQL keeps HNSW."""
        if rebuild and self._hnsw_present() and self.manifest.dimension <= HNSW_MAX_DIMENSION:
            self.conn.execute("DROP INDEX IF EXISTS chunks_embedding")
        self.build_hnsw()
        self._deferred = None
        counts = self.counts()
        generation = self.manifest.faiss_generation + 1
        with self._write() as conn:
            _set_manifest(
                conn,
                {
                    "faiss_generation": str(generation),
                    "faiss_count": str(counts["vectors"]),
                    "updated": now(),
                },
            )
        self.refresh_manifest()
        return generation

    def vectors_stale(self, vector_index: str) -> bool:
        """True when a bulk load left the HNSW index unbuilt, or the recorded count lags."""
        return self.manifest.faiss_count != self.counts()["vectors"] or not self._hnsw_present()

    def vectors_agree(self) -> bool:
        """True unless the HNSW index is missing (PostgreSQL keeps it in step with the rows)."""
        return self._hnsw_present()

    def faiss_index(self) -> Any:
        """None: PostgreSQL searches its own index; there is nothing to load."""
        return None

    def share_vectors(self, index: Any) -> None:
        """Nothing to share: every connection searches the server's index."""

    def search_vectors(
        self, queries: NDArray[np.float32], k: int, *, allowed: NDArray[np.int64] | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Top-k (cosine, ids) per query through HNSW (exactly, for small allowed sets)."""
        with self.snapshot():  # SET LOCAL needs a transaction; a search is one anyway
            return postgres_search.dense(self.conn, queries, k, allowed=allowed)

    def keyword_search(
        self, query: str, k: int, *, filters: Filters | None = None
    ) -> list[tuple[int, float]]:
        """Top-k (chunk id, ts_rank score) for the words of ``query``, best first."""
        version = self.data_version()
        if self._stats is None or self._stats[0] != version:
            # N and the mean length change little between saves: read once per generation,
            # not per query (a scan of the whole table).
            self._stats = (version, postgres_search.corpus_stats(self.conn))
        return postgres_search.keyword(self.conn, query, k, filters=filters, stats=self._stats[1])

    # -- health ------------------------------------------------------------------------------

    def check(self) -> HealthReport:
        """Verify the rows, the manifest and the server's indexes."""
        return postgres_health.check(self)

    def repair(self) -> HealthReport:
        """Fix what ``check`` finds that can be fixed without the source files (takes the lock)."""
        return postgres_health.repair(self)


def _has_manifest(conn: psycopg.Connection[Any], index: str) -> bool:
    row = conn.execute(
        "SELECT to_regclass(format('%%I.manifest', %s::text)) IS NOT NULL", (schema_name(index),)
    ).fetchone()
    return bool(row and row[0])


def _set_manifest(conn: psycopg.Connection[Any], values: dict[str, str]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO manifest (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            list(values.items()),
        )


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; U+FFFD keeps every character offset where it was.
    return value.replace("\x00", "\ufffd")


def _redact(url: str) -> str:
    from ragkit.store.address import redact

    return redact(url)


def _no_folder() -> Any:
    from pathlib import Path

    return Path()
