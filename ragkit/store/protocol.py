"""The store seam: what pipeline, retriever, evaluation and the open ``Index`` call on a store.

Two backends satisfy it: ``Store`` (an index folder: SQLite rows and a FAISS file) and
``PostgresStore`` (a schema in a PostgreSQL database, pgvector and tsvector). mypy checks both
against it (``ragkit/store/address.py`` returns them as ``IndexStore``). No database connection,
FAISS object or file path crosses it: filters go in as data (``Filters``), rows come out as
``DocumentRow`` and ``StoredChunk``, vectors as numpy arrays, health as ``HealthReport``.
``pending_pages`` reads the chunks still waiting for vectors through it a page at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from ragkit.chunking import Chunk
    from ragkit.filters import Filters
    from ragkit.store.health import HealthReport
    from ragkit.store.schema import DocumentRow, Manifest, StoredChunk


class IndexStore(Protocol):
    """One index: documents and chunks, their vectors, dense and keyword search, one writer."""

    manifest: Manifest

    # -- lifetime and the writer lock ---------------------------------------------------------

    def close(self) -> None:
        """Release the write lock (if held) and the connection."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...

    def lock(self, *, wait: bool = False, timeout: float | None = None) -> None:
        """Take the one-writer lock, or raise IndexLockedError (``wait`` queues instead)."""

    def unlock(self) -> None:
        """Release the write lock if this process holds it."""

    def set_source(self, source: str) -> None:
        """Record the folder this index mirrors."""

    def note(self, key: str) -> str | None:
        """A value the pipeline keeps with the index (e.g. the file selection), or None."""

    def set_note(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key`` with the index, replacing what was there."""

    def refresh_manifest(self) -> Manifest:
        """Re-read the manifest (another process may have committed since)."""

    def data_version(self) -> int:
        """A number that changes when the vectors a search must load have changed."""

    def snapshot(self) -> AbstractContextManager[None]:
        """One read transaction: every read inside sees the same committed state."""

    def bulk(self, chunks_per_commit: int = 20_000) -> AbstractContextManager[None]:
        """Group the document writes made inside into transactions of about this many chunks."""

    # -- documents, chunks and the embedding cache --------------------------------------------

    def documents(self) -> dict[str, DocumentRow]:
        """Every document row, by path."""

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
        """Insert or replace a document and its chunks; (chunks needing a vector, reused)."""

    def cached_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of these embedding-cache keys already have a stored vector."""

    def move_document(self, old_path: str, new_path: str, *, mtime: float) -> None:
        """Re-point a document at its new path."""

    def touch_document(self, path: str, *, mtime: float) -> None:
        """Record a new mtime for a document whose content did not change."""

    def remove_documents(self, paths: Iterable[str]) -> int:
        """Delete documents and their chunks; returns how many went."""

    def chunks(self, ids: Sequence[int]) -> dict[int, StoredChunk]:
        """Chunk rows (with their document paths) by id."""

    def chunk_documents(self) -> dict[int, str]:
        """Every chunk id with the path of its document."""

    def counts(self) -> dict[str, int]:
        """documents, chunks, vectors and pending_documents."""

    def size_on_disk(self) -> int:
        """Bytes the index takes in its files or database."""

    # -- vectors ------------------------------------------------------------------------------

    def pending(self, after: int = 0, limit: int | None = None) -> list[tuple[int, str, int]]:
        """(id, text, tokens) of chunks still waiting for their vectors, ids above ``after``, in
        id order; at most ``limit``."""

    def fill_from_cache(self, ids: Sequence[int], keys: Sequence[str]) -> set[int]:
        """Give waiting chunks the stored vector of a chunk with the same cache key; the ids."""

    def set_vectors(
        self, ids: Sequence[int], vectors: NDArray[np.float32], tokens: int = 0
    ) -> None:
        """Store one embedded batch and commit it."""

    def vectors(self, ids: Sequence[int]) -> NDArray[np.float32]:
        """The stored vectors of these chunks, one row per id in the order given."""

    def chunk_ids(
        self, *, path_glob: str | None = None, filters: Filters | None = None
    ) -> NDArray[np.int64]:
        """Ids of the chunks that have vectors (those passing ``filters``), ascending."""

    def save_vectors(self, vector_index: str | None = None, *, rebuild: bool = False) -> int:
        """Bring the search structure in line with the stored vectors; returns its generation.

        ``vector_index`` (auto, flat, ivf) is the kind a store of FAISS files builds; a store
        whose engine keeps its own index (PostgreSQL's HNSW) takes and ignores it.
        """

    def vectors_stale(self, vector_index: str) -> bool:
        """True when the search structure lags the stored vectors (``save_vectors`` mends it)."""

    def vectors_agree(self) -> bool:
        """True when the search structure holds exactly the stored vectors."""

    def faiss_index(self) -> Any:
        """The loaded search structure, opaque to callers (None when the store needs none)."""

    def share_vectors(self, index: Any) -> None:
        """Use a search structure another connection loaded (an open ``Index`` shares one)."""

    # -- search and health --------------------------------------------------------------------

    def search_vectors(
        self, queries: NDArray[np.float32], k: int, *, allowed: NDArray[np.int64] | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Top-k (cosine scores, ids) per query row; ids -1 pad short results."""

    def keyword_search(
        self, query: str, k: int, *, filters: Filters | None = None
    ) -> list[tuple[int, float]]:
        """Top-k (chunk id, score) for the words of ``query``, best first."""

    def check(self) -> HealthReport:
        """Verify the index's parts against each other."""

    def repair(self) -> HealthReport:
        """Fix what ``check`` finds that can be fixed without the source files."""


PENDING_PAGE = 10_000  # chunks waiting for vectors read at a time: memory follows the page


def pending_pages(
    store: IndexStore, limit: int | None = None, *, after: int = 0
) -> Iterator[list[tuple[int, str, int]]]:
    """Every chunk still waiting for its vector with an id above ``after``, as ``pending`` rows
    a page at a time (at most ``limit``, else ``PENDING_PAGE``), in id order.

    Keyset paging: vectors stored between pages move no later row, and each page starts after
    the highest id of the one before, however the caller reorders that page.
    """
    while page := store.pending(after=after, limit=limit or PENDING_PAGE):
        after = page[-1][0]
        yield page
