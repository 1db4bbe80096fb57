"""Embedding throughput under a tokens-per-minute limit: ragkit vs a sequential 100-input client.

Starts the OpenAI-compatible test server (tests/openai_server.py) in this process with a fixed
latency per request and TPM / RPM limits, then embeds the same synthetic chunks two ways:

- **ragkit**: ``OpenAIEmbedder`` (token-packed requests, ``--concurrency`` at once, paced from
  the rate-limit headers);
- **baseline**: the plain ``openai`` SDK, one request of 100 inputs at a time, as LangChain /
  LlamaIndex-style pipelines batch by default (the SDK's own retries handle the 429s).

Before each run the server's buckets are emptied, as on an account that has been busy for a
minute: otherwise a run shorter than a minute rides the full minute's allowance the buckets
start with, and reports more than 100 % of the limit. Throughput is billed tokens (the server's
``usage``) over wall time, reported as a share of the TPM limit.

Vectors default to 256 dimensions (a model registered with the server for the benchmark): at
1,536 the in-process server's own JSON and base64 work, which shares this process's GIL with the
client, becomes the bottleneck long before any real account's limits would. ``--dims 1536``
shows that regime.

    python bench/openai_throughput.py                 # 200 ms, 18M TPM, 40,000 chunks
    python bench/openai_throughput.py --dims 1536 --tpm 9000000
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ragkit.embedders.openai import OpenAIEmbedder  # noqa: E402
from tests.openai_server import EmbeddingModel, OpenAITestServer, embed_texts  # noqa: E402

MODEL = "bench-embedding"
WORDS = (
    "river bridge lantern copper meadow harbor signal quartz orchard falcon ember glacier saddle "
    "compass violet thunder marble canyon willow beacon cedar prism anchor tundra velvet summit "
    "cobalt island timber fossil comet hollow granite ribbon cipher lagoon"
).split()


def corpus(n: int, words: int, seed: int = 0) -> list[str]:
    """``n`` synthetic chunks of about ``words`` words each, all different."""
    rng = random.Random(seed)
    return [f"chunk {i}: " + " ".join(rng.choice(WORDS) for _ in range(words)) for i in range(n)]


def drain(server: OpenAITestServer) -> None:
    """Empty both buckets: the run starts at the steady state of a busy account."""
    cfg = server.config
    server.app.limiter.reset()
    server.app.limiter.acquire(MODEL, cfg.tpm or 0, None, cfg.tpm)
    for _ in range(cfg.rpm or 0):
        server.app.limiter.acquire(MODEL, 0, cfg.rpm, None)


def run_ragkit(server: OpenAITestServer, texts: list[str], concurrency: int) -> dict[str, float]:
    embedder = OpenAIEmbedder(
        MODEL, base_url=server.base_url, api_key="bench", concurrency=concurrency
    )
    # Set up before draining, so the buckets cannot refill while the client is being made.
    embedder.count_tokens(["warm up the tokenizer"])
    assert embedder.client is not None
    drain(server)
    started = time.perf_counter()
    vectors = embedder.embed(texts)
    seconds = time.perf_counter() - started
    check = np.random.default_rng(0).choice(len(texts), 200, replace=False)
    expected = embed_texts(
        [texts[i] for i in check], MODEL, server.config.embedding_models[MODEL].dimensions
    )
    assert np.allclose(vectors[check], expected, atol=1e-5), (
        "ragkit's vectors differ from the server's"
    )
    s = embedder.stats
    return {
        "chunks": len(texts),
        "seconds": seconds,
        "tokens": s.tokens,
        "requests": s.requests,
        "retries": s.retries,
        "rate_limited": s.rate_limited,
    }


def run_baseline(server: OpenAITestServer, texts: list[str], batch: int = 100) -> dict[str, float]:
    client = server.client()  # SDK defaults: 2 retries, honouring retry-after
    client.models.list()  # connect before draining
    drain(server)
    before = len(server.requests_for("embeddings"))
    tokens = 0
    rows = []
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        response = client.embeddings.create(model=MODEL, input=texts[start : start + batch])
        rows.append(np.asarray([d.embedding for d in response.data], dtype=np.float32))
        tokens += response.usage.prompt_tokens
    seconds = time.perf_counter() - started
    log = server.requests_for("embeddings")[before:]
    return {
        "chunks": len(texts),
        "seconds": seconds,
        "tokens": tokens,
        "requests": len(log),
        "retries": sum(r.headers.get("x-stainless-retry-count", "0") != "0" for r in log),
        "rate_limited": sum(r.status == 429 for r in log),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per response")
    parser.add_argument("--tpm", type=int, default=18_000_000, help="tokens per minute")
    parser.add_argument("--rpm", type=int, default=10_000, help="requests per minute")
    parser.add_argument("--dims", type=int, default=256, help="vector dimensions")
    parser.add_argument("--chunks", type=int, default=40_000, help="chunks ragkit embeds")
    parser.add_argument(
        "--baseline-chunks", type=int, default=10_000, help="of those, how many the baseline embeds"
    )
    parser.add_argument("--words", type=int, default=16, help="words per chunk")
    parser.add_argument("--concurrency", type=int, default=4, help="ragkit's requests in flight")
    args = parser.parse_args(argv)

    texts = corpus(args.chunks, args.words)
    limit = args.tpm / 60
    with OpenAITestServer(latency=args.latency, tpm=args.tpm, rpm=args.rpm) as server:
        server.config.log_bodies = False
        server.config.embedding_models[MODEL] = EmbeddingModel(args.dims, True)
        print(
            f"server: latency {args.latency * 1000:.0f} ms, TPM {args.tpm:,}, RPM {args.rpm:,},"
            f" {args.dims}-dim vectors; chunks of ~{args.words} words"
        )
        results = {
            "ragkit": run_ragkit(server, texts, args.concurrency),
            "baseline": run_baseline(server, texts[: args.baseline_chunks]),
        }
    for name, r in results.items():
        rate = r["tokens"] / r["seconds"]
        label = (
            f"ragkit (concurrency {args.concurrency})"
            if name == "ragkit"
            else "baseline (sequential, 100/request)"
        )
        print(
            f"{label:>36}: {r['chunks']:,.0f} chunks, {r['tokens']:,.0f} tokens"
            f" in {r['seconds']:.1f} s = {rate:,.0f} tokens/s"
            f" = {100 * rate / limit:.1f} % of the TPM limit; {r['requests']:.0f} requests,"
            f" {r['rate_limited']:.0f} answered 429, {r['retries']:.0f} retries"
        )
    ours = results["ragkit"]["tokens"] / results["ragkit"]["seconds"]
    theirs = results["baseline"]["tokens"] / results["baseline"]["seconds"]
    print(f"ragkit / baseline throughput: {ours / theirs:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
