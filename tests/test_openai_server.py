"""The OpenAI test server, exercised through the real openai SDK over HTTP."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.openai_server import (
    NO_ANSWER,
    Fault,
    OpenAITestServer,
    RateLimiter,
    compose_answer,
    count_tokens,
    embed_texts,
    go_duration,
    iter_threads,
    parse_sources,
    tokenizer_name,
)

ROOT = Path(__file__).resolve().parent.parent
SMALL = "text-embedding-3-small"

SOURCES_PROMPT = (
    "Answer using only the sources and cite them like [1].\n\n"
    "Sources:\n"
    "[1] The Eiffel Tower is in Paris. It was finished in 1889.\n"
    "[2] Bananas are a yellow fruit rich in potassium. They grow in clusters.\n"
    "[3] Mount Everest is the highest mountain on Earth.\n\n"
    "Question: Which fruit is yellow and rich in potassium?"
)


def client(server: OpenAITestServer, **kwargs: object) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=server.base_url, api_key="test", **kwargs)  # type: ignore[arg-type]


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- tokens


def test_count_tokens_is_an_upper_bound_fallback() -> None:
    text = "héllo wörld, naïve café"
    if tokenizer_name() == "utf-8 bytes":
        assert count_tokens(text) == len(text.encode("utf-8"))
    else:
        assert 0 < count_tokens(text) <= len(text.encode("utf-8"))


# --------------------------------------------------------------------------- embeddings


def test_float_base64_and_default_encodings_give_the_same_vectors(openai_server) -> None:
    c = client(openai_server)
    texts = ["the quick brown fox", "jumps over the lazy dog"]
    floats = c.embeddings.create(model=SMALL, input=texts, encoding_format="float")
    b64 = c.embeddings.create(model=SMALL, input=texts, encoding_format="base64")
    default = c.embeddings.create(model=SMALL, input=texts)
    as_float = np.array([d.embedding for d in floats.data], dtype=np.float32)
    as_b64 = np.stack(
        [
            np.frombuffer(base64.b64decode(d.embedding), dtype="<f4")
            for d in b64.data  # type: ignore[arg-type]
        ]
    )
    as_default = np.array([d.embedding for d in default.data], dtype=np.float32)
    assert as_float.shape == (2, 1536)
    assert np.array_equal(as_float, as_b64)
    assert np.array_equal(as_float, as_default)
    assert np.array_equal(as_float, embed_texts(texts, SMALL))
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == sum(map(count_tokens, texts))
    # The SDK asks for base64 when the caller does not choose.
    assert openai_server.requests[-1].body["encoding_format"] == "base64"


def test_dimensions_per_model(openai_server) -> None:
    c = client(openai_server)
    assert len(c.embeddings.create(model=SMALL, input="x").data[0].embedding) == 1536
    large = c.embeddings.create(model="text-embedding-3-large", input="x")
    assert len(large.data[0].embedding) == 3072
    short = c.embeddings.create(model=SMALL, input="x y z", dimensions=64)
    assert len(short.data[0].embedding) == 64
    assert np.linalg.norm(short.data[0].embedding) == pytest.approx(1.0, abs=1e-6)
    assert (
        len(c.embeddings.create(model="text-embedding-ada-002", input="x").data[0].embedding)
        == 1536
    )
    with pytest.raises(openai.BadRequestError, match="does not support specifying dimensions"):
        c.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=256)
    with pytest.raises(openai.BadRequestError, match="less than or equal to 1536"):
        c.embeddings.create(model=SMALL, input="x", dimensions=2000)


def test_texts_sharing_words_are_closer() -> None:
    cats, cats2, cars = embed_texts(
        ["cats sleep on the warm sofa", "the sofa where cats sleep", "engines need fuel and oil"]
    )
    assert float(cats @ cats2) > float(cats @ cars) + 0.3
    assert float(cats @ cats) == pytest.approx(1.0, abs=1e-6)


def test_words_cancelling_out_still_give_a_unit_vector() -> None:
    # With one dimension, two words with opposite signs sum to zero.
    first = embed_texts(["alpha"], dimensions=1)[0, 0]
    other = next(
        w for w in (f"w{i}" for i in range(100)) if embed_texts([w], dimensions=1)[0, 0] != first
    )
    vectors = embed_texts(["alpha", f"alpha {other}", "beta"], dimensions=1)
    assert np.abs(vectors).tolist() == [[1.0], [1.0], [1.0]]


def test_vectors_are_identical_in_another_process() -> None:
    code = (
        "import sys; from tests.openai_server import embed_texts; "
        "sys.stdout.write(embed_texts(['stable across processes'], dimensions=32).tobytes().hex())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    here = embed_texts(["stable across processes"], dimensions=32).tobytes().hex()
    assert out == here


def one_token_unit() -> str:
    """A character that counts as exactly one token in the server's counter, whichever it is."""
    return "é" if tokenizer_name() == "cl100k_base" else "b"


