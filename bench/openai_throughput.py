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

Then, for issue 15.3, **request size against a kill**: a server without rate-limit headers
(so nothing but ragkit's own bounds limits a request) whose time grows with the tokens sent
(``--token-latency``), embedding ``--kill-chunks`` chunks twice per client -- once to the end
(throughput), once stopped at half that run's time, as a ``kill -9`` would stop it. Wasted tokens
are the ones the server billed minus the ones ragkit had committed when it stopped: work a real
provider charges for and a re-run sends again. "before" is the old packing (up to 270,000 tokens
per request, no bound in seconds), "after" the current one (``max_request_tokens`` 32,000,
``request_seconds`` 5); the TPM part above is run for both as well.

Vectors default to 256 dimensions (a model registered with the server for the benchmark): at
1,536 the in-process server's own JSON and base64 work, which shares this process's GIL with the
client, becomes the bottleneck long before any real account's limits would. ``--dims 1536``
shows that regime.

    python bench/openai_throughput.py                 # 200 ms, 1.2M TPM, 40,000 chunks
    python bench/openai_throughput.py --dims 1536 --tpm 600000
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ragkit.embedders.openai import REQUEST_TOKEN_BUDGET, OpenAIEmbedder  # noqa: E402
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


# The packing before issue 15.3 (one request could hold most of a folder) and after it.
PACKING: dict[str, dict[str, Any]] = {
    "before": {"max_request_tokens": REQUEST_TOKEN_BUDGET, "request_seconds": None},
    "after": {},
}


def run_ragkit(
    server: OpenAITestServer, texts: list[str], concurrency: int, packing: str = "after"
) -> dict[str, float]:
    embedder = OpenAIEmbedder(
        MODEL,
        base_url=server.base_url,
        api_key="bench",
        concurrency=concurrency,
        **PACKING[packing],
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


def run_kill(
    server: OpenAITestServer, texts: list[str], concurrency: int, packing: str
) -> dict[str, float]:
    """One run to the end (throughput), then one stopped at half its time (tokens wasted)."""
    out: dict[str, float] = {}
    for kill in (False, True):
        seen = len(server.requests_for("embeddings"))
        embedder = OpenAIEmbedder(
            MODEL,
            base_url=server.base_url,
            api_key="bench",
            concurrency=concurrency,
            **PACKING[packing],
        )
        embedder.count_tokens(["warm up the tokenizer"])
        committed = 0
        stop_at = time.perf_counter() + out["seconds"] / 2 if kill else float("inf")
        started = time.perf_counter()
        batches = embedder.embed_batches(texts)
        for _, _, used in batches:
            committed += used
            if time.perf_counter() >= stop_at:
                break
        else:
            out["seconds"] = time.perf_counter() - started
            out["tokens"] = committed
            out["requests"] = len(server.requests_for("embeddings")) - seen
            continue
        # What a kill leaves: requests already sent were billed; their answers are lost.
        done = threading.Thread(target=batches.close)
        done.start()
        done.join()
        log = server.requests_for("embeddings")[seen:]
        billed = sum(r.prompt_tokens for r in log if r.status == 200)
        out["committed_at_kill"] = committed
        out["wasted"] = billed - committed
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per response")
    parser.add_argument("--tpm", type=int, default=1_200_000, help="tokens per minute")
    parser.add_argument("--rpm", type=int, default=10_000, help="requests per minute")
    parser.add_argument("--dims", type=int, default=256, help="vector dimensions")
    parser.add_argument("--chunks", type=int, default=40_000, help="chunks ragkit embeds")
    parser.add_argument(
        "--baseline-chunks", type=int, default=10_000, help="of those, how many the baseline embeds"
    )
    parser.add_argument("--words", type=int, default=16, help="words per chunk")
    parser.add_argument("--concurrency", type=int, default=4, help="ragkit's requests in flight")
    parser.add_argument(
        "--token-latency", type=float, default=2e-5, help="kill part: seconds per token sent"
    )
    parser.add_argument("--kill-chunks", type=int, default=5_000, help="kill part: chunks")
    parser.add_argument(
        "--kill-words", type=int, default=160, help="kill part: words per chunk (~200 tokens)"
    )
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
            "ragkit, before 15.3": run_ragkit(server, texts, args.concurrency, "before"),
            "baseline": run_baseline(server, texts[: args.baseline_chunks]),
        }
    for name, r in results.items():
        rate = r["tokens"] / r["seconds"]
        label = (
            "baseline (sequential, 100/request)"
            if name == "baseline"
            else f"{name} (concurrency {args.concurrency})"
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

    kill_texts = corpus(args.kill_chunks, args.kill_words, seed=1)
    with OpenAITestServer(latency=args.latency) as server:
        server.config.log_bodies = False
        server.config.token_latency = args.token_latency
        server.config.embedding_models[MODEL] = EmbeddingModel(args.dims, True)
        print(
            f"\nkill part: no rate-limit headers, latency {args.latency * 1000:.0f} ms +"
            f" {args.token_latency * 1e6:.0f} us per token; {len(kill_texts):,} chunks, stopped at"
            " half of a full run's time"
        )
        kills = {p: run_kill(server, kill_texts, args.concurrency, p) for p in PACKING}
    for packing, k in kills.items():
        print(
            f"{packing:>7}: {k['tokens']:,.0f} tokens in {k['seconds']:.1f} s ="
            f" {k['tokens'] / k['seconds']:,.0f} tokens/s in {k['requests']:.0f} requests;"
            f" killed: {k['committed_at_kill']:,.0f} committed, {k['wasted']:,.0f} tokens wasted"
            f" ({100 * k['wasted'] / k['tokens']:.1f} % of the corpus)"
        )
    b, a = kills["before"], kills["after"]
    speed = (a["tokens"] / a["seconds"]) / (b["tokens"] / b["seconds"])
    print(
        f"after / before: throughput {speed:.2f}x,"
        f" tokens wasted by a kill {a['wasted'] / max(b['wasted'], 1):.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
