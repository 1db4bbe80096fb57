"""The FAISS file derived from SQLite: build it, update it, write it whole or not at all, search it.

``vectors.faiss`` holds one of two kinds of index, chosen by size (or by the ``vector_index``
setting), its ids the chunk row ids:

- ``flat``: ``IndexIDMap2(IndexFlatIP)``, exact. Below ``IVF_FROM`` vectors a single query
  scans them all in a few milliseconds.
- ``ivf``: ``IndexIVFFlat`` (inner product), approximate: k-means lists of full vectors, of
  which a query scans ``NPROBE``. Chosen over HNSW because it builds in seconds rather than
  minutes on this class of machine, removes ids for real (no tombstones), grows by appending,
  and a memory-mapped file is read only for the lists a query probes. Measured on one thread
  (bench/scale.py's vectors, 384 dims): at 100k, IVF with ``NPROBE`` 16 answers in 0.34 ms at
  recall@10 0.994, built in 5 s; HNSW (M 32, efSearch 64) in 0.14 ms at 0.989, built in 32 s.
  At 1M, IVF answers in 0.9 ms at recall@10 0.996 (0.5 ms at 0.987 with 8 lists), built
  in 52 s (``python bench/ann_choice.py --sizes 100k,1m --hnsw``).

The file is written to a temporary file, fsynced and renamed into place, so a reader sees the
old file or the new one, never half of one; a killed writer's temporary files are removed by
the next write. Readers map it (``IO_FLAG_MMAP``) instead of reading it whole.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ragkit.store.disk import storage_errors

FAISS_NAME = "vectors.faiss"
TMP_GLOB = f".{FAISS_NAME}.*.tmp"
FLAT, IVF = "flat", "ivf"
KINDS = ("auto", FLAT, IVF)  # values of the vector_index setting
# Below this many vectors "auto" keeps exact search: a one-thread flat scan costs about 15 ms per
# 100k x 384 (memory bandwidth), so 50k stays under ~8 ms; past it IVF answers in about 1 ms.
IVF_FROM = 50_000
NPROBE = 16  # lists scanned per query: recall@10 >= 0.95 on embedding-like data (bench/scale.py)
IVF_MIN = 1_000  # an IVF index needs enough vectors to train its lists
_TRAIN_PER_LIST = 50  # training sample per list (FAISS warns below 39)
_KMEANS_ITER = 10  # k-means iterations: the lists' quality barely moves past this
# Bytes of float32 per slice of vectors read from SQLite and added to FAISS. A slice is held
# twice (SQLite's blobs and the matrix joined from them) while FAISS copies it in, so a size in
# bytes, not rows, bounds a build's transient memory at any dimension (see slice_rows).
SLICE_BYTES = 32 << 20


def import_faiss() -> Any:
    """The faiss module, imported on first use (it is not needed for ``--help``)."""
    import faiss

    return faiss


def choose(setting: str, count: int) -> str:
    """The kind of index to build for ``count`` vectors under the ``vector_index`` setting."""
    if setting == IVF and count >= IVF_MIN:
        return IVF
    if setting == "auto" and count >= IVF_FROM:
        return IVF
    return FLAT


def kind_of(index: Any) -> str:
    """``flat`` or ``ivf``: what kind of index this is."""
    faiss = import_faiss()
    return IVF if isinstance(index, faiss.IndexIVF) else FLAT


def lists_for(count: int) -> int:
    """The number of IVF lists for ``count`` vectors: about 2 * sqrt(count)."""
    return max(16, int(round(2 * math.sqrt(count))))


def outgrown(index: Any, count: int) -> bool:
    """True when an IVF index trained for far fewer vectors should be rebuilt for ``count``."""
    return kind_of(index) == IVF and lists_for(count) > 2 * int(index.nlist)


def faiss_ids(index: Any) -> NDArray[np.int64]:
    """The ids the index holds, sorted."""
    faiss = import_faiss()
    if kind_of(index) == FLAT:
        return np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))
    parts = [ids for ids, _ in ivf_lists(index, codes=False)]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def ivf_lists(index: Any, *, codes: bool = True) -> Iterable[tuple[NDArray[np.int64], Any]]:
    """(ids, vectors or None) of each non-empty list of an IVF-Flat index, copied out."""
    faiss = import_faiss()
    invlists = index.invlists
    for lst in range(index.nlist):
        size = int(invlists.list_size(lst))
        if not size:
            continue
        ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy().astype(np.int64)
        vecs = None
        if codes:
            raw = faiss.rev_swig_ptr(invlists.get_codes(lst), size * index.code_size)
            vecs = np.frombuffer(raw.copy().tobytes(), dtype=np.float32).reshape(size, index.d)
        yield ids, vecs


def held_vectors(index: Any) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Every (id, vector) the index holds, in its own order (for ``ragkit doctor``)."""
    faiss = import_faiss()
    if kind_of(index) == FLAT:
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        return ids, index.index.reconstruct_n(0, index.ntotal)
    parts = list(ivf_lists(index))
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros((0, index.d), dtype=np.float32)
    return np.concatenate([i for i, _ in parts]), np.concatenate([v for _, v in parts])


