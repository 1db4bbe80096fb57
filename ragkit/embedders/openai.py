"""OpenAI embeddings through the ``openai`` SDK: token-packed, concurrent, paced, retried requests.

- **Packing.** Texts go out in order, as many per request as fit in 2,048 inputs and
  ``REQUEST_TOKEN_BUDGET`` tokens (the API allows 300,000; the margin absorbs tokenizer
  differences), and never more than 1/30 of the tokens-per-minute limit once the server has said
  it, so that the pacer's waits stay short and several requests share the minute.
- **Concurrency.** The first request goes alone and small (its headers tell the limits; a wrong
  URL, key or model fails once, not ``concurrency`` times); then up to ``concurrency`` requests
  run at once.
- **Pacing.** A shared :class:`~ragkit.embedders.pacing.Pacer` mirrors the server's buckets from
  ``x-ratelimit-*`` headers and holds a request until it fits; a 429's ``retry-after-ms`` /
  ``retry-after`` holds every worker.
- **Retries.** 408, 409, 429 ``rate_limit_exceeded``, 5xx, timeouts and dropped connections are
  retried up to ``max_retries`` times with exponential back-off and jitter (or the server's
  ``retry-after``). The SDK's own retries are off, so retries never multiply. Anything else
  (``insufficient_quota``, 400, 401, 403, 404, a server that was never reached) stops the run at
  once with a one-line :class:`~ragkit.errors.RagkitError`; requests already in flight finish and
  are yielded first, so the caller can keep them.
- **Over-long inputs.** A text over ``INPUT_TOKEN_BUDGET`` tokens is split into pieces of at
  most that many tokens; each piece is embedded and the text's vector is the token-weighted mean
  of its pieces' vectors, renormalised (OpenAI's cookbook recipe). Nothing is cut off; a warning
  says how many texts were split.
- **Tokens** are counted with tiktoken's ``cl100k_base`` when it loads, else as UTF-8 bytes
  (every token is at least one byte, so this never undercounts).
"""

from __future__ import annotations

import binascii
import functools
import json
import logging
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ragkit.embedders.direct import Post, poster
from ragkit.embedders.pacing import Pacer, Stopped, backoff, retry_after
from ragkit.errors import EmbeddingError, RagkitError
from ragkit.openai_client import check_credentials, error_code, explain, make_client

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)

MODEL_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
# US dollars per million input tokens (OpenAI's list prices, standard tier).
PRICE_PER_MILLION_TOKENS = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
}
MAX_INPUTS = 2048  # inputs per request (API limit)
MAX_REQUEST_TOKENS = 300_000  # tokens per request (API limit)
MAX_INPUT_TOKENS = 8191  # tokens per input (API limit)
REQUEST_TOKEN_BUDGET = 270_000  # what ragkit packs into one request
INPUT_TOKEN_BUDGET = 8_000  # longest piece ragkit sends; re-tokenising a split piece can add a few

# The first request goes alone and small: its headers tell the limits, and a wrong URL, key or
# model fails once, cheaply. Later requests hold at most 1/30 of the tokens-per-minute limit
# (two seconds' refill), so the pacer's waits stay short and several requests overlap.
FIRST_REQUEST_TOKENS = 8_000
REQUESTS_PER_MINUTE_OF_TOKENS = 30

DEFAULT_CONCURRENCY = 4
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 8
DEFAULT_RETRY_DELAY = 0.5  # seconds before the first retry; doubles with each one
DEFAULT_MAX_RETRY_DELAY = 30.0
_RETRY_STATUSES = frozenset({408, 409, 429})
_CONNECT_FAILURES = ("ConnectError", "ConnectTimeout")  # httpx's names for "never got through"


# tiktoken downloads its encoding on first use; on a network that drops packets rather than
# refusing them that could hang, so the load gets this long before counting falls back to bytes.
TIKTOKEN_LOAD_SECONDS = 5.0


