"""IVF (as ragkit builds it) against HNSW, bare FAISS on one thread: recall@10, p50, build time.

The measurement behind ``vector_index=auto``'s choice and ``NPROBE`` (ragkit/store/vectors.py),
on bench/scale.py's embedding-like vectors (384 dims unless NxDIM is given):

    python bench/ann_choice.py [--sizes 100k,1m] [--nprobe 8,16,32] [--hnsw] [--queries 200]

For each size: IVF trained and filled exactly as ragkit does (``vectors.empty`` / ``add``),
then p50 and recall@10 against exact search at each nprobe; with ``--hnsw``, IndexHNSWFlat
(M 32, efConstruction 40) at efSearch 16..128 too. Build times use FAISS's default threads.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scale import QUERY_BASE, count_of, vectors_for  # noqa: E402


def measure(index: Any, queries: np.ndarray, truth: np.ndarray, params: Any) -> tuple[float, float]:
    """(p50 ms, recall@10) of single-query searches on one thread."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    times, hits = [], []
    for q in queries:
        started = time.perf_counter()
        _, ids = index.search(q[None, :], 10, params=params)
        times.append((time.perf_counter() - started) * 1000)
        hits.append(len(set(ids[0].tolist()) & set(truth[len(hits)].tolist())) / 10)
    faiss.omp_set_num_threads(threads)
    return float(np.median(times)), float(np.mean(hits))


def one_size(spec: str, nprobes: list[int], hnsw: bool, queries: int) -> None:
    import faiss

    from ragkit.store import vectors

    n_text, _, dim_text = spec.lower().partition("x")
    n, dim = count_of(n_text), int(dim_text or 384)
    data = vectors_for(np.arange(n), dim)
    qv = vectors_for(np.arange(QUERY_BASE + 10, QUERY_BASE + 10 + queries), dim)
    sims = np.concatenate([qv @ data[s : s + 200_000].T for s in range(0, n, 200_000)], axis=1)
    truth = np.argsort(-sims, axis=1)[:, :10]
    del sims
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    sample = data[np.sort(rng.choice(n, vectors.training_size(n), replace=False))]
    ivf = vectors.empty(vectors.IVF, dim, sample=sample, count=n)
    vectors.add(ivf, np.arange(n, dtype=np.int64), data)
    print(f"{spec}: IVF ({ivf.nlist} lists) built in {time.perf_counter() - started:.1f} s")
    for nprobe in nprobes:
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        p50, rec = measure(ivf, qv, truth, params)
        print(f"{spec}: IVF nprobe {nprobe:>3}: p50 {p50:.3f} ms, recall@10 {rec:.3f}")
    del ivf
    if hnsw:
        started = time.perf_counter()
        graph = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = 40
        rows = vectors.slice_rows(dim)
        for s in range(0, n, rows):
            graph.add(data[s : s + rows])
        print(f"{spec}: HNSW (M 32) built in {time.perf_counter() - started:.1f} s")
        for ef in (16, 32, 64, 128):
            params = faiss.SearchParametersHNSW()
            params.efSearch = ef
            p50, rec = measure(graph, qv, truth, params)
            print(f"{spec}: HNSW efSearch {ef:>3}: p50 {p50:.3f} ms, recall@10 {rec:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100k")
    parser.add_argument("--nprobe", default="8,16,32")
    parser.add_argument("--hnsw", action="store_true")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    for spec in args.sizes.split(","):
        one_size(spec, [int(p) for p in args.nprobe.split(",")], args.hnsw, args.queries)


if __name__ == "__main__":
    main()