def empty(
    kind: str, dimension: int, *, sample: NDArray[np.float32] | None = None, count: int = 0
) -> Any:
    """An empty index of ``kind``; an IVF one for ``count`` vectors is trained on ``sample``."""
    faiss = import_faiss()
    if kind == FLAT:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
    if sample is None or len(sample) < IVF_MIN:
        raise ValueError(f"an IVF index needs a training sample of at least {IVF_MIN} vectors")
    nlist = lists_for(max(count, len(sample)))
    quantizer = faiss.IndexFlatIP(dimension)
    index = faiss.IndexIVFFlat(quantizer, dimension, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = _KMEANS_ITER
    index.cp.min_points_per_centroid = 5  # small forced-IVF indexes: no stderr warning
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def training_size(count: int) -> int:
    """How many of ``count`` vectors train an IVF index for them."""
    return min(count, _TRAIN_PER_LIST * lists_for(count))


def slice_rows(dimension: int) -> int:
    """Rows of ``dimension`` float32s in one slice: ``SLICE_BYTES`` of them, at least one."""
    return max(1, SLICE_BYTES // (4 * max(1, dimension)))


def add(index: Any, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
    """Add vectors under their ids, a slice at a time."""
    rows = slice_rows(int(index.d))
    for start in range(0, len(ids), rows):
        index.add_with_ids(
            np.ascontiguousarray(vectors[start : start + rows], dtype=np.float32),
            np.ascontiguousarray(ids[start : start + rows], dtype=np.int64),
        )


def remove(index: Any, ids: NDArray[np.int64]) -> int:
    """Remove these ids from the index; returns how many it held."""
    if not len(ids):
        return 0
    faiss = import_faiss()
    return int(index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))))


def build(ids: NDArray[np.int64], vectors: NDArray[np.float32], dimension: int) -> Any:
    """A flat inner-product index over ``vectors``, keyed by ``ids``."""
    index = empty(FLAT, dimension)
    add(index, ids, vectors)
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


def read(folder: Path, dimension: int, *, mapped: bool = False) -> tuple[Any | None, str]:
    """The FAISS file's index, or None and what is wrong with it.

    ``mapped`` maps the file instead of reading it (a cold search then reads only what it
    scans: the probed lists of an IVF index). A mapped index must not be changed: FAISS aborts
    the process on an add to mapped storage. Writers read it whole.
    """
    file = folder / FAISS_NAME
    if not file.is_file():
        return None, f"{FAISS_NAME} is missing"
    faiss = import_faiss()
    # MMAP_IFC maps flat codes and IVF lists in place (adding IO_FLAG_MMAP breaks IVF reads).
    flags = (faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY) if mapped else 0
    try:
        index = faiss.read_index(str(file), flags)
    except RuntimeError as exc:
        return None, f"cannot read {FAISS_NAME} ({' '.join(str(exc).split())[:120]})"
    if isinstance(index, faiss.IndexIDMap2):
        inner = faiss.downcast_index(index.index)
        if not isinstance(inner, faiss.IndexFlat):
            return None, f"{FAISS_NAME} maps a {type(inner).__name__}, not an IndexFlat"
    elif not isinstance(index, faiss.IndexIVFFlat):
        return None, f"{FAISS_NAME} is a {type(index).__name__}, not an IndexIDMap2 or IndexIVFFlat"
    if index.d != dimension:
        return None, f"{FAISS_NAME} holds {index.d}-dim vectors, the index {dimension}"
    return index, ""