@functools.lru_cache(maxsize=1)
def _encoding() -> Any:
    """tiktoken's cl100k_base, or None when it cannot be loaded (offline, not installed, slow)."""
    result: list[Any] = []

    def load() -> None:
        try:
            import tiktoken

            result.append(tiktoken.get_encoding("cl100k_base"))
        except Exception as exc:  # noqa: BLE001 - any failure to load means "count conservatively"
            log.info(
                "tiktoken's cl100k_base unavailable (%s); counting UTF-8 bytes", type(exc).__name__
            )

    loader = threading.Thread(target=load, name="ragkit-tiktoken", daemon=True)
    loader.start()
    loader.join(TIKTOKEN_LOAD_SECONDS)
    if loader.is_alive():
        log.warning(
            "tiktoken's cl100k_base did not load within %.0f s; counting UTF-8 bytes",
            TIKTOKEN_LOAD_SECONDS,
        )
        return None
    return result[0] if result else None


def count_tokens(texts: Sequence[str]) -> list[int]:
    """cl100k_base token counts when tiktoken's encoding loads; else UTF-8 bytes (never fewer)."""
    encoding = _encoding()
    if encoding is not None:
        return [len(t) for t in encoding.encode_ordinary_batch(list(texts))]
    return [len(t.encode("utf-8")) for t in texts]


def split_text(text: str, limit: int) -> list[str]:
    """``text`` cut into consecutive pieces of at most ``limit`` tokens (as counted here)."""
    encoding = _encoding()
    if encoding is not None:
        ids = encoding.encode_ordinary(text)
        return [encoding.decode(ids[i : i + limit]) or " " for i in range(0, len(ids), limit)]
    data = text.encode("utf-8")
    pieces: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # not inside a UTF-8 sequence
            end -= 1
        pieces.append(data[start:end].decode("utf-8"))
        start = end
    return pieces


