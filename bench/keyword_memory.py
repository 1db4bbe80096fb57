"""Keyword postings in memory at scale: build time, size, and BM25 p50 beside FTS5's, one run.

An index of N chunks is written through ``Store`` (texts: SciFact's abstracts, cycled, ~225
tokens each), each chunk with a small vector so that all count as searchable. Then, on one
connection: FTS5's ``bm25()`` top-100 p50 for SciFact's claims, the postings' build time and
memory (arrays and term dictionary; RSS growth too), the top-100 p50 from memory, and whether
every ranking is the same.

    python bench/keyword_memory.py --chunks 100000 [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact"
PER_DOC = 1_000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def texts_for(n: int) -> list[str]:
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh]
    base = [f"{d['title']}\n\n{d['text']}" for d in docs]
    return [base[i % len(base)] for i in range(n)]


def write_index(folder: Path, texts: list[str]) -> float:
    from ragkit.chunking import Chunk
    from ragkit.store import Store

    started = time.perf_counter()
    store = Store.create(folder, embedder="synthetic", model="d8", dimension=8)
    store.lock()
    with store.bulk():
        for f in range(0, len(texts), PER_DOC):
            chunks = [
                Chunk(j, t, 0, len(t), 1, 1, None, "", t.count(" ") + 1)
                for j, t in enumerate(texts[f : f + PER_DOC])
            ]
            store.put_document(
                path=f"part{f}", sha256=str(f), size=1, mtime=0.0, kind="text",
                pages=0, warnings=(), chunks=chunks,
            )  # fmt: skip
    rng = np.random.default_rng(0)
    pending = store.pending()
    for s in range(0, len(pending), 50_000):
        part = pending[s : s + 50_000]
        vecs = rng.standard_normal((len(part), 8)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        store.set_vectors([i for i, _, _ in part], vecs)
    store.close()
    return time.perf_counter() - started


def p50(values: list[float]) -> float:
    return float(np.median(values))


def measure(n: int, queries: list[str], work: Path) -> dict[str, Any]:
    from ragkit.store import Store, keyword
    from ragkit.store.bm25 import KeywordMemory

    folder = work / f"ix{n}"
    res: dict[str, Any] = {"chunks": n}
    res["ingest_s"] = write_index(folder, texts_for(n))
    res["db_mb"] = (folder / "ragkit.db").stat().st_size / 1e6
    store = Store.open(folder)
    conn = store.db.conn
    fts: list[float] = []
    want = []
    for q in queries:
        started = time.perf_counter()
        want.append(keyword.keyword_search(conn, q, 100))
        fts.append((time.perf_counter() - started) * 1000)
    res["fts5_p50_ms"] = p50(fts)
    memory = KeywordMemory(folder)
    before = rss_mb()
    started = time.perf_counter()
    for _ in range(2):  # the second keyword ranking starts the build
        memory.search(conn, "warm", 100, generation=store.manifest.faiss_generation)
    assert memory.wait(), "no postings built (see the log)"
    res["build_s"] = time.perf_counter() - started
    postings = memory.postings
    assert postings is not None
    res["rss_growth_mb"] = rss_mb() - before
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["arrays_mb"] = postings.nbytes / 1e6
    names = sys.getsizeof(postings.terms) + sum(sys.getsizeof(t) for t in postings.terms)
    res["terms"], res["terms_mb"] = len(postings.terms), names / 1e6
    res["postings"] = len(postings.docs)
    mem: list[float] = []
    same = 0
    for q, expected in zip(queries, want, strict=True):
        started = time.perf_counter()
        got = memory.search(conn, q, 100, generation=store.manifest.faiss_generation)
        mem.append((time.perf_counter() - started) * 1000)
        same += got == expected
    res["memory_p50_ms"] = p50(mem)
    res["same_rankings"] = f"{same}/{len(queries)}"
    memory.close()
    store.close()
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", default="100000")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    with (SCIFACT / "queries.jsonl").open(encoding="utf-8") as fh:
        queries = [json.loads(line)["text"] for line in fh][: args.queries]
    with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_TMP")) as tmp:
        for n in [int(float(c)) for c in args.chunks.split(",")]:
            r = measure(n, queries, Path(tmp))
            print(json.dumps(r), flush=True)
            print(
                f"{n:>9} chunks: BM25 top-100 p50 FTS5 {r['fts5_p50_ms']:.2f} ms,"
                f" memory {r['memory_p50_ms']:.2f} ms"
                f" ({r['fts5_p50_ms'] / r['memory_p50_ms']:.1f}x), rankings same"
                f" {r['same_rankings']}; postings {r['arrays_mb']:.0f} MB + terms"
                f" {r['terms_mb']:.0f} MB ({r['terms']} terms), RSS +{r['rss_growth_mb']:.0f} MB,"
                f" built in {r['build_s']:.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
