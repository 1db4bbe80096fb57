"""Search on PostgreSQL: HNSW (pgvector) for dense ranking, tsvector for keywords, SQL filters."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ragkit.filters import Condition, Filters
from ragkit.store.keyword import STOPWORDS, terms
from ragkit.store.postgres_schema import TEXT_SEARCH_CONFIG

if TYPE_CHECKING:
    import psycopg

# Filtered dense search ranks this many allowed chunks or fewer exactly (a scan of those rows);
# more go through HNSW, which keeps scanning until k of them pass (pgvector's iterative scan).
EXACT_FILTERED = 20_000
# HNSW candidates kept per search (pgvector's default is 40): on bench/postgres.py's 100k
# clustered vectors, 100 gave recall@10 0.91 and 200 gave 0.95, at about 6 ms p50.
EF_SEARCH = 200
# Which table alias holds each filterable field: c = chunks, d = documents.
COLUMNS = {"path": "d.path", "kind": "d.kind", "mtime": "d.mtime", "heading": "c.heading"}
# Okapi BM25's parameters, FTS5's defaults: term-frequency saturation and length normalisation.
BM25_K1 = 1.2
BM25_B = 0.75


def dense(
    conn: psycopg.Connection[Any],
    queries: NDArray[np.float32],
    k: int,
    *,
    allowed: NDArray[np.int64] | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Top-k (cosine, ids) per query row; ids -1 pad short results. Call inside a transaction."""
    n = len(queries)
    scores = np.full((n, max(k, 0)), -np.inf, dtype=np.float32)
    found = np.full((n, max(k, 0)), -1, dtype=np.int64)
    if k < 1 or (allowed is not None and len(allowed) == 0):
        return scores, found
    exact = allowed is not None and len(allowed) <= EXACT_FILTERED
    # 0 + distance is not an indexable ORDER BY, so the planner scans the allowed rows.
    order = "0 + (embedding <=> %b)" if exact else "embedding <=> %b"
    where = "embedding IS NOT NULL" + (" AND id = ANY(%s)" if allowed is not None else "")
    sql = f"SELECT id, 1 - (embedding <=> %b) FROM chunks WHERE {where} ORDER BY {order} LIMIT %s"
    if not exact:
        # ef_search bounds how many rows an HNSW scan returns; the iterative scan goes on past
        # it (and past filtered-out rows) in strict distance order.
        conn.execute(f"SET LOCAL hnsw.ef_search = {min(max(4 * k, EF_SEARCH), 1000)}")
        conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
    ids = None if allowed is None else [int(i) for i in allowed]
    for row, q in enumerate(np.asarray(queries, dtype=np.float32)):
        args: list[Any] = [q] if ids is None else [q, ids]
        result = conn.execute(sql, [*args, q, k]).fetchall()
        for j, (chunk_id, score) in enumerate(result):
            found[row, j] = int(chunk_id)
            scores[row, j] = float(score)
    return scores, found


def corpus_stats(conn: psycopg.Connection[Any]) -> tuple[int, float]:
    """(chunks, mean chunk length in tokens): BM25's N and avgdl."""
    row = conn.execute("SELECT count(*), greatest(avg(tokens), 1) FROM chunks").fetchone()
    return (int(row[0]), float(row[1])) if row else (0, 1.0)