def test_embedding_limits_are_enforced_like_openai(openai_server) -> None:
    c = client(openai_server)
    # One token per character in either counter ("é" in cl100k_base, "b" as a UTF-8 byte).
    unit = one_token_unit()
    assert count_tokens(unit * 100) == 100
    # At the limits: accepted.
    ok = c.embeddings.create(model=SMALL, input=["w"] * 2048, dimensions=4)
    assert len(ok.data) == 2048
    c.embeddings.create(model=SMALL, input=unit * 8192, dimensions=4)
    # Over the limits: 400s shaped like the real API's.
    with pytest.raises(openai.BadRequestError, match=r"'\$\.input' is invalid"):
        c.embeddings.create(model=SMALL, input=["w"] * 2049)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 8192") as err:
        c.embeddings.create(model=SMALL, input=["ok", unit * 8193])
    assert err.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as err:
        c.embeddings.create(model=SMALL, input=[unit * 8000] * 38)
    assert err.value.code == "max_tokens_per_request"
    assert "Requested 304000 tokens, max 300000 tokens per request" in err.value.message
    with pytest.raises(openai.BadRequestError, match=r"'\$\.input' is invalid"):
        c.embeddings.create(model=SMALL, input="")
    with pytest.raises(openai.BadRequestError, match=r"'\$\.input' is invalid"):
        c.embeddings.create(model=SMALL, input=["fine", ""])
    with pytest.raises(openai.BadRequestError, match="not token ids"):
        c.embeddings.create(model=SMALL, input=[[1, 2, 3]])
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument"):
        c.embeddings.create(model=SMALL, input="x", extra_body={"bogus": 1})
    rejected = [r for r in openai_server.requests if r.rejected]
    assert len(rejected) == 7 and all(r.status == 400 for r in rejected)
    assert rejected[1].input_tokens == (count_tokens("ok"), 8193)


def test_unknown_models_are_404_model_not_found(openai_server) -> None:
    c = client(openai_server)
    with pytest.raises(openai.NotFoundError) as err:
        c.embeddings.create(model="text-embedding-9", input="x")
    assert err.value.code == "model_not_found"
    assert "The model `text-embedding-9` does not exist" in err.value.message
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="gpt-9", messages=ask("hi"))
    # Dated snapshots of known models are accepted.
    c.chat.completions.create(model="gpt-4o-mini-2024-07-18", messages=ask("hi"))


# --------------------------------------------------------------------------- chat answers


def test_answer_cites_the_best_matching_source(openai_server) -> None:
    r = client(openai_server).chat.completions.create(
        model="gpt-4o-mini", messages=ask(SOURCES_PROMPT)
    )
    assert r.choices[0].message.content == "Bananas are a yellow fruit rich in potassium [2]."
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.prompt_tokens == count_tokens(SOURCES_PROMPT)
    assert r.usage.completion_tokens == count_tokens(r.choices[0].message.content)


