"""Keyword search held in memory by an open Index: FTS5's own BM25 over FTS5's own postings.

SQLite's ``bm25()`` scores every matching row through FTS5's auxiliary-function API, and a
question OR-ed over ten words matches most of a corpus (half of SciFact's 5,183 abstracts), so
one query costs milliseconds. An open Index instead holds, per term, the rows that contain it
and how often, read once from FTS5's index through its ``fts5vocab`` view (so the tokens and
Porter stems are FTS5's), and scores with ``bm25()``'s formula, constants and floating-point
operations in the same order: the same scores, so the same rankings, in a fraction of the time.

The postings copy one state of the FTS5 index. A query uses them only when its own snapshot
holds that state (FTS5's structure and averages records, which every write to the index
changes: two rows read by key); otherwise it is ranked by FTS5 as before, and a new copy is
built in a background thread once the writer's run has completed (the manifest's
``faiss_generation`` moved), so a running ``ragkit index`` does not cause a build per commit.
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ragkit.store.keyword import query_words
from ragkit.store.schema import open_db

log = logging.getLogger(__name__)

K1 = 1.2  # bm25()'s constants (SQLite's fts5_aux.c)
B = 0.75
Ranking = list[tuple[int, float]]  # (chunk id, BM25 score), best first

_AVERAGES, _STRUCTURE = 1, 10  # FTS5's fixed rowids in chunks_fts_data (file format)
_CHARS_PER_SLICE = 32_000_000  # occurrences listed per slice parsed at once (~4M)
_STEMS_KEPT = 100_000  # words whose terms are remembered between queries
_TOKENIZE = re.compile(r"tokenize\s*=\s*('(?:[^']|'')*'|\"[^\"]*\")", re.IGNORECASE)


class BuildError(Exception):
    """FTS5's index could not be read into memory (keyword search stays with FTS5)."""


def fts_state(conn: sqlite3.Connection) -> tuple[bytes, bytes] | None:
    """FTS5's averages and structure records as this connection sees them; None without FTS5.

    Every write to the FTS5 index rewrites the structure record (a new segment, a higher write
    counter) and the averages record (row and token counts), so two snapshots with equal
    records hold the same keyword index.
    """
    rows = dict(
        conn.execute(
            "SELECT id, block FROM chunks_fts_data WHERE id IN (?, ?)", (_AVERAGES, _STRUCTURE)
        ).fetchall()
    )
    if _AVERAGES not in rows or _STRUCTURE not in rows:
        return None
    return bytes(rows[_AVERAGES]), bytes(rows[_STRUCTURE])


def _varints(blob: bytes) -> list[int]:
    """SQLite varints (7 bits a byte, high bit set on all but the last), as FTS5 writes them."""
    values, value = [], 0
    for byte in blob:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            values.append(value)
            value = 0
    return values


