"""Requests per second for ``POST /v1/search`` on ``ragkit serve``, with 1, 8 and 32 clients.

Two indexes: the demo corpus (local all-MiniLM-L6-v2 embedder) and a synthetic 100k-chunk
index built through the real ``ragkit.index`` path with a hashing bag-of-words embedder
registered here (fast, so the build measures ragkit rather than a model). The server is a
separate process (``python bench/serve.py --serve ...``: this file registers the embedder, then
runs the very app ``ragkit serve`` runs, on uvicorn); the clients are asyncio tasks in this process,
each with its own keep-alive connection, sending queries back to back for ``--seconds``.

Baseline, measured in the same run: ``Index.search`` called directly in this process (one
thread), so the ratio says what HTTP, JSON and the server add per query.

    python bench/serve.py [--chunks 100000] [--seconds 10] [--workdir /tmp/ragkit-bench-serve]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ragkit  # noqa: E402
from ragkit.embedders import register_embedder  # noqa: E402

DEMO_QUERIES = [
    "how long is the warranty on an e-bike battery",
    "chain lubrication",
    "opening hours on sunday",
    "how do I adjust disc brakes",
    "rental deposit",
    "tire pressure for a road bike",
    "membership discount",
    "workshop safety glasses",
]
# A Zipf-like vocabulary of 20,000 pseudo-words: common words are common, most are rare, as in
# real text (a tiny vocabulary would make every keyword match a third of the index).
_SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
VOCABULARY = sorted(
    {"".join(random.Random(i).choices(_SYLLABLES, k=2 + i % 3)) for i in range(24_000)}
)[:20_000]
_WEIGHTS = [1.0 / (rank + 10) for rank in range(len(VOCABULARY))]


def synthetic_words(rng: random.Random, n: int) -> list[str]:
    """``n`` words drawn with Zipf-like frequencies."""
    return rng.choices(VOCABULARY, weights=_WEIGHTS, k=n)


class HashingEmbedder:
    """Bag of words hashed into 256 dimensions: words shared make vectors close."""

    name = "hashbow"
    model = "hash-256"
    dimension = 256
    max_tokens = 512

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
                out[row, h % self.dimension] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)


register_embedder("hashbow", lambda model, options: HashingEmbedder())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_demo(work: Path) -> dict[str, Any]:
    settings = {"index": "demo", "index_dir": str(work / "indexes")}
    if not (work / "indexes" / "demo").exists():
        shutil.copytree(ROOT / "corpus", work / "corpus", dirs_exist_ok=True)
        ragkit.index(work / "corpus", embedder="local", **settings)
    return settings


def build_large(work: Path, chunks: int) -> dict[str, Any]:
    """A folder of synthetic text files indexed into about ``chunks`` chunks of ~30 words."""
    name = f"zipf-{chunks}"
    settings = {"index": name, "index_dir": str(work / "indexes"), "chunk_tokens": 32}
    if (work / "indexes" / name).exists():
        return settings
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    per_file = 100
    for f in range(chunks // per_file):
        paragraphs = [" ".join(synthetic_words(rng, 28)) + "." for _ in range(per_file)]
        (folder / f"doc{f:05d}.txt").write_text("\n\n".join(paragraphs) + "\n")
    started = time.perf_counter()
    report = ragkit.index(folder, embedder="hashbow", chunk_overlap=0, **settings)
    print(
        f"built {name}: {report.chunks} chunks in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    return settings


def serve(index: str, index_dir: str, port: int) -> None:
    """Run the app ``ragkit serve`` runs, on uvicorn, for one index (a subprocess of the bench)."""
    import uvicorn

    from ragkit.config import Settings
    from ragkit.server.backend import Backend
    from ragkit.server.http import create_app

    settings = Settings.load(index=index, index_dir=index_dir, llm=False, port=port)
    uvicorn.run(create_app(Backend(settings)), host="127.0.0.1", port=port, log_level="warning")


def wait_for(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit("the server exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start") from None
            time.sleep(0.2)


def load(url: str, queries: list[str], clients: int, seconds: float) -> tuple[float, float]:
    """Requests/s over ``seconds`` with ``clients`` concurrent connections; median latency (ms).

    The clients are asyncio tasks in one thread (one connection each), so the load generator
    costs little CPU next to the server on a small machine.
    """
    import asyncio

    import httpx2 as httpx

    async def main() -> tuple[float, list[float]]:
        latencies: list[float] = []
        stop = time.perf_counter() + seconds

        async def client(i: int) -> None:
            limits = httpx.Limits(max_connections=1)
            async with httpx.AsyncClient(timeout=300, limits=limits) as http:
                n = i
                while True:  # at least one request each, however slow the machine
                    t = time.perf_counter()
                    body = {"query": queries[n % len(queries)], "k": 10}
                    reply = await http.post(url, json=body)
                    if reply.status_code != 200:
                        raise SystemExit(f"request failed: {reply.text}")
                    latencies.append(time.perf_counter() - t)
                    n += 1
                    if time.perf_counter() >= stop:
                        return

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        return time.perf_counter() - started, latencies

    elapsed, latencies = asyncio.run(main())
    return len(latencies) / elapsed, statistics.median(latencies) * 1000


def direct(settings: dict[str, Any], queries: list[str], seconds: float) -> float:
    """Baseline: ``Index.search`` calls per second in this process, one thread."""
    with ragkit.open(**{k: v for k, v in settings.items() if k != "chunk_tokens"}) as idx:
        idx.search(queries[0], k=10)
        n, stop = 0, time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < stop:
            idx.search(queries[n % len(queries)], k=10)
            n += 1
        return n / (time.perf_counter() - started)


def run(label: str, settings: dict[str, Any], queries: list[str], seconds: float) -> None:
    port = free_port()
    args = [sys.executable, __file__, "--serve", settings["index"], settings["index_dir"]]
    proc = subprocess.Popen([*args, str(port)])
    try:
        wait_for(port, proc)
        url = f"http://127.0.0.1:{port}/v1/search"
        load(url, queries, 1, 2.0)  # warm: embedder, FAISS and page cache
        baseline = direct(settings, queries, seconds)
        print(f"{label}: Index.search in process, 1 thread: {baseline:.1f} queries/s (baseline)")
        for clients in (1, 8, 32):
            rps, p50 = load(url, queries, clients, seconds)
            print(
                f"{label}: {clients:>2} clients: {rps:7.1f} requests/s, p50 {p50:7.1f} ms,"
                f" {rps / baseline:.2f}x the in-process baseline"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ragkit-bench-serve"))
    parser.add_argument("--serve", nargs=3, metavar=("INDEX", "INDEX_DIR", "PORT"))
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    run("demo corpus", build_demo(args.workdir), DEMO_QUERIES, args.seconds)
    large = build_large(args.workdir, args.chunks)
    queries = [" ".join(synthetic_words(random.Random(-i), 4)) for i in range(64)]
    run(f"{args.chunks} chunks", large, queries, args.seconds)


if __name__ == "__main__":
    main()