def test_source_formats_tags_and_headers() -> None:
    tagged = (
        '<source id="1" title="a.md">Rivers flow to the sea. Water is wet.</source>\n'
        '<source n="2">Owls hunt mice at night. They are quiet.</source>\n'
        "Question: what do owls hunt at night?"
    )
    assert compose_answer(ask(tagged)) == "Owls hunt mice at night [2]."
    assert parse_sources("[7] notes/a.md:\nFirst line here. Second.\n[8] (b.pdf p.2)\nOther.") == [
        (7, "First line here. Second."),
        (8, "Other."),
    ]
    # Sources in the system message, the question alone in the user message; a tie cites both.
    messages = [
        {"role": "developer", "content": "[1] Red apples are sweet.\n[2] Green apples are sour."},
        {"role": "user", "content": "Tell me about apples"},
    ]
    assert compose_answer(messages) == "Red apples are sweet [1]. Green apples are sour [2]."
    assert compose_answer(ask("[1] Cats purr.\nQuestion: how do engines work?")) == NO_ANSWER


def test_bogus_marker_and_scripted_answer(openai_server) -> None:
    c = client(openai_server)
    openai_server.config.bogus_marker = 99
    text = c.chat.completions.create(model="gpt-4o", messages=ask(SOURCES_PROMPT)).choices[0]
    assert text.message.content.endswith("[2]. See also [99].")
    openai_server.config.answer = "Scripted [4]."
    text = c.chat.completions.create(model="gpt-4o", messages=ask(SOURCES_PROMPT)).choices[0]
    assert text.message.content == "Scripted [4]."
    openai_server.reset()
    assert openai_server.config.answer is None and openai_server.requests == []


def test_plain_and_stream_give_the_same_content_and_usage(openai_server) -> None:
    c = client(openai_server)
    plain = c.chat.completions.create(model="gpt-4o-mini", messages=ask(SOURCES_PROMPT), seed=7)
    chunks = list(
        c.chat.completions.create(
            model="gpt-4o-mini",
            messages=ask(SOURCES_PROMPT),
            seed=7,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert content == plain.choices[0].message.content
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 1
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert all(ch.usage is None for ch in chunks[:-1])
    no_usage = list(c.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"), stream=True))
    assert all(ch.choices for ch in no_usage)


def test_max_tokens_and_stop_cut_the_answer(openai_server) -> None:
    c = client(openai_server)
    full = c.chat.completions.create(model="gpt-4o-mini", messages=ask(SOURCES_PROMPT))
    limit = count_tokens(full.choices[0].message.content) // 2  # half the answer, any counter
    cut = c.chat.completions.create(
        model="gpt-4o-mini", messages=ask(SOURCES_PROMPT), max_tokens=limit
    )
    assert cut.choices[0].finish_reason == "length"
    assert full.choices[0].message.content.startswith(cut.choices[0].message.content)
    assert 0 < cut.usage.completion_tokens <= limit
    chunks = list(
        c.chat.completions.create(
            model="o3-mini", messages=ask(SOURCES_PROMPT), max_completion_tokens=limit, stream=True
        )
    )
    assert chunks[-1].choices[0].finish_reason == "length"
    stopped = c.chat.completions.create(
        model="gpt-4o-mini", messages=ask(SOURCES_PROMPT), stop=["yellow"]
    )
    assert stopped.choices[0].message.content == "Bananas are a "
    assert stopped.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        (
            "o3-mini",
            {"max_tokens": 100},
            (
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead."
            ),
        ),
        (
            "gpt-5-mini",
            {"temperature": 0.2},
            (
                "Unsupported value: 'temperature' does not support 0.2 with this model. "
                "Only the default (1) value is supported."
            ),
        ),
        ("o1", {"top_p": 0.5}, "Unsupported value: 'top_p' does not support 0.5"),
        ("o4-mini", {"presence_penalty": 0.5}, "'presence_penalty' does not support 0.5"),
        ("o4-mini", {"frequency_penalty": 0.5}, "'frequency_penalty' does not support 0.5"),
        (
            "gpt-5",
            {"stop": ["\n"]},
            "Unsupported parameter: 'stop' is not supported with this model.",
        ),
        (
            "gpt-4o",
            {"reasoning_effort": "low"},
            "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
        ),
    ],
)
def test_model_family_rejections(openai_server, model, kwargs, message) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client(openai_server).chat.completions.create(model=model, messages=ask("hi"), **kwargs)
    assert message in err.value.message
    assert err.value.param == next(iter(kwargs))
    assert err.value.code in ("unsupported_parameter", "unsupported_value")


def test_reasoning_models_accept_their_parameters(openai_server) -> None:
    c = client(openai_server)
    messages = [{"role": "developer", "content": "Be brief."}, *ask(SOURCES_PROMPT)]
    r = c.chat.completions.create(
        model="o4-mini",
        messages=messages,
        max_completion_tokens=500,
        reasoning_effort="low",
        temperature=1,
        seed=1,
    )
    assert "[2]" in r.choices[0].message.content
    c.chat.completions.create(model="o3-mini", messages=ask("hi"), stop=["x"])
    c.chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("hi"),
        max_tokens=50,
        temperature=0.2,
        top_p=0.9,
        presence_penalty=0.1,
        stop="x",
    )