@dataclass(frozen=True, eq=False)
class Postings:
    """One state of the FTS5 index in memory: term -> (document numbers, frequencies)."""

    state: tuple[bytes, bytes]  # fts_state() when read
    generation: int  # the manifest's faiss_generation when read
    rows: int  # FTS5's row count: BM25's N
    ids: NDArray[np.int64]  # chunk id of each document number, ascending
    norm: NDArray[np.float64]  # k1 * (1 - b + b * length / average length), per document
    terms: dict[str, int]
    starts: NDArray[np.int64]  # term t's postings are [starts[t], starts[t + 1])
    docs: NDArray[np.int32]
    freqs: NDArray[np.uint16]  # occurrences in the row (text and heading)

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (the term dictionary excluded)."""
        arrays = (self.ids, self.norm, self.starts, self.docs, self.freqs)
        return sum(a.nbytes for a in arrays)

    def _positions(self, chunk_ids: NDArray[np.int64]) -> NDArray[np.int64]:
        """Document numbers of those ``chunk_ids`` that have one."""
        chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, chunk_ids)
        inside = pos < len(self.ids)
        pos, chunk_ids = pos[inside], chunk_ids[inside]
        found: NDArray[np.int64] = pos[self.ids[pos] == chunk_ids]
        return found

    def top(
        self,
        terms: Sequence[str],
        k: int,
        *,
        excluded: NDArray[np.int64] | None = None,
        allowed: NDArray[np.int64] | None = None,
    ) -> Ranking:
        """The top-k (chunk id, score) for an OR of ``terms``, best first, ties by chunk id.

        The score is ``-bm25()``: per term, ``idf * f * (k1 + 1) / (f + norm)``, added in the
        query's order, computed in float64 exactly as FTS5 computes it in C.
        """
        if k < 1 or not len(self.ids):
            return []
        scores = np.zeros(len(self.ids), dtype=np.float64)
        k1_plus_1 = K1 + 1.0
        for term in terms:
            t = self.terms.get(term)
            if t is None:
                continue  # in no row: adds nothing to any score
            start, end = int(self.starts[t]), int(self.starts[t + 1])
            hits = end - start
            idf = math.log((self.rows - hits + 0.5) / (hits + 0.5))
            if idf <= 0.0:
                idf = 1e-6  # as FTS5 does for terms in more than half the rows
            docs = self.docs[start:end]
            f = self.freqs[start:end].astype(np.float64)
            scores[docs] += idf * ((f * k1_plus_1) / (f + self.norm[docs]))
        if excluded is not None and len(excluded):
            scores[self._positions(excluded)] = 0.0
        if allowed is not None:
            keep = np.zeros(len(self.ids), dtype=bool)
            keep[self._positions(allowed)] = True
            scores[~keep] = 0.0
        found = np.flatnonzero(scores > 0.0)  # every match scores > 0 (idf and f are > 0)
        if len(found) > k:
            cut = -np.partition(-scores[found], k - 1)[k - 1]
            found = found[scores[found] >= cut]  # ties at the cut stay, for the id order
        order = np.lexsort((self.ids[found], -scores[found]))[:k]
        best = found[order]
        return [(int(i), float(s)) for i, s in zip(self.ids[best], scores[best], strict=True)]


def tokenizer_of(conn: sqlite3.Connection) -> str | None:
    """The ``tokenize`` option chunks_fts was created with (quoted), or None for FTS5's default."""
    row = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'chunks_fts'").fetchone()
    if row is None:
        raise BuildError("this index has no keyword table")
    match = _TOKENIZE.search(str(row[0]))
    return match.group(1) if match else None


def build(conn: sqlite3.Connection, *, stop: threading.Event | None = None) -> Postings:
    """The postings of chunks_fts as ``conn`` sees it, read in one transaction.

    Six bytes a posting (a row number and a count), plus 16 a row; building holds about
    twice that at its peak.
    """
    conn.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.ragkit_fts_instances"
        " USING fts5vocab(main, chunks_fts, 'instance')"
    )
    conn.execute("BEGIN")
    try:
        state = fts_state(conn)
        if state is None:
            raise BuildError("this index has no FTS5 averages or structure record")
        averages = _varints(state[0])
        n_rows, n_tokens = (averages[0], sum(averages[1:])) if averages else (0, 0)  # empty
        row = conn.execute("SELECT value FROM manifest WHERE key = 'faiss_generation'").fetchone()
        generation = int(row[0]) if row else 0
        listed = conn.execute("SELECT group_concat(id) FROM chunks_fts_docsize").fetchone()[0]
        ids = np.sort(np.fromstring(listed or "", dtype=np.int64, sep=","))
        lengths = np.zeros(len(ids), dtype=np.float64)
        names: list[str] = []
        rows: list[NDArray[np.int32]] = []
        freqs: list[NDArray[np.uint16]] = []
        per_term: list[NDArray[np.int64]] = []
        # One row per term (in term order: the view consumes GROUP BY term), its rows listed
        # once per occurrence: parsed by numpy a slice of ~4M occurrences at a time, as a row
        # per occurrence would be a Python tuple each (a million at SciFact's size).
        cursor = conn.execute(
            "SELECT term, group_concat(doc) FROM temp.ragkit_fts_instances GROUP BY term"
        )
        batch: list[tuple[str, str]] = []
        size = 0
        while True:
            more = cursor.fetchmany(64)
            for term, listing in more:
                batch.append((str(term), str(listing)))
                size += len(listing)
            if batch and (size > _CHARS_PER_SLICE or not more):
                if stop is not None and stop.is_set():
                    raise BuildError("stopped")
                pos, freq, per = _slice(batch, ids)
                lengths += np.bincount(pos, weights=freq, minlength=len(ids))
                rows.append(pos)
                freqs.append(freq)
                per_term.append(per)
                names.extend(t for t, _ in batch)
                batch, size = [], 0
            if not more:
                break
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
    if int(lengths.sum()) != n_tokens:  # what bm25() reads as the average length
        raise BuildError(f"FTS5 counts {n_tokens} tokens, its index holds {int(lengths.sum())}")
    # bm25()'s document-length term, in its order of operations: k1 * (1 - b + b * D / avgdl).
    average = float(n_tokens) / float(n_rows) if n_rows else 1.0
    norm = (K1 * (1 - B + B * lengths / average)).astype(np.float64, copy=False)
    starts = np.zeros(len(names) + 1, dtype=np.int64)
    if per_term:
        np.cumsum(np.concatenate(per_term), out=starts[1:])
    return Postings(
        state=state,
        generation=generation,
        rows=n_rows,
        ids=ids,
        norm=norm,
        terms={name: t for t, name in enumerate(names)},
        starts=starts,
        docs=np.concatenate(rows) if rows else np.zeros(0, dtype=np.int32),
        freqs=np.concatenate(freqs) if freqs else np.zeros(0, dtype=np.uint16),
    )


