"""Question in, ranked Hits out: dense (cosine), keyword (BM25) or hybrid (fused), with filters.

What ``Hit.score`` means depends on the mode:

- ``dense``: cosine similarity between the query and chunk vectors (-1..1).
- ``keyword``: the BM25 score of the chunk for the query's words (0..∞, higher is better;
  comparable only within one query).
- ``hybrid``: the reciprocal rank fusion score, the sum over the dense and keyword rankings of
  ``1 / (60 + rank)`` (at most 2/61; again only comparable within one query).

Hits also carry ``dense_score``, the cosine similarity: abstention and ``min_score`` are judged
on it, since only the cosine has a meaning across queries. Dense and hybrid hits always have
it; keyword hits only when asked for (``cosine``, as answering does) or when ``min_score`` is
set, since embedding the query takes several times as long as the BM25 search itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from ragkit.embedders import Embedder
from ragkit.errors import QueryError
from ragkit.filters import Filters
from ragkit.store.protocol import IndexStore
from ragkit.store.schema import StoredChunk

MODES = ("dense", "keyword", "hybrid")
RRF_K = 60  # Cormack, Clarke & Buettcher (SIGIR 2009): the constant used unchanged since
CANDIDATES = 100  # chunks each ranking contributes to fusion (and the floor for MMR's pool)

K = TypeVar("K", bound=Hashable)
Ranking = list[tuple[int, float]]  # (chunk id, score), best first


@dataclass(frozen=True)
class Hit:
    """One retrieved passage and where it came from."""

    rank: int  # 1-based
    score: float  # the mode's score: cosine (dense), BM25 (keyword) or fused (hybrid)
    chunk_id: int
    path: str
    page: int | None
    start_line: int
    end_line: int
    start_char: int
    end_char: int
    heading: str
    text: str
    # Cosine similarity to the query, whatever the mode; None only on Hits built elsewhere.
    dense_score: float | None = None
    page_label: str | None = None  # the PDF page's printed label when it differs from page


def _hit(
    rank: int, score: float, dense_score: float | None, chunk_id: int, row: StoredChunk
) -> Hit:
    """The Hit of a stored chunk row. Filled into ``__dict__`` directly: a frozen dataclass's
    ``__init__`` sets each of 13 fields through ``object.__setattr__`` (~4 us a Hit here, k of
    them a tenth of a warm dense query); this makes the same frozen Hit in a third of that."""
    hit: Hit = object.__new__(Hit)
    fields = hit.__dict__
    fields["rank"], fields["score"], fields["chunk_id"] = rank, score, chunk_id
    fields["path"], fields["page"], fields["text"] = row.path, row.page, row.text
    fields["start_line"], fields["end_line"] = row.start_line, row.end_line
    fields["start_char"], fields["end_char"] = row.start_char, row.end_char
    fields["heading"], fields["dense_score"] = row.heading, dense_score
    fields["page_label"] = row.page_label
    return hit


def check_query(query: str) -> str:
    """The query with outer whitespace removed; an empty one, or one not UTF-8, is refused."""
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8, kept by the OS layer
        raise QueryError("the query is not valid UTF-8 text: pass it in UTF-8") from None
    cleaned = query.strip()
    if not cleaned:
        raise QueryError("the query is empty: pass some words to search for")
    return cleaned


def check_mode(mode: str) -> str:
    """The mode, if it is one of MODES; otherwise a QueryError naming them."""
    if mode not in MODES:
        raise QueryError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
    return mode


def rrf(rankings: Sequence[Sequence[K]], k: int = RRF_K) -> list[tuple[K, float]]:
    """Reciprocal rank fusion: items by the sum of ``1 / (k + rank)`` over the rankings."""
    scores: dict[K, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    # Ties keep first-seen order (the first ranking's), so the result is deterministic.
    return sorted(scores.items(), key=lambda pair: -pair[1])


def dense_ranking(
    store: IndexStore,
    vector: NDArray[np.float32],
    depth: int,
    *,
    allowed: NDArray[np.int64] | None = None,
) -> Ranking:
    """The ``depth`` chunks nearest to one query vector, by cosine."""
    scores, ids = store.search_vectors(vector.reshape(1, -1), depth, allowed=allowed)
    # tolist(): Python numbers at once, rather than a numpy scalar per element (2x faster)
    pairs = zip(scores[0].tolist(), ids[0].tolist(), strict=True)
    return [(int(i), float(s)) for s, i in pairs if i >= 0]


def rank(
    store: IndexStore,
    query: str,
    vector: NDArray[np.float32] | None,
    mode: str,
    depth: int,
    *,
    filters: Filters | None = None,
    allowed: NDArray[np.int64] | None = None,
) -> Ranking:
    """Chunks ranked for ``query`` (whose embedding is ``vector``) in one mode, best first.

    ``allowed`` (the chunk ids passing ``filters``) may be passed in when already known.
    Keyword mode needs no ``vector``.
    """
    check_mode(mode)
    if mode != "keyword" and vector is None:
        raise ValueError(f"{mode} ranking needs the query's vector")
    filtered = filters is not None and filters.active
    if filtered and allowed is None and mode != "keyword":
        allowed = store.chunk_ids(filters=filters)
    if allowed is not None and len(allowed) == 0:
        return []
    if mode == "keyword":
        return store.keyword_search(query, depth, filters=filters)
    assert vector is not None  # checked above
    if mode == "dense":
        return dense_ranking(store, vector, depth, allowed=allowed)
    pool = max(depth, CANDIDATES)
    dense = dense_ranking(store, vector, pool, allowed=allowed)
    keyword = store.keyword_search(query, pool, filters=filters)
    fused = rrf([[i for i, _ in dense], [i for i, _ in keyword]])
    return fused[:depth]


def mmr(
    relevance: NDArray[np.float32],
    vectors: NDArray[np.float32],
    k: int,
    lambda_: float = 0.5,
) -> list[int]:
    """Maximal marginal relevance (Carbonell & Goldstein 1998): positions of k picks, in order.

    Each pick maximises ``lambda_ * relevance - (1 - lambda_) * (max cosine to those picked)``;
    ``lambda_=1`` is plain relevance order, lower values favour passages unlike the ones above.
    """
    n = len(relevance)
    chosen: list[int] = []
    closest = np.full(n, -np.inf, dtype=np.float32)  # max similarity to anything chosen so far
    available = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        penalty = np.where(np.isfinite(closest), closest, 0.0)
        value = lambda_ * relevance - (1.0 - lambda_) * penalty
        value[~available] = -np.inf
        pick = int(np.argmax(value))
        chosen.append(pick)
        available[pick] = False
        closest = np.maximum(closest, vectors @ vectors[pick])
    return chosen


def _unit_range(scores: NDArray[np.float32]) -> NDArray[np.float32]:
    """Scores rescaled to 0..1 over the candidates (all 1 when they are equal)."""
    low, high = float(scores.min()), float(scores.max())
    if high - low < 1e-12:
        return np.ones_like(scores)
    return ((scores - low) / (high - low)).astype(np.float32)


def search(
    store: IndexStore,
    embedder: Embedder,
    query: str,
    *,
    k: int = 5,
    mode: str = "hybrid",
    filters: Filters | None = None,
    min_score: float | None = None,
    diversify: bool = False,
    mmr_lambda: float = 0.5,
    path_glob: str | None = None,
    cosine: bool = False,
) -> list[Hit]:
    """The k chunks that best match ``query`` in ``mode``, best first.

    ``filters`` (and the older ``path_glob``) restrict the search before ranking, so a filter
    never leaves fewer than k hits when k matching chunks exist. ``min_score`` drops hits whose
    cosine is below it, in every mode. ``diversify`` re-ranks a candidate pool with MMR: by
    cosine in dense mode, by the mode's score rescaled to 0..1 otherwise; redundancy is always
    the cosine between chunk vectors. Keyword hits carry ``dense_score`` only with ``cosine``
    or ``min_score``: only then is the query embedded.
    """
    query = check_query(query)
    check_mode(mode)
    if path_glob:
        filters = dataclasses.replace(filters or Filters(), path=path_glob)
    embed = mode != "keyword" or cosine or min_score is not None
    vector = embedder.embed([query])[0].astype(np.float32) if embed else None
    depth = max(k, CANDIDATES, 4 * k) if diversify else k
    if mode != "keyword":
        store.faiss_index()  # loaded (or rebuilt, which may write) before the snapshot begins
    # Ranking, rows and vectors come from one read transaction, so a writer committing in
    # between cannot delete a row after it was ranked and before its vector is read. Dense
    # search without filters or MMR reads only the rows (what went since is dropped below).
    alone = mode == "dense" and not diversify and not (filters is not None and filters.active)
    with contextlib.nullcontext() if alone else store.snapshot():
        ranking = rank(store, query, vector, mode, depth, filters=filters)
        rows = store.chunks([i for i, _ in ranking])
        ranking = [(i, s) for i, s in ranking if i in rows]  # deleted since FAISS was written
        if not ranking:
            return []
        # A dense ranking's scores are the cosines already (inner products of unit vectors):
        # the stored vectors are read only for MMR, or for another mode's cosines (keyword
        # hits without a cosine read none).
        stored = None
        if (mode != "dense" and vector is not None) or diversify:
            stored = store.vectors([i for i, _ in ranking])
    cosines: NDArray[np.float32] | None = None
    if vector is not None:
        cosines = (
            np.array([s for _, s in ranking], dtype=np.float32)
            if stored is None
            else stored @ vector
        )
    if min_score is not None and cosines is not None:
        keep = [j for j in range(len(ranking)) if cosines[j] >= min_score]
        ranking, cosines = [ranking[j] for j in keep], cosines[keep]
        stored = None if stored is None else stored[keep]
    order = list(range(min(k, len(ranking))))
    if diversify and ranking and stored is not None:
        scores = np.array([s for _, s in ranking], dtype=np.float32)
        relevance = cosines if mode == "dense" and cosines is not None else _unit_range(scores)
        order = mmr(relevance, stored, k, mmr_lambda)
    # Converted once for all hits: the mode's scores as float32 values, the cosines as floats.
    scores32 = np.asarray([s for _, s in ranking], dtype=np.float32).tolist()
    dense_scores: list[float | None] = (
        [None] * len(ranking) if cosines is None else cosines.tolist()
    )
    return [
        _hit(n, scores32[j], dense_scores[j], ranking[j][0], rows[ranking[j][0]])
        for n, j in enumerate(order, start=1)
    ]