# --------------------------------------------------------------------------- faults


def test_rate_limit_fault_headers_are_readable(openai_server) -> None:
    openai_server.config.inject(
        Fault("rate_limit", retry_after=2, retry_after_ms=1500, limit_type="tokens")
    )
    c = client(openai_server)
    with pytest.raises(openai.RateLimitError) as err:
        c.embeddings.create(model=SMALL, input="x")
    headers = err.value.response.headers
    assert headers["retry-after"] == "2" and headers["retry-after-ms"] == "1500"
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert headers["x-ratelimit-reset-tokens"] == "1.5s"
    for name in ("limit", "remaining", "reset"):
        assert f"x-ratelimit-{name}-requests" in headers
    assert err.value.code == "rate_limit_exceeded" and err.value.type == "tokens"
    c.embeddings.create(model=SMALL, input="x")  # the fault was consumed
    assert [r.fault for r in openai_server.requests] == ["rate_limit", None]


def test_sdk_retries_after_a_rate_limit_and_succeeds(openai_server) -> None:
    openai_server.config.inject(Fault("rate_limit", retry_after=None, retry_after_ms=10), times=2)
    r = client(openai_server, max_retries=2).embeddings.create(model=SMALL, input="x")
    assert len(r.data) == 1
    log = openai_server.requests
    assert [r.status for r in log] == [429, 429, 200]
    assert [r.headers["x-stainless-retry-count"] for r in log] == ["0", "1", "2"]


@pytest.mark.parametrize(("kind", "status"), [("server_error", 500), ("unavailable", 503)])
def test_server_errors(openai_server, kind, status) -> None:
    openai_server.config.inject(Fault(kind))
    with pytest.raises(openai.InternalServerError) as err:
        client(openai_server).chat.completions.create(model="gpt-4o", messages=ask("hi"))
    assert err.value.status_code == status


def test_insufficient_quota_code_is_readable(openai_server) -> None:
    openai_server.config.inject(Fault("insufficient_quota", endpoint="embeddings"))
    c = client(openai_server)
    c.chat.completions.create(model="gpt-4o", messages=ask("hi"))  # other endpoint: untouched
    with pytest.raises(openai.RateLimitError) as err:
        c.embeddings.create(model=SMALL, input="x")
    assert err.value.code == "insufficient_quota"
    assert err.value.body["type"] == "insufficient_quota"  # type: ignore[index]
    assert "exceeded your current quota" in err.value.message
    assert "retry-after" not in err.value.response.headers


def test_slow_response_times_out_on_the_client(openai_server) -> None:
    openai_server.config.inject(Fault("timeout", delay=30))
    with pytest.raises(openai.APITimeoutError):
        client(openai_server, timeout=0.3).embeddings.create(model=SMALL, input="x")
    # The server's sleeping handler is woken by teardown: the fixture must not take 30 s.


def test_latency_applies_to_every_response(openai_server) -> None:
    openai_server.config.latency = 30
    with pytest.raises(openai.APITimeoutError):
        client(openai_server, timeout=0.3).models.list()
    openai_server.reset()
    ids = {m.id for m in client(openai_server, timeout=5).models.list()}
    assert {"gpt-4o-mini", "o3", SMALL} <= ids


