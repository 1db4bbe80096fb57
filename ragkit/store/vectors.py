"""The FAISS file derived from SQLite: build it, write it whole or not at all, read it, search it.

``vectors.faiss`` is an ``IndexIDMap2(IndexFlatIP)`` whose ids are chunk row ids. It is written
to a temporary file, fsynced and renamed into place, so a reader sees the old file or the new
one, never half of one; a killed writer's temporary files are removed by the next write.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ragkit.store.disk import storage_errors

FAISS_NAME = "vectors.faiss"
TMP_GLOB = f".{FAISS_NAME}.*.tmp"
_FAISS_THREADS = threading.Lock()
_ADD_SLICE = 65_536  # rows per FAISS add: IndexFlat copies what it is given


def import_faiss() -> Any:
    """The faiss module, imported on first use (it is not needed for ``--help``)."""
    import faiss

    return faiss


def faiss_ids(index: Any) -> NDArray[np.int64]:
    """The ids an IndexIDMap2 holds, sorted."""
    faiss = import_faiss()
    return np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))


def build(ids: NDArray[np.int64], vectors: NDArray[np.float32], dimension: int) -> Any:
    """A flat inner-product index over ``vectors``, keyed by ``ids``."""
    faiss = import_faiss()
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
    for start in range(0, len(ids), _ADD_SLICE):
        index.add_with_ids(vectors[start : start + _ADD_SLICE], ids[start : start + _ADD_SLICE])
    return index


def temp_files(folder: Path) -> list[Path]:
    """Temporary FAISS files a killed writer left in ``folder``."""
    return list(folder.glob(TMP_GLOB))


def write(folder: Path, index: Any) -> None:
    """Replace ``folder``'s FAISS file with ``index``, whole or not at all."""
    faiss = import_faiss()
    for stale in temp_files(folder):  # left by a writer that was killed
        stale.unlink(missing_ok=True)
    final = folder / FAISS_NAME
    tmp = folder / f".{FAISS_NAME}.{os.getpid()}.tmp"
    with storage_errors(folder):
        try:
            faiss.write_index(index, str(tmp))
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk must not keep a half-written file
            raise


def replace(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` over ``final`` and make the rename durable."""
    os.replace(tmp, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read(folder: Path, dimension: int) -> tuple[Any | None, str]:
    """The FAISS file's index, or None and what is wrong with it."""
    file = folder / FAISS_NAME
    if not file.is_file():
        return None, f"{FAISS_NAME} is missing"
    faiss = import_faiss()
    try:
        index = faiss.read_index(str(file))
    except RuntimeError as exc:
        return None, f"cannot read {FAISS_NAME} ({' '.join(str(exc).split())[:120]})"
    if not isinstance(index, faiss.IndexIDMap2):
        return None, f"{FAISS_NAME} is a {type(index).__name__}, not an IndexIDMap2"
    if index.d != dimension:
        return None, f"{FAISS_NAME} holds {index.d}-dim vectors, the index {dimension}"
    return index, ""


def search(
    index: Any, queries: NDArray[np.float32], k: int, *, allowed: NDArray[np.int64] | None = None
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Top-k (scores, ids) by inner product for each query row; ids -1 pad short results."""
    faiss = import_faiss()
    q = np.ascontiguousarray(queries, dtype=np.float32)
    params = None
    if allowed is not None:
        params = faiss.SearchParameters()
        params.sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
    if len(q) >= 8:
        scores, ids = index.search(q, k, params=params)
        return scores, ids
    # OpenMP threads make a single small query slower on few cores (17x at 10k vectors here).
    # The thread count is process-wide, so concurrent searches change it under one lock.
    with _FAISS_THREADS:
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            scores, ids = index.search(q, k, params=params)
        finally:
            faiss.omp_set_num_threads(threads)
    return scores, ids
