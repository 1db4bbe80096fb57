"""ragkit at 10k to 1M chunks, side by side with bare FAISS + SQLite and with Chroma, in one run.

For each size: ingest time and peak RSS (each ingest in a child process of its own), size on
disk, cold ``ragkit search`` wall time (a new process), warm p50/p95 of ``Index.search``
(top-10 with texts, dense), recall@10 against exact search, keyword and hybrid p50; then
keyword/hybrid p50 on SciFact when a prebuilt eval index is at hand. Vectors are synthetic but
embedding-like (a clustered low-dimensional latent space, projected, plus noise); each text
starts with ``item<N>`` and a registered "synthetic" embedder turns it back into its vector, so
the real ``ragkit index`` path (files, chunking, embedding, storing) runs at full speed.

    python bench/scale.py --sizes 10k,100k [--queries 200] [--no-chroma] [--chroma-max 100k]
                          [--scifact DIR] [--out results.json]

Sizes: 10k, 100k, 1m, or NxDIM such as 100kx1536. Chroma must be installed in the
benchmark's environment (``pip install chromadb``); it is not a ragkit dependency. Its ingest
takes about an hour at 1M on this class of machine, so it runs only up to ``--chroma-max``
(100k unless told otherwise: ``--chroma-max 1m`` includes it at 1M).

"Bare" is measured two ways: bare FAISS flat (exact, one thread) + one SQLite read for the
texts, and bare ANN: the very FAISS file ragkit wrote (IVF past 50k vectors, flat below), read
with plain ``faiss.read_index``, searched with ragkit's nprobe on one thread, + the same one
SQLite read.
``Index.search`` is compared with the latter (the same index, without ragkit around it), timed
interleaved with it query by query so that machine load falls on both alike.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LATENT = 48
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_ITEM = re.compile(r"item(\d+)")
QUERY_BASE = 10**12  # query ids: never a stored item
PER_FILE = 1_000  # paragraphs (chunks) per file


def _uniform(seeds: np.ndarray, count: int) -> np.ndarray:
    """``count`` uniforms in (0, 1) per seed: splitmix64 on (seed, j), so any item can be
    regenerated alone and in any order."""
    x = seeds.astype(np.uint64)[:, None] * np.uint64(1_000_003) + np.arange(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        x = x ^ (x >> np.uint64(31))
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def _normal(seeds: np.ndarray, count: int) -> np.ndarray:
    u1, u2 = _uniform(seeds, count), _uniform(seeds + QUERY_BASE * 7, count)
    return (np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)).astype(np.float32)


@functools.cache
def _space(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The projection and cluster centres every vector of this dimension shares."""
    shared = np.random.default_rng(1234)
    project = shared.standard_normal((LATENT, dim)).astype(np.float32) / np.sqrt(LATENT)
    return project, shared.standard_normal((256, LATENT)).astype(np.float32)