def _slice(
    batch: Sequence[tuple[str, str]], ids: NDArray[np.int64]
) -> tuple[NDArray[np.int32], NDArray[np.uint16], NDArray[np.int64]]:
    """(row numbers, counts) of each term's distinct rows, and how many rows each term has."""
    counts = np.fromiter((s.count(",") + 1 for _, s in batch), np.int64, len(batch))
    docs = np.fromstring(",".join(s for _, s in batch), dtype=np.int64, sep=",")
    if len(docs) != int(counts.sum()):
        raise BuildError("FTS5's term listing could not be read")
    owner = np.repeat(np.arange(len(batch), dtype=np.int32), counts)
    # The view lists each term's rows in rowid order; sorted here only if it ever did not.
    if len(docs) > 1 and not np.all((np.diff(docs) >= 0) | (np.diff(owner) != 0)):
        order = np.lexsort((docs, owner))
        owner, docs = owner[order], docs[order]
    new = np.ones(len(docs), dtype=bool)
    new[1:] = (owner[1:] != owner[:-1]) | (docs[1:] != docs[:-1])
    first = np.flatnonzero(new)
    freq = np.diff(np.append(first, len(docs)))
    if len(freq) and int(freq.max()) > np.iinfo(np.uint16).max:
        raise BuildError("a term occurs more than 65,535 times in one chunk")
    docs = docs[first]
    pos = np.minimum(np.searchsorted(ids, docs), max(len(ids) - 1, 0))
    if len(pos) and (not len(ids) or not np.array_equal(ids[pos], docs)):
        raise BuildError("FTS5 lists a row it holds no size for")
    per_term = np.bincount(owner[first], minlength=len(batch))
    return pos.astype(np.int32), freq.astype(np.uint16), per_term


class _Terms:
    """Query words to FTS5 terms, by FTS5's own tokenizer (an in-memory table that uses it)."""

    def __init__(self, tokenize: str | None) -> None:
        self._conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        option = f", tokenize={tokenize}" if tokenize else ""
        self._conn.execute(f"CREATE VIRTUAL TABLE words USING fts5(word{option})")
        self._conn.execute("CREATE VIRTUAL TABLE words_terms USING fts5vocab(words, 'instance')")
        self._known: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def __call__(self, words: Sequence[str]) -> list[tuple[str, ...]]:
        """The terms FTS5 makes of each word (usually one: its Porter stem)."""
        got = {w: self._known.get(w) for w in words}
        new = [w for w, t in got.items() if t is None]
        if new:
            with self._lock:
                if len(self._known) > _STEMS_KEPT:
                    self._known = {}
                self._conn.executemany(
                    "INSERT INTO words(rowid, word) VALUES (?, ?)", enumerate(new, start=1)
                )
                found: dict[int, list[str]] = {n: [] for n in range(1, len(new) + 1)}
                for doc, term in self._conn.execute(
                    "SELECT doc, term FROM words_terms ORDER BY doc, offset"
                ):
                    found[int(doc)].append(str(term))
                self._conn.execute("DELETE FROM words")
                for n, word in enumerate(new, start=1):
                    got[word] = self._known[word] = tuple(found[n])
        return [got[w] or () for w in words]

    def close(self) -> None:
        """Close the in-memory table."""
        self._conn.close()


