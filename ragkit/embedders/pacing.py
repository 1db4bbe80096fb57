"""Client-side pacing for a rate-limited API: a mirror of the server's buckets, fed by headers.

OpenAI answers every request with ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``. A
:class:`Pacer` shared by all of a client's workers keeps an estimate of both buckets (each holds
at most a minute's allowance and refills at ``limit / 60`` per second), takes a request's tokens
out before it is sent, and makes a worker wait until its request fits. A 429's ``retry-after-ms``
/ ``retry-after`` pauses every worker, not just the one that was refused. Without the headers
(most OpenAI-compatible servers) nothing is paced and only 429s slow the client down.
"""

from __future__ import annotations

import email.utils
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# Longest wait taken from a server's retry-after; a longer one is most likely a daily limit.
MAX_SERVER_WAIT = 120.0
# A request goes when the estimate covers it plus this much refill. The estimate runs slightly
# ahead of the server (it cannot know when the server counted), and the cushion costs nothing
# while work is queued: the tokens stay in the bucket, and the rate is still the limit.
CUSHION_SECONDS = 0.25
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


class Stopped(Exception):
    """The run is being stopped (another request failed for good, or the caller went away)."""


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration as in ``x-ratelimit-reset-*``: "20ms", "1.5s", "6m0s"."""
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        try:
            return float(text)
        except ValueError:
            return None
    return float(sum(float(n) * _UNIT_SECONDS[u] for n, u in parts))


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait a response asks for: ``retry-after-ms``, else ``retry-after`` (seconds or date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return min(MAX_SERVER_WAIT, max(0.0, float(millis) / 1000))
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return min(MAX_SERVER_WAIT, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(MAX_SERVER_WAIT, max(0.0, when.timestamp() - time.time()))


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential back-off with jitter: about ``base * 2**(attempt-1)``, at most ``cap``."""
    growth = float(2 ** max(0, attempt - 1))
    return min(cap, base * growth) * random.uniform(0.5, 1.0)


@dataclass
class Ticket:
    """One request's claim on the buckets, from :meth:`Pacer.acquire` until its answer."""

    sent_at: float
    tokens: int


class _Bucket:
    """The client's estimate of one server bucket."""

    def __init__(self, limit: int, level: float, now: float) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.level = min(float(limit), level)
        self.stamp = now

    def level_at(self, now: float) -> float:
        return min(float(self.limit), self.level + (now - self.stamp) * self.rate)

    def wait(self, amount: float, now: float) -> float:
        wanted = min(amount + self.rate * CUSHION_SECONDS, self.limit)
        return max(0.0, (wanted - self.level_at(now)) / self.rate)

    def take(self, amount: float, now: float) -> None:
        self.level = self.level_at(now) - amount
        self.stamp = now


class Pacer:
    """Shared by a client's workers: holds each request until it fits the server's known limits."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pause_until = 0.0
        self._buckets: dict[str, _Bucket] = {}  # "requests" / "tokens"
        self._sent: deque[Ticket] = deque()  # recent tickets, oldest first

    @property
    def token_limit(self) -> int | None:
        """The server's tokens-per-minute limit, once a response has said it."""
        with self._lock:
            bucket = self._buckets.get("tokens")
            return bucket.limit if bucket else None

    def acquire(self, tokens: int, stop: threading.Event) -> Ticket:
        """Wait until a request of ``tokens`` fits (or raise Stopped), then claim it."""
        while True:
            with self._lock:
                now = self._clock()
                delay = self._pause_until - now
                for kind, amount in (("requests", 1), ("tokens", tokens)):
                    bucket = self._buckets.get(kind)
                    if bucket is not None:
                        delay = max(delay, bucket.wait(amount, now))
                if delay <= 0:
                    for kind, amount in (("requests", 1), ("tokens", tokens)):
                        bucket = self._buckets.get(kind)
                        if bucket is not None:
                            bucket.take(amount, now)
                    ticket = Ticket(now, tokens)
                    self._sent.append(ticket)
                    while self._sent and self._sent[0].sent_at < now - 300:
                        self._sent.popleft()
                    return ticket
            # Re-check at least every second: other workers' answers may change the estimate.
            if stop.wait(min(delay, 1.0)):
                raise Stopped

    def refund(self, ticket: Ticket) -> None:
        """Give back a request the server refused without counting it (a 429 or an error status)."""
        with self._lock:
            now = self._clock()
            for kind, amount in (("requests", 1), ("tokens", ticket.tokens)):
                bucket = self._buckets.get(kind)
                if bucket is not None:
                    bucket.take(-amount, now)
            ticket.tokens = 0

    def pause(self, seconds: float) -> None:
        """Hold every worker for ``seconds`` (a 429's retry-after)."""
        with self._lock:
            self._pause_until = max(self._pause_until, self._clock() + seconds)

    def observe(self, headers: Mapping[str, str], ticket: Ticket) -> None:
        """Correct the estimates from a response's ``x-ratelimit-*`` headers."""
        with self._lock:
            now = self._clock()
            for kind in ("requests", "tokens"):
                try:
                    limit = int(headers[f"x-ratelimit-limit-{kind}"])
                    remaining = int(float(headers[f"x-ratelimit-remaining-{kind}"]))
                except (KeyError, ValueError):
                    continue
                if limit <= 0:
                    continue
                # The server counted `remaining` when it admitted this request; since then it has
                # refilled, and admitted (at most) what was sent after this request.
                later = sum(
                    (1 if kind == "requests" else t.tokens)
                    for t in self._sent
                    if t.sent_at > ticket.sent_at
                )
                truth = remaining + (now - ticket.sent_at) * limit / 60.0 - later
                # The server's word wins over our bookkeeping (other clients may share the key);
                # if this overestimates, the next 429 pauses everyone and corrects it.
                self._buckets[kind] = _Bucket(limit, truth, now)