def test_dropped_connection_is_a_connection_error(openai_server) -> None:
    openai_server.config.inject(Fault("drop"), Fault("drop", keep_fraction=0))
    c = client(openai_server)
    for _ in range(2):
        with pytest.raises(openai.APIConnectionError) as err:
            c.embeddings.create(model=SMALL, input="x")
        assert not isinstance(err.value, openai.APITimeoutError)
    assert len(c.embeddings.create(model=SMALL, input="x").data) == 1


def test_stream_cut_abruptly_raises_after_some_content(openai_server) -> None:
    openai_server.config.inject(Fault("stream_cut"))
    c = client(openai_server)
    c.chat.completions.create(model="gpt-4o", messages=ask("hi"))  # not a stream: untouched
    received: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIConnectionError):
        received.extend(
            c.chat.completions.create(model="gpt-4o", messages=ask(SOURCES_PROMPT), stream=True)
        )
    assert received and all(ch.choices[0].finish_reason is None for ch in received)
    text = "".join(ch.choices[0].delta.content or "" for ch in received)
    assert 0 < len(text) < len("Bananas are a yellow fruit rich in potassium [2].")


def test_stream_cut_cleanly_has_no_finish_reason(openai_server) -> None:
    openai_server.config.inject(Fault("stream_cut", clean=True))
    chunks = list(
        client(openai_server).chat.completions.create(
            model="gpt-4o", messages=ask(SOURCES_PROMPT), stream=True
        )
    )
    assert chunks and all(ch.choices[0].finish_reason is None for ch in chunks)


def test_api_keys_are_checked_when_configured(openai_server) -> None:
    openai_server.config.api_keys = {"sk-good"}
    with pytest.raises(openai.AuthenticationError) as err:
        client(openai_server).embeddings.create(model=SMALL, input="x")
    assert err.value.code == "invalid_api_key"
    good = openai.OpenAI(base_url=openai_server.base_url, api_key="sk-good", max_retries=0)
    good.embeddings.create(model=SMALL, input="x")
    assert [r.api_key for r in openai_server.requests] == ["test", "sk-good"]


def test_random_faults_are_seeded(openai_server) -> None:
    def pattern() -> list[int]:
        openai_server.reset()
        openai_server.config.inject_randomly(Fault("server_error"), probability=0.5, seed=3)
        c = client(openai_server)
        for _ in range(12):
            try:
                c.embeddings.create(model=SMALL, input="x", dimensions=4)
            except openai.InternalServerError:
                pass
        return [r.status for r in openai_server.requests]

    first = pattern()
    assert first == pattern()
    assert 500 in first and 200 in first


# --------------------------------------------------------------------------- rate limits


def test_rpm_limit_gives_429_with_retry_after(openai_server) -> None:
    openai_server.config.rpm = 3
    c = client(openai_server)
    first = c.embeddings.with_raw_response.create(model=SMALL, input="x")
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    c.embeddings.create(model=SMALL, input="x")
    c.embeddings.create(model=SMALL, input="x")
    with pytest.raises(openai.RateLimitError) as err:
        c.embeddings.create(model=SMALL, input="x")
    assert err.value.type == "requests"
    # 3 per minute refills one request every 20 s; nearly none of it has elapsed yet.
    assert 15_000 < int(err.value.response.headers["retry-after-ms"]) <= 20_000
    assert err.value.response.headers["retry-after"] == "20"
    # Another model has its own bucket.
    c.embeddings.create(model="text-embedding-3-large", input="x", dimensions=4)


