"""The FAISS side of ``Store``: the vector file derived from the vectors SQLite holds.

Stored vectors read a slice at a time; the FAISS index built or updated from them, written
whole and recorded in the manifest; checked against SQLite on first use (and brought in line
when the two disagree); searched, with ids deleted since the file was written left out.
``StoreVectors`` is a mixin: ``Store`` inherits it, so callers and tests see one class; the
FAISS file's own operations (kinds, atomic write, read, search) are in ``vectors.py``.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ragkit.errors import RagkitError
from ragkit.store import freshness, vectors
from ragkit.store.freshness import STAMP_KEY
from ragkit.store.lock import WriteLock
from ragkit.store.schema import Database, Manifest, now, read_manifest

if TYPE_CHECKING:
    from ragkit.filters import Filters

log = logging.getLogger(__name__)
# A filter passing at most this many chunks of an approximate index is scored exactly.
EXACT_FILTERED = 4_096


class StoreVectors:
    """The FAISS file of one index folder, kept in line with its SQLite vectors (``Store``'s)."""

    # Set by Store.__init__.
    path: Path
    db: Database
    manifest: Manifest
    _faiss: Any
    _deleted: vectors.Excluded | None  # vectors_deleted as of SQLite's data_version _deleted_at
    _deleted_at: int | None
    _lock: WriteLock

    if TYPE_CHECKING:  # Store's, used here

        def chunk_ids(
            self, *, path_glob: str | None = None, filters: Filters | None = None
        ) -> NDArray[np.int64]: ...

        def counts(self) -> dict[str, int]: ...

        def data_version(self) -> int: ...

        def lock(self, *, wait: bool = False, timeout: float | None = None) -> None: ...

        def unlock(self) -> None: ...

        def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    def _vector_rows(self, rows: list[tuple[int, bytes]]) -> tuple[NDArray[np.int64], Any]:
        """(ids, float32 matrix) of (id, blob) rows; RagkitError when a blob has the wrong size."""
        d = self.manifest.dimension
        if any(len(blob) != 4 * d for _, blob in rows):
            raise RagkitError(
                f"stored vectors of index {self.path.name} are not {d} floats long:"
                f" run `ragkit doctor --repair --index {self.path.name}`, then `ragkit index` again"
            )
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        data = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), d)
        return ids, data.astype(np.float32, copy=False)

    def vector_slices(
        self, ids: NDArray[np.int64] | None = None
    ) -> Iterator[tuple[NDArray[np.int64], NDArray[np.float32]]]:
        """Stored (ids, vectors) a slice at a time, by id: all of them, or those of ``ids``.

        Memory stays bounded by the slice, not the index (a 1M x 384 index is 1.5 GB).
        """
        size = vectors.slice_rows(self.manifest.dimension)
        if ids is None:
            cursor = self.db.conn.execute(
                "SELECT id, vector FROM chunks WHERE vector IS NOT NULL ORDER BY id"
            )
            while rows := cursor.fetchmany(size):
                yield self._vector_rows(rows)
            return
        for start in range(0, len(ids), size):
            part = ids[start : start + size]
            yield np.asarray(part, dtype=np.int64), self.vectors(part)

    def all_vectors(self) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Every stored (id, vector), sorted by id."""
        parts = list(self.vector_slices())
        if not parts:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.manifest.dimension), np.float32)
        return np.concatenate([i for i, _ in parts]), np.concatenate([v for _, v in parts])

    def wrong_size_vectors(self) -> int:
        """How many stored vectors are not ``dimension`` floats long."""
        return int(
            self.db.conn.execute(
                "SELECT count(*) FROM chunks WHERE vector IS NOT NULL AND length(vector) != ?",
                (4 * self.manifest.dimension,),
            ).fetchone()[0]
        )

    def _build_faiss(self, kind: str, ids: NDArray[np.int64]) -> Any:
        """A new index of ``kind`` over every stored vector (``ids``: their sorted ids)."""
        d = self.manifest.dimension
        kind = vectors.choose(kind, len(ids))
        if kind == vectors.IVF:
            rng = np.random.default_rng(0)
            sample = np.sort(rng.choice(ids, vectors.training_size(len(ids)), replace=False))
            index = vectors.empty(kind, d, sample=self.vectors(sample), count=len(ids))
        else:
            index = vectors.empty(kind, d)
        for part_ids, part in self.vector_slices():
            vectors.add(index, part_ids, part)
        return index

    def _updated_faiss(self, vector_index: str, *, rebuild: bool = False) -> Any:
        """The FAISS file brought in line with SQLite: updated in place when it is of the kind
        wanted (new vectors added, deleted ones removed), built anew otherwise."""
        ids = self.chunk_ids()
        kind = vectors.choose(vector_index, len(ids))
        current = None if rebuild else vectors.read(self.path, self.manifest.dimension)[0]
        if (
            current is None
            or vectors.kind_of(current) != kind
            or vectors.outgrown(current, len(ids))
        ):
            return self._build_faiss(kind, ids)
        held = vectors.faiss_ids(current)
        vectors.remove(current, np.setdiff1d(held, ids, assume_unique=True))
        for part_ids, part in self.vector_slices(np.setdiff1d(ids, held, assume_unique=True)):
            vectors.add(current, part_ids, part)
        return current

    def save_vectors(self, vector_index: str | None = None, *, rebuild: bool = False) -> int:
        """Bring the FAISS file in line with SQLite, atomically; returns the new generation.

        ``vector_index`` (auto, flat, ivf) picks the kind; None keeps the index's own. A file of
        that kind is updated (a small change to a large index costs little); ``rebuild`` builds
        it anew from SQLite instead.
        """
        index = self._updated_faiss(vector_index or self.manifest.vector_index, rebuild=rebuild)
        self._write_faiss(index)
        return self.manifest.faiss_generation

    def vectors_stale(self, vector_index: str) -> bool:
        """True when the FAISS file lags SQLite, or is not the kind ``vector_index`` wants."""
        wanted = vectors.choose(vector_index, self.manifest.faiss_count)
        return (
            self.manifest.faiss_count != self.counts()["vectors"]
            or wanted != self.manifest.vector_index
            or not self.vectors_agree()
        )

    def _write_faiss(self, index: Any) -> None:
        """Replace the FAISS file with ``index`` (whole, or not at all), then record it."""
        vectors.write(self.path, index)
        # A kill here leaves the new file with the old generation and count in the manifest:
        # harmless, because readers trust the ids in the file, not these counters (the old
        # stamp names the old file, so a reader compares the ids).
        generation = self.manifest.faiss_generation + 1
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO manifest(key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [
                    ("faiss_generation", str(generation)),
                    ("faiss_count", str(index.ntotal)),
                    ("vector_index", vectors.kind_of(index)),
                    ("updated", now()),
                    (
                        STAMP_KEY,
                        freshness.stamp(conn, self.path / vectors.FAISS_NAME, index.ntotal),
                    ),
                ],
            )
            # Written under the lock from SQLite: the new file holds none of the deleted ids.
            conn.execute("DELETE FROM vectors_deleted")
        self.manifest = read_manifest(self.db, self.path)
        self._faiss = index
        self._deleted_at = None

    def vectors_agree(self) -> bool:
        """True when the FAISS file holds exactly the chunk ids that SQLite has vectors for."""
        index = self._load_faiss_file()
        return index is not None and bool(
            np.array_equal(vectors.faiss_ids(index), self.chunk_ids())
        )

    def _load_faiss_file(self) -> Any | None:
        index, problem = vectors.read(self.path, self.manifest.dimension, mapped=True)
        if problem and (self.path / vectors.FAISS_NAME).is_file():
            log.warning("%s; rebuilding it from SQLite", problem)
        return index

    def _deleted_ids(self) -> vectors.Excluded:
        """Ids deleted from SQLite that the FAISS file may still hold (read again only after a
        commit: ``PRAGMA data_version`` tells, without reading a table)."""
        version = self.data_version()
        if self._deleted is not None and self._deleted_at == version:
            return self._deleted
        try:
            rows = self.db.conn.execute("SELECT id FROM vectors_deleted").fetchall()
        except sqlite3.OperationalError:  # an index from before the table, not yet migrated
            rows = []
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        self._deleted = vectors.Excluded(ids)
        self._deleted_at = version
        return self._deleted

    def faiss_index(self) -> Any:
        """The FAISS index, verified against SQLite and brought in line with it if they disagree.

        A file that lags SQLite while another process writes is used as it is, minus the ids
        deleted since (``vectors_deleted``): that writer saves a current one when it is done.
        """
        if self._faiss is not None:
            return self._faiss
        file = self.path / vectors.FAISS_NAME
        before = freshness.identity(file)
        index = self._load_faiss_file()
        if (
            index is not None
            # The stamp spares a cold search reading every id of both (see freshness.py).
            and not freshness.holds(self.db.conn, file, index, before=before)
            and not np.array_equal(vectors.faiss_ids(index), self.chunk_ids())
        ):
            log.info("FAISS file and SQLite disagree; bringing vectors in line with SQLite")
            index = self._rebuild_faiss(index)
        elif index is None:
            index = self._rebuild_faiss(None)
        self._faiss = index
        return index

    def _rebuild_faiss(self, stale: Any | None) -> Any:
        """FAISS brought in line with SQLite, and saved too when no writer is at work."""
        kind = self.manifest.vector_index if stale is None else vectors.kind_of(stale)
        if self._lock.held:  # this process is the writer: it saves when it is done
            return self._updated_faiss(kind)
        try:
            self.lock()
        except (RagkitError, OSError):
            # A writer will save its own; or the index is read-only to us. A stale approximate
            # index serves as it is (deleted ids excluded); a small flat one is rebuilt in memory.
            if stale is not None and vectors.kind_of(stale) == vectors.IVF:
                return stale
            return self._build_faiss(vectors.FLAT, self.chunk_ids())
        try:
            # Built under the lock, so no writer can change SQLite between the build and the save.
            index = self._updated_faiss(kind)
            try:
                self._write_faiss(index)
            except (OSError, sqlite3.Error, RagkitError) as exc:
                log.warning("could not save the rebuilt %s (%s)", vectors.FAISS_NAME, exc)
            return index
        finally:
            self.unlock()

    def search_vectors(
        self, queries: NDArray[np.float32], k: int, *, allowed: NDArray[np.int64] | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Top-k (scores, ids) by inner product for each query row; ids -1 pad short results.

        ``allowed`` restricts the search to those ids, and it still returns min(k, allowed)
        hits per row. A few allowed ids under an approximate index are scored exactly from
        SQLite instead (cheaper than probing every list for them).
        """
        index = self.faiss_index()
        if (
            allowed is not None
            and len(allowed) <= EXACT_FILTERED
            and vectors.kind_of(index) == "ivf"
        ):
            return self._exact(queries, k, allowed)
        return vectors.search(index, queries, k, allowed=allowed, excluded=self._deleted_ids())

    def _exact(
        self, queries: NDArray[np.float32], k: int, ids: NDArray[np.int64]
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Exact top-k over the stored vectors of ``ids``; ids -1 pad short results."""
        q = np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        found = np.full((len(q), k), -1, dtype=np.int64)
        if not len(ids):
            return scores, found
        ids = np.asarray(ids, dtype=np.int64)
        sims = q @ self.vectors(ids).T
        top = min(k, len(ids))
        for row in range(len(q)):
            best = np.argpartition(-sims[row], top - 1)[:top]
            best = best[np.argsort(-sims[row][best], kind="stable")]
            scores[row, :top] = sims[row][best]
            found[row, :top] = ids[best]
        return scores, found

    def vectors(self, ids: Sequence[int] | NDArray[np.int64]) -> NDArray[np.float32]:
        """The stored vectors of these chunks, one row per id in the order given."""
        out = np.zeros((len(ids), self.manifest.dimension), dtype=np.float32)
        where: dict[int, list[int]] = {}
        for row, chunk_id in enumerate(ids):
            where.setdefault(int(chunk_id), []).append(row)
        unique = list(where)
        for start in range(0, len(unique), 500):
            part = unique[start : start + 500]
            marks = ",".join("?" * len(part))
            for chunk_id, blob in self.db.conn.execute(
                f"SELECT id, vector FROM chunks WHERE id IN ({marks}) AND vector IS NOT NULL", part
            ):
                out[where.pop(int(chunk_id))] = np.frombuffer(blob, dtype="<f4")
        if where:
            raise KeyError(f"no stored vector for chunk(s) {sorted(where)[:5]}")
        return out