class KeywordMemory:
    """The postings of one index, shared by an open Index's threads and rebuilt in the background.

    Built by the second keyword-ranking query (a one-shot ``ragkit search`` never pays for a
    build), and again after a writer's run; until a build is done, and whenever a query's
    snapshot differs from the copy, ``search`` returns None and FTS5 ranks.
    """

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._lock = threading.Lock()
        self._postings: Postings | None = None
        self._terms: _Terms | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._builder: sqlite3.Connection | None = None  # interrupted by close()
        self._asked = 0
        self._failed_at: int | None = None  # generation whose build failed: not tried again
        self._closed = False

    @property
    def postings(self) -> Postings | None:
        """The copy in use, if one was built."""
        return self._postings

    def search(
        self,
        conn: sqlite3.Connection,
        query: str,
        k: int,
        *,
        generation: int,
        allowed: Callable[[], NDArray[np.int64]] | None = None,
    ) -> Ranking | None:
        """Top-k (chunk id, score) as FTS5 ranks them, or None when FTS5 must rank this query.

        ``conn`` is the query's connection, inside its read snapshot; ``generation`` the
        manifest's ``faiss_generation`` it last read; ``allowed`` gives the ids passing the
        query's filters (chunks with vectors only).
        """
        postings, terms = self._postings, self._terms
        if postings is None or terms is None or fts_state(conn) != postings.state:
            self._consider_build(postings, generation)
            return None
        words = query_words(query)
        if not words or k < 1:
            return []
        found = terms(words)
        if any(len(t) != 1 for t in found):
            return None  # a word FTS5 splits into a phrase (or drops): only FTS5 ranks those
        terms_used = [t[0] for t in found]
        if allowed is not None:  # the ids passing the filters: chunks with vectors only
            return postings.top(terms_used, k, allowed=allowed())
        # Chunks still waiting for a vector are left out, as FTS5 search does: looked up among
        # the best-ranked (by the partial index chunks_pending), deeper if some were.
        want, pending = k, np.zeros(0, dtype=np.int64)
        while True:
            ranked = postings.top(terms_used, want, excluded=pending)
            if not ranked:
                return []
            ids = [i for i, _ in ranked]
            marks = ",".join("?" * len(ids))
            try:
                rows = conn.execute(
                    "SELECT id FROM chunks INDEXED BY chunks_pending"
                    f" WHERE vector IS NULL AND id IN ({marks})",
                    ids,
                ).fetchall()
            except sqlite3.OperationalError:  # an old index without chunks_pending: FTS5 copes
                return None
            if not rows:
                return ranked[:k]
            pending = np.concatenate([pending, np.array([r[0] for r in rows], dtype=np.int64)])
            if len(ranked) < want:  # every match was ranked: what is left is all there is
                gone = set(pending.tolist())
                return [hit for hit in ranked if hit[0] not in gone][:k]
            want *= 2

    def _consider_build(self, postings: Postings | None, generation: int) -> None:
        with self._lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            if postings is None:
                self._asked += 1
                if self._asked < 2:
                    return
            elif generation == postings.generation:
                return  # a writer is at work: build once its run completes
            if self._failed_at == generation:
                return
            self._thread = threading.Thread(
                target=self._build, args=(generation,), name="ragkit-keywords", daemon=True
            )
            self._thread.start()

    def _build(self, generation: int) -> None:
        started = time.perf_counter()
        try:
            conn = open_db(self._folder)
        except sqlite3.Error as exc:
            log.warning("keyword search stays in FTS5: cannot open %s (%s)", self._folder, exc)
            self._failed_at = generation
            return
        with self._lock:
            self._builder = conn
            closed = self._closed
        try:
            if closed:
                return
            postings = build(conn, stop=self._stop)
            terms = self._terms or _Terms(tokenizer_of(conn))
        except (sqlite3.Error, BuildError) as exc:
            if not self._stop.is_set():
                log.warning("keyword search stays in FTS5: %s", exc)
                self._failed_at = generation
            return
        finally:
            with self._lock:
                self._builder = None
            conn.close()
        with self._lock:
            if self._closed:
                return
            self._terms = terms  # before the postings: a query that sees them uses both
            self._postings = postings
        log.info(
            "keyword postings of %s in memory: %d rows, %d terms, %.0f MB, %.2f s",
            self._folder,
            len(postings.ids),
            len(postings.terms),
            postings.nbytes / 1e6,
            time.perf_counter() - started,
        )

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a build under way (if any) to finish; True if a copy is ready."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self._postings is not None

    def close(self) -> None:
        """Stop a build under way and let the postings go."""
        with self._lock:
            self._closed = True
            self._stop.set()
            if self._builder is not None:
                self._builder.interrupt()
            thread = self._thread
        if thread is not None:
            thread.join()
        if self._terms is not None:
            self._terms.close()
        self._postings = self._terms = None