def keyword(
    conn: psycopg.Connection[Any],
    query: str,
    k: int,
    *,
    filters: Filters | None = None,
    stats: tuple[int, float] | None = None,
) -> list[tuple[int, float]]:
    """Top-k (chunk id, BM25 score) for the words of ``query``, best first.

    The query's words (stop words dropped, as for FTS5) are OR-ed into a ``tsquery`` with
    English stemming, which the GIN index answers; the matching chunks are then scored by
    Okapi BM25 (k1=1.2, b=0.75, as FTS5) in SQL: document frequencies counted through the GIN
    index, term frequencies from the positions of the query's lexemes (picked out of each
    tsvector by setweight + ts_filter, not by unnesting all of it), chunk length in tokens.
    PostgreSQL's own ``ts_rank`` scored SciFact far lower (README "PostgreSQL"). Only chunks
    with vectors are ranked; filters apply before ranking. ``stats`` (N, avgdl) are read
    from the table when not given.
    """
    words = terms(query)
    content = [t for t in words if t not in STOPWORDS] or words
    if not content or k < 1:
        return []
    join = ""
    condition, args = "TRUE", list[Any]()
    if filters is not None and filters.active:
        join = " JOIN documents d ON d.id = c.document_id"
        condition, args = where(filters, None)
    rows = conn.execute(
        f"""
        WITH lexemes AS (
            SELECT DISTINCT t.lexeme FROM unnest(to_tsvector('{TEXT_SEARCH_CONFIG}', %s)) t
        ), df AS MATERIALIZED (
            SELECT l.lexeme, (SELECT count(*) FROM chunks
                              WHERE tsv @@ quote_literal(l.lexeme)::tsquery) AS n
            FROM lexemes l
        ), wanted AS MATERIALIZED (
            SELECT array_agg(lexeme) AS a FROM lexemes
        ), stats AS MATERIALIZED (
            SELECT %s::float8 AS n, %s::float8 AS avgdl
        ), matched AS (
            SELECT c.id, c.tsv, c.tokens FROM chunks c{join}
            WHERE c.tsv @@ to_tsquery('{TEXT_SEARCH_CONFIG}', %s)
              AND c.embedding IS NOT NULL AND {condition}
        )
        SELECT m.id, sum(
            ln(1 + (s.n - df.n + 0.5) / (df.n + 0.5))
            * u.tf * {BM25_K1 + 1}
            / (u.tf + {BM25_K1} * (1 - {BM25_B} + {BM25_B} * m.tokens / s.avgdl))
        ) AS score
        FROM matched m
        CROSS JOIN LATERAL (
            SELECT x.lexeme, coalesce(array_length(x.positions, 1), 1) AS tf
            FROM unnest(ts_filter(setweight(m.tsv, 'A', (SELECT a FROM wanted)), '{{a}}')) x
        ) u
        JOIN df ON df.lexeme = u.lexeme
        CROSS JOIN stats s
        GROUP BY m.id ORDER BY score DESC, m.id LIMIT %s
        """,
        [" ".join(content), *(stats or corpus_stats(conn)), " | ".join(content), *args, k],
    ).fetchall()
    return [(int(i), float(score)) for i, score in rows]


def where(filters: Filters | None, path_glob: str | None) -> tuple[str, list[Any]]:
    """Filters as a PostgreSQL condition over ``c`` (chunks) and ``d`` (documents)."""
    clauses: list[str] = []
    args: list[Any] = []
    groups = list((filters or Filters()).conditions())
    if path_glob:
        groups.append((Condition("path", "glob", path_glob),))
    for group in groups:
        either = [_condition(c, args) for c in group]
        clauses.append("(" + " OR ".join(either) + ")")
    return (" AND ".join(clauses) or "TRUE"), args


def _condition(cond: Condition, args: list[Any]) -> str:
    column = COLUMNS[cond.field]
    if cond.op == "glob":
        args.append(glob_regex(cond.value))
        return f"{column} ~ %s"
    if cond.op == "in":
        args.append(list(cond.value))
        return f"{column} = ANY(%s)"
    if cond.op == "endswith":
        # A suffix parse_file_types accepted holds no '%' or '_': LIKE needs no escaping.
        args.append("%" + cond.value)
        return f"lower({column}) LIKE %s"
    if cond.op in ("ge", "lt"):
        args.append(cond.value)
        return f"{column} {'>=' if cond.op == 'ge' else '<'} %s"
    if cond.op == "contains":
        args.append(cond.value)
        return f"strpos(lower({column}), %s) > 0"
    raise ValueError(f"unknown filter operator {cond.op!r}")


def glob_regex(pattern: str) -> str:
    """SQLite's GLOB (``*``, ``?``, ``[...]``, ``[^...]``; case-sensitive) as an anchored regex."""
    out = ["^"]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out) + "$"
