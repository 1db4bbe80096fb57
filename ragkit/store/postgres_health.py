"""``ragkit doctor`` on a PostgreSQL index: rows, manifest and the server's indexes checked.

There is no derived file to disagree with the rows: the HNSW and GIN indexes are maintained by
PostgreSQL in the transactions that change the rows. What can still go wrong: an index left
invalid (a failed ``CREATE INDEX CONCURRENTLY`` by a DBA) or dropped, a manifest edited by
hand, documents whose chunk counts or status disagree with their chunks, an interrupted run.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import TYPE_CHECKING

from ragkit.store.health import HealthReport, Problem
from ragkit.store.postgres_schema import ddl, schema_name
from ragkit.store.schema import BOOKKEEPING

if TYPE_CHECKING:
    from ragkit.store.postgres import PostgresStore

_CHUNKS_MISSING = "chunks != (SELECT count(*) FROM chunks WHERE document_id = documents.id)"
_LACKS_VECTORS = (
    "EXISTS (SELECT 1 FROM chunks WHERE document_id = documents.id AND embedding IS NULL)"
)


def expected_indexes(dimension: int) -> dict[str, str]:
    """The secondary indexes an index's tables should have, by name, with their DDL."""
    out = {}
    for statement in ddl(dimension):
        if statement.startswith("CREATE INDEX"):
            out[statement.split()[2]] = statement
    return out


def _bad_indexes(store: PostgresStore) -> tuple[list[str], list[str]]:
    """(missing, invalid) secondary index names."""
    rows = store.conn.execute(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
        (schema_name(store.index),),
    ).fetchall()
    have = {str(name): bool(valid) for name, valid in rows}
    wanted = expected_indexes(store.manifest.dimension)
    missing = [name for name in wanted if name not in have]
    invalid = [name for name, valid in have.items() if not valid]
    return missing, invalid


def _bad_bookkeeping(store: PostgresStore) -> list[str]:
    rows = dict(store.conn.execute("SELECT key, value FROM manifest").fetchall())
    bad = []
    for key, default in BOOKKEEPING.items():
        if key == "source":
            continue
        value = rows.get(key)
        if value is None or (default.isdigit() and not str(value).isdigit()):
            bad.append(key)
    return bad


def check(store: PostgresStore) -> HealthReport:
    """Verify the rows, the manifest and the server's indexes against each other."""
    problems: list[Problem] = []

    def count(sql: str) -> int:
        row = store.conn.execute(sql).fetchone()
        return int(row[0]) if row else 0

    if bad := _bad_bookkeeping(store):
        problems.append(
            Problem("manifest", f"manifest lacks or garbles {', '.join(bad)}", "rewrite them", True)
        )
    missing, invalid = _bad_indexes(store)
    if missing or invalid:
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"invalid {', '.join(invalid)}" if invalid else "",
            )
            if part
        )
        problems.append(Problem("indexes", detail, "create or rebuild them (REINDEX)", True))
    if n := count(f"SELECT count(*) FROM documents WHERE {_CHUNKS_MISSING}"):
        problems.append(
            Problem(
                "chunks",
                f"{n} documents do not have the chunks they should",
                "mark them so the next `ragkit index` reads them again",
                True,
            )
        )
    if n := count(f"SELECT count(*) FROM documents WHERE status = 'indexed' AND {_LACKS_VECTORS}"):
        problems.append(
            Problem(
                "status",
                f"{n} documents marked indexed lack vectors",
                "mark them pending; the next `ragkit index` embeds what they lack",
                True,
            )
        )
    if pending := count("SELECT count(*) FROM documents WHERE status = 'pending'"):
        waiting = count("SELECT count(*) FROM chunks WHERE embedding IS NULL")
        source = shlex.quote(store.manifest.source) if store.manifest.source else "PATH"
        problems.append(
            Problem(
                "pending",
                f"{pending} documents are not fully indexed ({waiting} chunks wait for vectors):"
                " an index run was interrupted, or a repair marked them to be read again",
                f"run `ragkit index {source}{store.flags}`; doctor does not embed",
                False,
            )
        )
    counts = store.counts()
    return HealthReport(
        index=store.where,
        documents=counts["documents"],
        chunks=counts["chunks"],
        vectors=counts["vectors"],
        faiss_vectors=counts["vectors"],  # the HNSW index holds every stored vector
        problems=tuple(problems),
    )


def repair(store: PostgresStore) -> HealthReport:
    """Fix what ``check`` finds that can be fixed without the source files (takes the lock)."""
    from psycopg import sql

    store.lock()
    before = {p.code for p in check(store).problems}
    done: list[str] = []
    with store.conn.transaction():
        conn = store.conn
        if "manifest" in before:
            bad = _bad_bookkeeping(store)
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO manifest (key, value) VALUES (%s, %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [(k, BOOKKEEPING[k]) for k in bad],
                )
            done.append(f"reset manifest {', '.join(bad)}")
        if "chunks" in before:
            n = conn.execute(
                "UPDATE documents SET sha256 = '', status = 'pending', chunks ="
                " (SELECT count(*) FROM chunks WHERE document_id = documents.id)"
                f" WHERE {_CHUNKS_MISSING}"
            ).rowcount
            done.append(f"marked {n} documents to be read again")
        if "status" in before:
            n = conn.execute(
                "UPDATE documents SET status = 'pending'"
                f" WHERE status = 'indexed' AND {_LACKS_VECTORS}"
            ).rowcount
            done.append(f"marked {n} documents pending")
        if "indexes" in before:
            missing, invalid = _bad_indexes(store)
            wanted = expected_indexes(store.manifest.dimension)
            for name in missing:
                conn.execute(wanted[name])
            for name in invalid:
                conn.execute(sql.SQL("REINDEX INDEX {}").format(sql.Identifier(name)))
            done.append(f"rebuilt indexes {', '.join(missing + invalid)}")
    after = check(store)
    return dataclasses.replace(after, repaired=tuple(done))