@dataclass(frozen=True)
class RequestStats:
    """What an embedder has sent so far: requests, retries, 429s, and tokens the server billed."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    tokens: int = 0


@dataclass(frozen=True)
class _Piece:
    owner: int  # position of the text this is (part of)
    text: str
    tokens: int


@dataclass(frozen=True)
class _Result:
    vectors: NDArray[np.float32]
    tokens: int  # server-reported usage, else counted


class _TooLarge(Exception):
    """The request holds more tokens than the per-minute limit: re-pack it smaller."""


class OpenAIEmbedder:
    """Embeds through an OpenAI-compatible ``/embeddings`` endpoint; see the module docstring."""

    name = "openai"
    max_tokens = INPUT_TOKEN_BUDGET

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        azure_endpoint: str | None = None,
        azure_api_key: str | None = None,
        azure_api_version: str | None = None,
        azure_deployment: str | None = None,
        client: Any = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_delay: float | None = None,
        max_retry_delay: float | None = None,
        count_only: bool = False,
    ) -> None:
        self.model = model
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.retry_delay = DEFAULT_RETRY_DELAY if retry_delay is None else retry_delay
        self.max_retry_delay = (
            DEFAULT_MAX_RETRY_DELAY if max_retry_delay is None else max_retry_delay
        )
        self.price_per_million_tokens = PRICE_PER_MILLION_TOKENS.get(model)
        # Azure routes by deployment name, which the SDK takes from the request's model.
        self._request_model = (azure_deployment if azure_endpoint else None) or model
        self._dimension = MODEL_DIMENSIONS.get(model)
        self._pacer = Pacer()
        self._reached = False  # has the server ever answered?
        self._lock = threading.Lock()
        self._stats = RequestStats()
        self._client: openai.OpenAI | None = None
        if client is not None:
            self._client = client.with_options(max_retries=0)
        elif not count_only:
            check_credentials(
                api_key=api_key,
                base_url=base_url,
                azure_endpoint=azure_endpoint,
                azure_api_key=azure_api_key,
            )

        # A closure, not attributes: the key must not show up in a repr or a debugger dump.
        def connect() -> openai.OpenAI:
            return make_client(
                api_key=api_key,
                base_url=base_url,
                azure_endpoint=azure_endpoint,
                azure_api_key=azure_api_key,
                azure_api_version=azure_api_version,
                timeout=timeout,
                max_retries=0,  # ragkit retries itself; the SDK's would multiply with ours
            )

        self._connect = connect
        # The first one-text embed (a cold search's query) need not import the SDK: direct.py.
        self._direct: Post | None = None
        if client is None and not azure_endpoint and not count_only:
            self._direct = poster(
                self._request_model, api_key=api_key, base_url=base_url, timeout=timeout
            )

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(model={self.model!r}, concurrency={self.concurrency})"

    @property
    def client(self) -> openai.OpenAI:
        """The SDK client, made on first use (counting tokens needs no credentials)."""
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    @property
    def dimension(self) -> int:
        """Vector length: known for OpenAI's models, asked of the server for others."""
        if self._dimension is None:
            self._dimension = int(self.embed(["dimension probe"]).shape[1])
        return self._dimension

    @property
    def stats(self) -> RequestStats:
        """Requests, retries, 429s and billed tokens since this embedder was made."""
        with self._lock:
            return self._stats

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """cl100k_base counts when tiktoken's encoding loads; else UTF-8 bytes (never fewer)."""
        return count_tokens(texts)

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Unit vectors for ``texts``, one row each, in order."""
        if len(texts) == 1 and self._direct is not None:
            with self._lock:  # once: later calls reuse the SDK client's pooled connection
                post, self._direct = self._direct, None
            if post is not None:
                direct = self._embed_directly(post, texts[0])
                if direct is not None:
                    return direct
        out: NDArray[np.float32] | None = None
        for positions, vectors, _ in self.embed_batches(texts):
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[positions] = vectors
        if out is None:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return out

    def embed_batches(
        self, texts: Sequence[str]
    ) -> Iterator[tuple[NDArray[np.intp], NDArray[np.float32], int]]:
        """Yield (positions, unit vectors, tokens used) for each request as it completes.

        Positions index ``texts``; completion order is not input order. A text split into
        pieces is yielded with the request that completes its last piece.
        """
        pieces = self._pieces(texts)
        parts = np.bincount([p.owner for p in pieces], minlength=len(texts)) if pieces else None
        sums: dict[int, NDArray[np.float32]] = {}  # split texts: weighted sum so far
        left: dict[int, int] = {}  # split texts: pieces still to come
        queue = deque(range(len(pieces)))
        running: dict[Future[_Result], list[int]] = {}
        stop = threading.Event()
        failure: RagkitError | None = None
        carry = 0  # tokens used by requests that completed no text yet
        interrupted = False
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="ragkit-embed")
        try:
            while queue or running:
                slots = self.concurrency if self._reached else 1
                while queue and failure is None and len(running) < slots:
                    batch = self._take(queue, pieces)
                    work = [pieces[i] for i in batch]
                    running[pool.submit(self._send, work, stop)] = batch
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    batch = running.pop(future)
                    try:
                        result = future.result()
                    except _TooLarge:
                        queue.extendleft(reversed(batch))
                        continue
                    except Stopped:
                        continue
                    except RagkitError as exc:
                        if failure is None:
                            failure = exc
                            stop.set()  # workers waiting to send or to retry give up
                        continue
                    carry += result.tokens
                    positions: list[int] = []
                    rows: list[NDArray[np.float32]] = []
                    for row, i in enumerate(batch):
                        piece = pieces[i]
                        assert parts is not None
                        if parts[piece.owner] == 1:
                            positions.append(piece.owner)
                            rows.append(result.vectors[row])
                            continue
                        weighted = result.vectors[row] * np.float32(piece.tokens)
                        total = sums.get(piece.owner)
                        sums[piece.owner] = weighted if total is None else total + weighted
                        left[piece.owner] = left.get(piece.owner, int(parts[piece.owner])) - 1
                        if left[piece.owner] == 0:
                            mean = sums.pop(piece.owner)
                            positions.append(piece.owner)
                            rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
                    if positions:
                        yield np.asarray(positions, dtype=np.intp), np.vstack(rows), carry
                        carry = 0
            if failure is not None:
                raise failure
        except KeyboardInterrupt:
            # Do not sit out requests in flight (up to the timeout): their work is lost anyway.
            interrupted = True
            raise
        finally:
            stop.set()
            pool.shutdown(wait=not interrupted, cancel_futures=True)

    def _embed_directly(self, post: Post, text: str) -> NDArray[np.float32] | None:
        """One short text through ``post``; None sends it through the SDK instead."""
        size = len(text.encode())
        if not text.strip() or size > INPUT_TOKEN_BUDGET:  # bytes bound tokens: no split needed
            return None
        content = post([text])
        if content is None:  # not counted: the SDK path makes (and counts) the real attempt
            return None
        try:
            result = self._parse(content, 1, size)
        except _Garbled:
            return None
        self._count(requests=1)
        self._reached = True
        return result.vectors

    # -- packing -----------------------------------------------------------------------------

    def _pieces(self, texts: Sequence[str]) -> list[_Piece]:
        # The API refuses empty strings; a blank chunk still needs a (meaningless) vector.
        safe = [t if t.strip() else " " for t in texts]
        counts = count_tokens(safe)
        pieces: list[_Piece] = []
        split = 0
        for owner, (text, tokens) in enumerate(zip(safe, counts, strict=True)):
            if tokens <= INPUT_TOKEN_BUDGET:
                pieces.append(_Piece(owner, text, tokens))
                continue
            split += 1
            parts = split_text(text, INPUT_TOKEN_BUDGET)
            pieces.extend(
                _Piece(owner, p, n) for p, n in zip(parts, count_tokens(parts), strict=True)
            )
        if split:
            log.warning(
                "%d text(s) longer than %d tokens were split into pieces; each one's vector is"
                " the token-weighted mean of its pieces' vectors",
                split,
                INPUT_TOKEN_BUDGET,
            )
        return pieces

    def _request_budget(self) -> int:
        if not self._reached:
            return FIRST_REQUEST_TOKENS
        limit = self._pacer.token_limit
        if limit is None:
            return REQUEST_TOKEN_BUDGET
        return max(1, min(REQUEST_TOKEN_BUDGET, limit // REQUESTS_PER_MINUTE_OF_TOKENS))

    def _take(self, queue: deque[int], pieces: Sequence[_Piece]) -> list[int]:
        budget = self._request_budget()
        batch = [queue.popleft()]
        tokens = pieces[batch[0]].tokens
        while queue and len(batch) < MAX_INPUTS and tokens + pieces[queue[0]].tokens <= budget:
            tokens += pieces[queue[0]].tokens
            batch.append(queue.popleft())
        return batch

    # -- one request, with retries (runs in a worker thread) ---------------------------------

    def _send(self, work: Sequence[_Piece], stop: threading.Event) -> _Result:
        import openai

        texts = [p.text for p in work]
        tokens = sum(p.tokens for p in work)
        attempt = 0
        while True:
            ticket = self._pacer.acquire(tokens, stop)
            self._count(requests=1)
            wait_for: float | None = None
            shared = False
            error: Exception
            try:
                raw = self.client.embeddings.with_raw_response.create(
                    model=self._request_model, input=texts, encoding_format="base64"
                )
                self._pacer.observe(raw.headers, ticket)  # before more workers start on _reached
                self._reached = True
                return self._parse(raw.content, len(texts), tokens)
            except openai.APIStatusError as exc:
                headers = exc.response.headers
                self._pacer.refund(ticket)  # refused requests use no quota
                self._pacer.observe(headers, ticket)
                self._reached = True
                if exc.status_code == 429:
                    self._count(rate_limited=1)
                if not _retryable(exc):
                    raise explain(exc, what="embedding") from exc
                limit = self._pacer.token_limit
                if exc.status_code == 429 and limit is not None and tokens > limit:
                    if len(work) > 1:
                        raise _TooLarge from exc
                    raise EmbeddingError(
                        f"embedding failed: one input needs {tokens} tokens but the account's"
                        f" limit is {limit} tokens per minute; raise the limit or use smaller"
                        " chunks (--chunk-tokens)"
                    ) from exc
                wait_for = retry_after(headers)
                shared = wait_for is not None and exc.status_code in (429, 503)
                error = exc
            except openai.APIConnectionError as exc:
                cause = type(exc.__cause__).__name__ if exc.__cause__ else ""
                if not self._reached and cause in _CONNECT_FAILURES:
                    # Nothing has ever answered: a wrong URL or no network, not a blip.
                    raise explain(exc, what="embedding") from exc
                error = exc
            except _Garbled as exc:
                error = exc
            attempt += 1
            if attempt > self.max_retries:
                if isinstance(error, openai.OpenAIError):
                    raise explain(error, what="embedding") from error
                raise EmbeddingError(
                    f"embedding failed: {error} (after {self.max_retries} retries);"
                    " re-run to resume"
                ) from error
            delay = (
                wait_for
                if wait_for is not None
                else backoff(attempt, self.retry_delay, self.max_retry_delay)
            )
            self._count(retries=1)
            log.info(
                "embedding request failed (%s); retry %d of %d in %.2f s%s",
                _describe(error),
                attempt,
                self.max_retries,
                delay,
                " (all requests wait)" if shared else "",
            )
            if shared:
                self._pacer.pause(delay)
            elif stop.wait(delay):
                raise Stopped

    def _parse(self, content: bytes, n: int, counted: int) -> _Result:
        try:
            payload = json.loads(content)
            data = sorted(payload["data"], key=lambda d: int(d["index"]))
            if len(data) != n:
                raise _Garbled(f"{len(data)} embeddings for {n} inputs")
            rows = [_vector(d["embedding"]) for d in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise _Garbled(f"unreadable response ({type(exc).__name__})") from exc
        width = rows[0].shape[0]
        if any(r.shape[0] != width for r in rows) or (
            self._dimension is not None and width != self._dimension
        ):
            raise EmbeddingError(
                f"embedding failed: the server returned {width}-dimensional vectors, but"
                f" {self.model} has {self._dimension}; check the model name and OPENAI_BASE_URL"
            )
        vectors = np.vstack(rows).astype(np.float32, copy=False)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors /= np.maximum(norms, 1e-12)
        usage = payload.get("usage") if isinstance(payload, dict) else None
        billed = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        tokens = int(billed) if isinstance(billed, int) else counted
        self._count(tokens=tokens)
        return _Result(vectors, tokens)

    def _count(
        self, requests: int = 0, retries: int = 0, rate_limited: int = 0, tokens: int = 0
    ) -> None:
        with self._lock:
            s = self._stats
            self._stats = RequestStats(
                s.requests + requests,
                s.retries + retries,
                s.rate_limited + rate_limited,
                s.tokens + tokens,
            )


class _Garbled(Exception):
    """A 200 whose body cannot be read as embeddings: treated like a dropped connection."""


def _vector(embedding: Any) -> NDArray[np.float32]:
    if isinstance(embedding, str):  # base64 of little-endian float32, as asked
        vector = np.frombuffer(binascii.a2b_base64(embedding), dtype="<f4")
        return vector.astype(np.float32, copy=False)
    return np.asarray(embedding, dtype=np.float32)  # servers that ignore encoding_format


def _retryable(exc: openai.APIStatusError) -> bool:
    if exc.status_code == 429:
        return error_code(exc) != "insufficient_quota"
    return exc.status_code in _RETRY_STATUSES or exc.status_code >= 500


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    return type(error).__name__
