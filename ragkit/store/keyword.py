"""Keyword search: user text as a safe FTS5 query, ranked by SQLite's BM25."""

from __future__ import annotations

import re
import sqlite3

from ragkit.filters import Filters
from ragkit.store.where import sqlite_where

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


def terms(query: str) -> list[str]:
    """The words of ``query``, lower-cased, as the unicode61 tokenizer splits them."""
    return [t.lower() for t in _TERM.findall(query)]


def query_words(query: str) -> list[str]:
    """The words of ``query`` that keyword search looks for, in order, repeats kept.

    Stopwords are dropped unless the query has nothing else; a repeated word counts again in
    BM25's sum, weighting it as the query term frequency.
    """
    words = terms(query)
    return [t for t in words if t not in STOPWORDS] or words


def fts_match(query: str) -> str:
    """User text as a safe FTS5 query: each word a quoted string, OR-joined, ranked by BM25.

    Quoting makes every operator (AND, OR, NOT, NEAR, ``*``, ``^``, ``:``, parentheses, ``-``)
    a plain word, so no user text can break the FTS syntax. Returns "" when the text has no
    words at all.
    """
    return " OR ".join(f'"{t}"' for t in query_words(query))


def keyword_search(
    conn: sqlite3.Connection, query: str, k: int, *, filters: Filters | None = None
) -> list[tuple[int, float]]:
    """Top-k (chunk id, BM25 score) for the words of ``query``, best first.

    FTS5's ``bm25()`` (k1=1.2, b=0.75, Porter-stemmed terms) is negated so that higher is
    better, as for cosine. Only chunks that have vectors are ranked, the same set dense
    search sees; ``filters`` are applied inside the query, before ranking.
    """
    match = fts_match(query)
    if not match or k < 1:
        return []
    filters = filters or Filters()
    if not filters.active:
        # No join: reading a chunk row reads its vector too (1.5 KB at 384 dims), which doubled
        # the time of a query matching half the corpus. Chunks without vectors (the few an
        # index run has yet to embed) are looked up in the partial index chunks_pending,
        # which is named so the planner cannot pick the row itself instead.
        try:
            rows = conn.execute(
                "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ?"
                " AND NOT EXISTS (SELECT 1 FROM chunks INDEXED BY chunks_pending"
                " WHERE id = chunks_fts.rowid AND vector IS NULL)"
                " ORDER BY bm25(chunks_fts) LIMIT ?",
                [match, k],
            ).fetchall()
            return [(int(i), -float(score)) for i, score in rows]
        except sqlite3.OperationalError as exc:
            if "chunks_pending" not in str(exc):
                raise
            # An index from before chunks_pending, on storage too read-only to migrate it.
    where, args = sqlite_where(filters)
    rows = conn.execute(
        "SELECT chunks_fts.rowid, bm25(chunks_fts) FROM chunks_fts"
        " JOIN chunks c ON c.id = chunks_fts.rowid JOIN documents d ON d.id = c.document_id"
        f" WHERE chunks_fts MATCH ? AND c.vector IS NOT NULL AND {where}"
        " ORDER BY bm25(chunks_fts) LIMIT ?",
        [match, *args, k],
    ).fetchall()
    return [(int(i), -float(score)) for i, score in rows]