class Excluded:
    """Ids a search must skip (deleted from SQLite, still in an older file), with their FAISS
    selector built once: a store reuses it for every query until the set changes."""

    def __init__(self, ids: NDArray[np.int64]) -> None:
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.selector: Any = None
        if len(self.ids):
            faiss = import_faiss()
            self.selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.ids))


NOTHING_EXCLUDED = Excluded(np.zeros(0, dtype=np.int64))


def search(
    index: Any,
    queries: NDArray[np.float32],
    k: int,
    *,
    allowed: NDArray[np.int64] | None = None,
    excluded: Excluded = NOTHING_EXCLUDED,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Top-k (scores, ids) by inner product for each query row; ids -1 pad short results.

    ``allowed`` keeps only those ids; ``excluded`` drops those (ids deleted from SQLite that
    an older file may still hold). An IVF search with a filter probes more lists the fewer
    ids pass, and probes every list (exact) when that still leaves a row short of the
    min(k, allowed) hits it should have.
    """
    faiss = import_faiss()
    q = np.ascontiguousarray(queries, dtype=np.float32)
    sel = excluded.selector
    if allowed is not None:
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
    if kind_of(index) == FLAT:
        return _run(index, q, k, _params(faiss, None, sel))
    nprobe = NPROBE
    if allowed is not None:
        share = len(allowed) / max(1, index.ntotal)
        nprobe = int(math.ceil(NPROBE / max(share, 1e-9)))
    nprobe = min(int(index.nlist), nprobe)
    scores, ids = _run(index, q, k, _params(faiss, nprobe, sel))
    want = min(k, index.ntotal if allowed is None else len(allowed))
    # Short rows are padded at the end, so a row is short when its last wanted slot is empty.
    if want and nprobe < index.nlist and min(ids[:, want - 1].tolist()) < 0:
        scores, ids = _run(index, q, k, _params(faiss, int(index.nlist), sel))
    return scores, ids


# Search parameters without a selector, made once per nprobe: FAISS only reads them, so every
# thread can share them (making one costs about as much as the rest of a query's Python).
_SHARED_PARAMS: dict[int | None, Any] = {}


def _params(faiss: Any, nprobe: int | None, sel: Any) -> Any:
    """Search parameters for a flat index (``nprobe`` None) or an IVF one, with ``sel``."""
    if sel is None and nprobe in _SHARED_PARAMS:
        return _SHARED_PARAMS[nprobe]
    params = faiss.SearchParameters() if nprobe is None else faiss.SearchParametersIVF()
    if nprobe is not None:
        params.nprobe = nprobe
    if sel is None:
        _SHARED_PARAMS[nprobe] = params
    else:
        params.sel = sel
    return params


def _run(
    index: Any, q: NDArray[np.float32], k: int, params: Any
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    faiss = import_faiss()
    if len(q) >= 8:
        scores, ids = index.search(q, k, params=params)
        return scores, ids
    # OpenMP threads make a single small query slower on few cores (17x at 10k vectors here).
    # The thread count is an OpenMP setting of the calling thread only (each thread has its
    # own), so concurrent searches from other threads neither see this nor wait for it.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        scores, ids = index.search(q, k, params=params)
    finally:
        faiss.omp_set_num_threads(threads)
    return scores, ids