def vectors_for(items: np.ndarray, dim: int) -> np.ndarray:
    """The unit vector of each item number (queries use numbers from QUERY_BASE up)."""
    project, centres = _space(dim)
    out = np.empty((len(items), dim), dtype=np.float32)
    for s in range(0, len(items), 20_000):
        part = np.asarray(items[s : s + 20_000], dtype=np.int64)
        z = centres[part % 256] + _normal(part, LATENT)
        x = z @ project + 0.15 * _normal(part + QUERY_BASE * 3, dim)
        out[s : s + len(part)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


class SyntheticEmbedder:
    """Turns ``item<N> ...`` back into item N's vector: an embedder as fast as a table lookup."""

    name = "synthetic"
    max_tokens = 512
    # Query vectors computed up front: the warm timings then compare index layers, not the
    # cost of generating a synthetic vector (bare FAISS and Chroma get theirs precomputed).
    known: dict[str, np.ndarray] = {}

    def __init__(self, model: str | None, options: Any = None) -> None:
        self.model = model or "d384"
        self.dimension = int(self.model.lstrip("d"))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [t.count(" ") + 1 for t in texts]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 1 and texts[0] in self.known:
            return self.known[texts[0]][None, :]
        items = np.array([int(_ITEM.search(t).group(1)) for t in texts], dtype=np.int64)
        return vectors_for(items, self.dimension)


def register() -> None:
    from ragkit.embedders import register_embedder

    register_embedder("synthetic", SyntheticEmbedder)


def paragraph(i: int) -> str:
    words = _uniform(np.array([i + QUERY_BASE * 5]), 24)[0]
    return f"item{i} " + " ".join(f"w{int(w * 5000)}" for w in words)


def write_corpus(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for f in range(0, n, PER_FILE):
        text = "\n\n".join(paragraph(i) for i in range(f, min(n, f + PER_FILE)))
        (folder / f"part{f // PER_FILE:05d}.txt").write_text(text + "\n")


# -- children: each ingest runs alone so its peak RSS is its own -----------------------------


def record_peak(file: Path) -> None:
    """Write this process's own peak RSS in kB to ``file``.

    ``VmHWM`` counts only what this process mapped since it started the benchmark's script;
    the ``ru_maxrss`` its parent gets also counts the parent it was forked from (Linux keeps
    the larger across exec), which made a 78 MB cold search read 222 MB at 100k.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            file.write_text(line.split()[1])
            return
    raise SystemExit("no VmHWM in /proc/self/status: peak RSS needs Linux")


def child(argv: list[str]) -> None:
    kind, work, n, dim = argv[0], Path(argv[1]), int(argv[2]), int(argv[3])
    atexit.register(record_peak, work / f"peak-{os.getpid()}.kb")
    if kind == "ragkit":
        register()
        import ragkit

        report = ragkit.index(
            work / "docs",
            index_dir=work / "ix",
            index="scale",
            embedder=f"synthetic:d{dim}",
            chunk_tokens=40,  # one paragraph (25 words) per chunk
            chunk_overlap=0,
            batch_size=512,
        )
        assert report.chunks == n, f"{report.chunks} chunks for {n} paragraphs"
    elif kind == "store":  # ragkit's vector layer alone: Store writes, no files or chunking
        from ragkit.chunking import Chunk
        from ragkit.store import Store

        store = Store.create(work / "store", embedder="synthetic", model=f"d{dim}", dimension=dim)
        store.lock()
        with store.bulk():
            for f in range(0, n, PER_FILE):
                chunks = []
                for j, i in enumerate(range(f, min(n, f + PER_FILE))):
                    text = paragraph(i)
                    chunks.append(Chunk(j, text, 0, len(text), 1, 1, None, "", 25))
                store.put_document(
                    path=f"part{f}", sha256=str(f), size=1, mtime=0.0, kind="text",
                    pages=0, warnings=(), chunks=chunks,
                )  # fmt: skip
        pending = store.pending()
        for s in range(0, len(pending), 4096):
            part = pending[s : s + 4096]
            items = np.array([int(_ITEM.match(t).group(1)) for _, t, _ in part])
            store.set_vectors([i for i, _, _ in part], vectors_for(items, dim))
        store.save_vectors("auto")
        store.close()
    elif kind == "bare":  # FAISS flat + one SQLite executemany, one transaction
        import faiss

        conn = sqlite3.connect(work / "bare.db")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, text TEXT, vector BLOB)")
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        conn.execute("BEGIN")
        for s in range(0, n, 50_000):
            ids = np.arange(s, min(n, s + 50_000))
            vecs = vectors_for(ids, dim)
            rows = (
                (int(i), paragraph(int(i)), v.tobytes()) for i, v in zip(ids, vecs, strict=True)
            )
            conn.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
            index.add_with_ids(vecs, ids.astype(np.int64))
        conn.execute("COMMIT")
        faiss.write_index(index, str(work / "bare.faiss"))
    elif kind == "chroma":
        import chromadb

        client = chromadb.PersistentClient(path=str(work / "chroma"))
        coll = client.create_collection("scale", metadata={"hnsw:space": "ip"})
        step = 5_000
        for s in range(0, n, step):
            ids = np.arange(s, min(n, s + step))
            coll.add(
                ids=[str(i) for i in ids],
                embeddings=vectors_for(ids, dim),
                documents=[paragraph(int(i)) for i in ids],
            )
    elif kind == "search":  # a cold CLI search: this process is the `ragkit` command
        register()
        from ragkit.cli import main

        sys.argv = ["ragkit", "search", f"item{QUERY_BASE + 1}", "--mode", "dense", "-k", "10"]
        sys.argv += ["--index-dir", str(work / "ix"), "--index", "scale"]
        main()


def run_child(*args: str, timeout: float = 900) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child run."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.DEVNULL)
    _, status, _ = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"child {args[0]} failed with exit code {proc.returncode}")
    peak = Path(args[1]) / f"peak-{proc.pid}.kb"
    kb = int(peak.read_text())
    peak.unlink()
    return wall, kb / 1024


def size_of(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def timed(call: Callable[[Any], Any], items: Sequence[Any]) -> tuple[list[float], list[Any]]:
    times, out = [], []
    for item in items:
        started = time.perf_counter()
        out.append(call(item))
        times.append((time.perf_counter() - started) * 1000)
    return times, out


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)])
    )


def count_of(text: str) -> int:
    """10k -> 10000, 1m -> 1000000."""
    return int(float(text.lower().replace("k", "e3").replace("m", "e6")))


def timed_together(
    calls: dict[str, Callable[[Any], Any]], items: Sequence[Any]
) -> dict[str, tuple[list[float], list[Any]]]:
    """Each call on each item, round-robin per item, so load spikes fall on every call alike;
    the order alternates, so neither always runs in caches the other warmed (or emptied)."""
    out: dict[str, tuple[list[float], list[Any]]] = {name: ([], []) for name in calls}
    for j, item in enumerate(items):
        for name, call in list(calls.items())[:: 1 if j % 2 else -1]:
            started = time.perf_counter()
            result = call(item)
            out[name][0].append((time.perf_counter() - started) * 1000)
            out[name][1].append(result)
    return out


def one_size(spec: str, queries: int, chroma: bool, work: Path) -> dict[str, Any]:
    n_text, _, dim_text = spec.lower().partition("x")
    n = count_of(n_text)
    dim = int(dim_text or 384)
    work.mkdir(parents=True)
    write_corpus(work / "docs", n)
    res: dict[str, Any] = {"size": spec, "n": n, "dim": dim}
    for kind in ["ragkit", "store", "bare"] + (["chroma"] if chroma else []):
        res[f"{kind}_ingest_s"], res[f"{kind}_peak_rss_mb"] = run_child(
            kind, str(work), str(n), str(dim)
        )
    res["ragkit_disk_mb"] = size_of(work / "ix" / "scale")
    shutil.rmtree(work / "store")
    res["bare_disk_mb"] = size_of(work / "bare.db") + size_of(work / "bare.faiss")
    if chroma:
        res["chroma_disk_mb"] = size_of(work / "chroma")
    colds = [run_child("search", str(work), str(n), str(dim)) for _ in range(3)]
    res["cold_search_s"] = statistics.median(c[0] for c in colds)
    res["cold_search_rss_mb"] = statistics.median(c[1] for c in colds)

    qitems = np.arange(QUERY_BASE + 10, QUERY_BASE + 10 + queries)
    qvecs = vectors_for(qitems, dim)
    data = vectors_for(np.arange(n), dim)
    sims = np.concatenate([qvecs @ data[s : s + 200_000].T for s in range(0, n, 200_000)], axis=1)
    truth = np.argsort(-sims, axis=1)[:, :10]
    del sims, data

    register()
    import faiss

    import ragkit
    from ragkit.store import vectors as ragkit_vectors

    bare = faiss.read_index(str(work / "bare.faiss"))
    conn = sqlite3.connect(work / "bare.db")
    ann = faiss.read_index(str(work / "ix" / "scale" / ragkit_vectors.FAISS_NAME))
    if isinstance(ann, faiss.IndexIVF):
        ann.nprobe = ragkit_vectors.NPROBE
    ann_db = sqlite3.connect(work / "ix" / "scale" / "ragkit.db")
    faiss.omp_set_num_threads(1)  # this thread only; ragkit sets the same around its searches

    def bare_search(index: Any, db: sqlite3.Connection, table: str, v: np.ndarray) -> list[int]:
        _, ids = index.search(v.reshape(1, -1), 10)
        marks = ",".join("?" * 10)
        texts = db.execute(f"SELECT id, text FROM {table} WHERE id IN ({marks})", ids[0].tolist())
        by_id = dict(texts.fetchall())
        return [int(_ITEM.match(by_id[int(i)]).group(1)) for i in ids[0] if int(i) in by_id]

    # Timed apart from ragkit and bare ANN: a flat scan (or Chroma) between two of their
    # queries would empty the CPU caches that the next one then starts from.
    others: dict[str, Callable[[Any], Any]] = {
        "bare": lambda j: bare_search(bare, conn, "t", qvecs[j]),
    }
    if chroma:
        import chromadb

        coll = chromadb.PersistentClient(path=str(work / "chroma")).get_collection("scale")

        def chroma_search(j: int) -> list[int]:
            found = coll.query(query_embeddings=[qvecs[j]], n_results=10, include=["documents"])
            return [int(i) for i in found["ids"][0]]

        others["chroma"] = chroma_search
    # Keyword/hybrid queries: three words of a stored paragraph, plus the query's item tag.
    with ragkit.open(index_dir=work / "ix", index="scale", k=10) as idx:
        res["vector_index"] = idx.status().vector_index
        words = [f"item{q} " + " ".join(paragraph(int(q) % n).split()[1:4]) for q in qitems]
        for q, v, w in zip(qitems, qvecs, words, strict=True):
            SyntheticEmbedder.known[f"item{q}"] = SyntheticEmbedder.known[w] = v
        idx.search(f"item{qitems[0]}", mode="dense")
        for call in others.values():  # warm: Chroma loads its index on the first query
            call(0)
        runs = timed_together(
            {
                "ragkit": lambda j: [
                    int(_ITEM.match(h.text).group(1))
                    for h in idx.search(f"item{qitems[j]}", mode="dense")
                ],
                "bare_ann": lambda j: bare_search(ann, ann_db, "chunks", qvecs[j]),
            },
            range(len(qitems)),
        )
        for name, call in others.items():
            runs |= timed_together({name: call}, range(len(qitems)))
        for name, (times, found) in runs.items():
            res[f"{name}_p50_ms"], res[f"{name}_p95_ms"] = pct(times, 0.5), pct(times, 0.95)
            res[f"{name}_recall"] = recall(found, truth)
        res.update(keyword_memory(idx, words[0]))
        for mode in ("keyword", "hybrid"):
            times, _ = timed(lambda w, m=mode: idx.search(w, mode=m), words)
            res[f"{mode}_p50_ms"] = pct(times, 0.5)

    return res


def keyword_memory(idx: Any, query: str) -> dict[str, float]:
    """Have an open Index build its keyword postings (its second keyword ranking starts the
    background build) and wait for them: queries after that rank from memory."""
    started = time.perf_counter()
    for _ in range(2):
        idx.search(query, mode="keyword")
    assert idx._keywords.wait(), "the keyword postings were not built (see the log)"
    postings = idx._keywords.postings
    names = sys.getsizeof(postings.terms) + sum(sys.getsizeof(t) for t in postings.terms)
    return {
        "keyword_build_s": time.perf_counter() - started,
        "keyword_memory_mb": (postings.nbytes + names) / 1e6,
    }


def scifact(prebuilt: Path, work: Path, queries: int) -> dict[str, Any]:
    """Keyword and hybrid p50 on a copy of a prebuilt SciFact eval index (local embedder)."""
    import ragkit

    shutil.copytree(prebuilt, work / prebuilt.name)
    data = ROOT.parent / "shared" / "datasets" / "scifact" / "queries.jsonl"
    texts = [json.loads(line)["text"] for line in data.open()][:queries]
    out: dict[str, Any] = {}
    from ragkit.store import Store
    from ragkit.store.keyword import fts_match

    # The query before this change joined every match to its chunk row (and so its vector).
    joined = (
        "SELECT chunks_fts.rowid, bm25(chunks_fts) FROM chunks_fts"
        " JOIN chunks c ON c.id = chunks_fts.rowid JOIN documents d ON d.id = c.document_id"
        " WHERE chunks_fts MATCH ? AND c.vector IS NOT NULL ORDER BY bm25(chunks_fts) LIMIT 100"
    )
    with Store.open(work / prebuilt.name) as store:  # BM25 alone, as the retriever asks for it
        conn = store.db.conn
        for _ in range(2):  # alternate, so both see the same machine load
            times, _ = timed(lambda q: store.keyword_search(q, 100), texts)
            out["scifact_bm25_p50_ms"] = pct(times, 0.5)
            times, _ = timed(lambda q: conn.execute(joined, [fts_match(q)]).fetchall(), texts)
            out["scifact_bm25_joined_p50_ms"] = pct(times, 0.5)
    with ragkit.open(index_dir=work, index=prebuilt.name, k=10) as idx:
        idx.search(texts[0])
        out.update(keyword_memory(idx, texts[0]))
        store = idx._store()  # BM25 alone again, from the postings in memory
        times, _ = timed(lambda q: store.keyword_search(q, 100), texts)
        out["scifact_bm25_memory_p50_ms"] = pct(times, 0.5)
        for mode in ("keyword", "hybrid", "dense"):
            times, _ = timed(lambda q, m=mode: idx.search(q, mode=m), texts)
            out[f"scifact_{mode}_p50_ms"] = pct(times, 0.5)
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10k,100k")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-chroma", action="store_true")
    parser.add_argument(
        "--chroma-max", default="100k", help="run Chroma only at sizes up to this (its 1M ingest"
        " takes about an hour here)"
    )  # fmt: skip
    parser.add_argument("--scifact", type=Path, default=None, help="a prebuilt eval index folder")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_TMP")) as tmp:
        for spec in [s for s in args.sizes.split(",") if s and s != "none"]:
            chroma = not args.no_chroma and count_of(spec.partition("x")[0]) <= count_of(
                args.chroma_max
            )
            res = one_size(spec, args.queries, chroma, Path(tmp) / spec)
            shutil.rmtree(Path(tmp) / spec, ignore_errors=True)
            results.append(res)
            print(json.dumps(res), flush=True)
        if args.scifact:
            res = scifact(args.scifact, Path(tmp) / "scifact", args.queries)
            results.append(res)
            print(json.dumps(res), flush=True)
    for r in results:
        if "n" not in r:
            continue
        line = (
            f"{r['size']:>10}: ragkit ({r['vector_index']}) p50 {r['ragkit_p50_ms']:.2f} ms"
            f" p95 {r['ragkit_p95_ms']:.2f} ms recall {r['ragkit_recall']:.3f}"
            f" | bare same index {r['bare_ann_p50_ms']:.2f} ms"
            f" ({r['ragkit_p50_ms'] / r['bare_ann_p50_ms']:.2f}x)"
            f" | bare flat {r['bare_p50_ms']:.2f} ms recall {r['bare_recall']:.3f}"
            f" ({r['ragkit_p50_ms'] / r['bare_p50_ms']:.2f}x)"
        )
        if "chroma_p50_ms" not in r:
            line += " | chroma not run (--no-chroma, or above --chroma-max)"
        else:
            line += (
                f" | chroma {r['chroma_p50_ms']:.2f} ms recall {r['chroma_recall']:.3f}"
                f" ({r['chroma_p50_ms'] / r['ragkit_p50_ms']:.1f}x slower than ragkit)"
            )
        line += (
            f"\n{'':>12}ingest: ragkit index {r['ragkit_ingest_s']:.1f} s"
            f" / {r['ragkit_peak_rss_mb']:.0f} MB"
            f"; vector layer {r['store_ingest_s']:.1f} s / {r['store_peak_rss_mb']:.0f} MB"
            f" vs bare {r['bare_ingest_s']:.1f} s ({r['store_ingest_s'] / r['bare_ingest_s']:.1f}x)"
            f"; cold search {r['cold_search_s']:.2f} s ({r['cold_search_rss_mb']:.0f} MB);"
            f" keyword {r['keyword_p50_ms']:.2f} ms, hybrid {r['hybrid_p50_ms']:.2f} ms"
            f" (keyword postings {r['keyword_memory_mb']:.0f} MB, built in"
            f" {r['keyword_build_s']:.1f} s)"
        )
        print(line)
    for r in results:
        if "scifact_keyword_p50_ms" in r:
            fts, mem = r["scifact_bm25_p50_ms"], r["scifact_bm25_memory_p50_ms"]
            print(
                f"   scifact: BM25 (100 candidates) FTS5 {fts:.2f} ms, in memory {mem:.2f} ms"
                f" ({fts / mem:.1f}x); Index.search keyword {r['scifact_keyword_p50_ms']:.2f} ms,"
                f" hybrid {r['scifact_hybrid_p50_ms']:.2f} ms,"
                f" dense {r['scifact_dense_p50_ms']:.2f} ms (postings"
                f" {r['keyword_memory_mb']:.1f} MB, built in {r['keyword_build_s']:.2f} s)"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