def test_tpm_limit_refills_after_retry_after(openai_server) -> None:
    openai_server.config.tpm = 600  # 10 tokens per second
    c = client(openai_server)
    unit = one_token_unit()
    c.embeddings.create(model=SMALL, input=unit * 595)
    with pytest.raises(openai.RateLimitError) as err:
        c.embeddings.create(model=SMALL, input=unit * 15)
    assert err.value.type == "tokens"
    wait_ms = int(err.value.response.headers["retry-after-ms"])
    assert 0 < wait_ms <= 1000
    threading.Event().wait(wait_ms / 1000)
    c.embeddings.create(model=SMALL, input=unit * 15)
    with pytest.raises(openai.RateLimitError, match="Request too large"):
        c.embeddings.create(model=SMALL, input=unit * 601)


def test_rate_limiter_token_bucket_arithmetic() -> None:
    limiter = RateLimiter()
    assert limiter.acquire("m", 500, rpm=60, tpm=1000, now=0.0).allowed
    decision = limiter.acquire("m", 600, rpm=60, tpm=1000, now=0.0)
    assert not decision.allowed
    # 100 tokens short at 1000/60 tokens per second: 6 s.
    assert decision.headers["retry-after-ms"] == "6000"
    assert decision.headers["x-ratelimit-remaining-tokens"] == "500"
    assert decision.headers["x-ratelimit-reset-tokens"] == "30s"
    assert limiter.acquire("m", 600, rpm=60, tpm=1000, now=6.0).allowed
    later = limiter.acquire("m", 1, rpm=60, tpm=1000, now=66.0)
    assert later.headers["x-ratelimit-remaining-requests"] == "59"
    assert later.headers["x-ratelimit-reset-requests"] == "1s"


def test_go_duration_format() -> None:
    assert [go_duration(s) for s in (0, 0.02, 1, 1.5, 360, 3725)] == [
        "0s",
        "20ms",
        "1s",
        "1.5s",
        "6m0s",
        "1h2m5s",
    ]


# --------------------------------------------------------------------------- log, threads, CLI


def test_request_log_records_what_was_sent(openai_server) -> None:
    c = client(openai_server)
    c.embeddings.create(model=SMALL, input=["one two", "three"], dimensions=8)
    with pytest.raises(openai.BadRequestError):
        c.embeddings.create(model=SMALL, input="")
    ok, bad = openai_server.requests
    assert ok.path == "/v1/embeddings" and ok.method == "POST" and ok.endpoint == "embeddings"
    assert ok.body["input"] == ["one two", "three"] and ok.inputs == 2
    counts = (count_tokens("one two"), count_tokens("three"))
    assert ok.input_tokens == counts and ok.prompt_tokens == sum(counts) > 0
    assert ok.headers["authorization"] == "Bearer test"
    assert not ok.rejected and ok.reason is None
    assert bad.rejected and bad.status == 400 and "input" in bad.error["message"]


def test_concurrent_requests_are_all_served_and_logged(openai_server) -> None:
    c = client(openai_server)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(5):
                vec = c.embeddings.create(model=SMALL, input=f"text {i} {j}", dimensions=16)
                assert len(vec.data[0].embedding) == 16
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(openai_server.requests) == 40


def test_close_ends_every_thread_even_with_sleeping_and_idle_connections() -> None:
    server = OpenAITestServer().start()
    idle = client(server)
    idle.embeddings.create(model=SMALL, input="this keep-alive connection stays open")
    server.config.inject(Fault("timeout", delay=60))
    with pytest.raises(openai.APITimeoutError):
        client(server, timeout=0.3).embeddings.create(model=SMALL, input="x")
    # One handler waits on the idle connection, one sleeps in the timeout fault.
    assert len([t for t in iter_threads() if t.name.endswith("-conn")]) == 2
    server.close()  # raises if a thread is still alive after 5 s
    assert list(iter_threads()) == []
    idle.close()


def test_standalone_server_prints_its_url_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.openai_server",
            "--port",
            "0",
            "--latency",
            "0",
            "--tpm",
            "1000000",
            "--rpm",
            "5000",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        c = openai.OpenAI(base_url=url, api_key="test", max_retries=0)
        raw = c.embeddings.with_raw_response.create(model=SMALL, input="hello")
        assert raw.headers["x-ratelimit-limit-tokens"] == "1000000"
        assert json.loads(raw.text)["usage"]["prompt_tokens"] == count_tokens("hello")
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
