"""Question in, ranked Hits out: cosine similarity over the index's vectors, with filters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ragkit.embedders import Embedder
from ragkit.errors import QueryError
from ragkit.store import Store


@dataclass(frozen=True)
class Hit:
    """One retrieved passage and where it came from."""

    rank: int  # 1-based
    score: float  # cosine similarity to the query
    chunk_id: int
    path: str
    page: int | None
    start_line: int
    end_line: int
    start_char: int
    end_char: int
    heading: str
    text: str


def check_query(query: str) -> str:
    """The query with outer whitespace removed; an empty one is refused."""
    cleaned = query.strip()
    if not cleaned:
        raise QueryError("the query is empty: pass some words to search for")
    return cleaned


def search(
    store: Store,
    embedder: Embedder,
    query: str,
    *,
    k: int = 5,
    min_score: float | None = None,
    path_glob: str | None = None,
) -> list[Hit]:
    """The k chunks most similar to ``query``, best first.

    ``path_glob`` (SQLite GLOB on the document path) restricts the search before ranking, so a
    filter never leaves fewer than k hits when k matching chunks exist.
    """
    query = check_query(query)
    allowed = store.chunk_ids(path_glob=path_glob) if path_glob else None
    if allowed is not None and len(allowed) == 0:
        return []
    vector = embedder.embed([query])
    scores, ids = store.search_vectors(vector, k, allowed=allowed)
    pairs = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
    if min_score is not None:
        pairs = [(s, i) for s, i in pairs if s >= min_score]
    rows = store.chunks([i for _, i in pairs])
    hits: list[Hit] = []
    for score, chunk_id in pairs:
        row = rows.get(chunk_id)
        if row is None:  # deleted since the FAISS file was written
            continue
        hits.append(
            Hit(
                rank=len(hits) + 1,
                score=float(np.float32(score)),
                chunk_id=chunk_id,
                path=row.path,
                page=row.page,
                start_line=row.start_line,
                end_line=row.end_line,
                start_char=row.start_char,
                end_char=row.end_char,
                heading=row.heading,
                text=row.text,
            )
        )
    return hits
