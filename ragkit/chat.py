"""The ChatModel seam (messages in, text or a stream of text out) and its OpenAI implementation.

``OpenAIChatModel`` adapts its request to the model family (see :func:`is_reasoning_model`):
reasoning models (o1, o3, o4-mini, gpt-5 ...) get ``max_completion_tokens``, ``reasoning_effort``
and the ``developer`` role, and never sampling parameters, which they reject.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ragkit.errors import ChatError
from ragkit.openai_client import explain, make_client

log = logging.getLogger(__name__)

Message = dict[str, str]

# Classic chat models get this temperature unless told otherwise: answers grounded in sources
# should not change from one run to the next.
DEFAULT_TEMPERATURE = 0.0

# Sampling parameters reasoning models reject (any value but the default is a 400).
_SAMPLING = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


@dataclass(frozen=True)
class ChatResult:
    """What a chat model returned: the text, why it stopped, and tokens used."""

    text: str
    finish_reason: str | None
    usage: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class ChatModel(Protocol):
    """Anything that turns chat messages into text, whole or streamed."""

    model: str

    def complete(self, messages: Sequence[Message]) -> ChatResult:
        """The whole answer at once."""
        ...

    def stream(self, messages: Sequence[Message], on_text: Callable[[str], None]) -> ChatResult:
        """Pass text to ``on_text`` as it arrives; return the whole result at the end."""
        ...


@dataclass(frozen=True)
class ModelFamily:
    """How a chat model wants its request shaped."""

    reasoning: bool  # max_completion_tokens, developer role, reasoning_effort, no sampling
    accepts_stop: bool


def model_family(model: str) -> ModelFamily:
    """The one rule that tells reasoning models (o1, o3, o4-mini, gpt-5 ...) from classic ones.

    Works on snapshots (``o3-2025-04-16``), fine-tunes (``ft:o4-mini:...``) and router prefixes
    (``openai/gpt-5``). ``gpt-5-chat-*`` is the classic, non-reasoning gpt-5.
    """
    name = model.strip().lower().rsplit("/", 1)[-1]
    name = name.removeprefix("ft:")
    reasoning = bool(re.match(r"o\d", name)) or (
        name.startswith("gpt-5") and not name.startswith("gpt-5-chat")
    )
    # o1 and o3-mini take `stop`; o3, o4-mini and gpt-5 refuse it.
    accepts_stop = not reasoning or name.startswith(("o1", "o3-mini"))
    return ModelFamily(reasoning, accepts_stop)


def is_reasoning_model(model: str) -> bool:
    """True for o-series and other reasoning models, which take different request parameters."""
    return model_family(model).reasoning


class OpenAIChatModel:
    """Chat completions through the ``openai`` SDK (OpenAI or any compatible server).

    The SDK's own retries (``max_retries``) cover 429s and 5xx; ``insufficient_quota`` is never
    retried, since waiting does not add credit.
    """

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        client: Any = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        reasoning_effort: str | None = None,
        reasoning: bool | None = None,
        max_retries: int = 2,
    ) -> None:
        """``temperature`` None means 0 for classic models; ``reasoning`` None infers the family
        from the name (set it for deployments whose names do not say, e.g. on Azure)."""
        self.model = model
        self.client = client or _shared_client(api_key, base_url, max_retries)
        family = model_family(model)
        if reasoning is not None:
            family = ModelFamily(reasoning, family.accepts_stop if reasoning else True)
        self.family = family
        self.params = self._request_params(
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            stop=list(stop) if stop else None,
            reasoning_effort=reasoning_effort,
        )

    def _request_params(self, **given: Any) -> dict[str, Any]:
        """The fixed request parameters for this model's family; notes what had to be dropped."""
        params: dict[str, Any] = {"model": self.model}
        dropped: list[str] = []
        if self.family.reasoning:
            dropped += [n for n in _SAMPLING if given.get(n) is not None]
            if given["max_tokens"] is not None:
                params["max_completion_tokens"] = given["max_tokens"]
            if given["reasoning_effort"] is not None:
                params["reasoning_effort"] = given["reasoning_effort"]
        else:
            temperature = given["temperature"]
            params["temperature"] = DEFAULT_TEMPERATURE if temperature is None else temperature
            if given["top_p"] is not None:
                params["top_p"] = given["top_p"]
            if given["max_tokens"] is not None:
                params["max_tokens"] = given["max_tokens"]
            if given["reasoning_effort"] is not None:
                dropped.append("reasoning_effort")
        if given["stop"]:
            if self.family.accepts_stop:
                params["stop"] = given["stop"]
            else:
                dropped.append("stop")
        if given["seed"] is not None:
            params["seed"] = given["seed"]
        if dropped:
            _note_dropped(self.model, self.family.reasoning, tuple(dropped))
        return params

    def _messages(self, messages: Sequence[Message]) -> list[Message]:
        if not self.family.reasoning:
            return list(messages)
        # Reasoning models take instructions in the developer role.
        return [
            {**m, "role": "developer"} if m.get("role") == "system" else dict(m) for m in messages
        ]

    def request(self, messages: Sequence[Message], *, stream: bool = False) -> dict[str, Any]:
        """The keyword arguments sent to ``chat.completions.create``."""
        params = {**self.params, "messages": self._messages(messages)}
        if stream:
            params["stream"] = True
            params["stream_options"] = {"include_usage": True}
        return params

    def complete(self, messages: Sequence[Message]) -> ChatResult:
        """One request, whole answer."""
        import openai

        try:
            response = self.client.chat.completions.create(**self.request(messages))
        except openai.OpenAIError as exc:
            raise explain(exc, what="answer") from exc
        if not response.choices:
            raise ChatError(
                f"the chat server sent no answer for model {self.model}; re-run the question"
            )
        choice = response.choices[0]
        return ChatResult(
            choice.message.content or "", choice.finish_reason, _usage(response.usage)
        )

    def stream(self, messages: Sequence[Message], on_text: Callable[[str], None]) -> ChatResult:
        """Stream the answer; a stream that ends without a finish reason is a ChatError."""
        import openai

        parts: list[str] = []
        finish: str | None = None
        usage: dict[str, int] = {}
        started = False
        try:
            events = self.client.chat.completions.create(**self.request(messages, stream=True))
            started = True
            for event in events:
                if event.usage:
                    usage = _usage(event.usage)
                for choice in event.choices:
                    delta = choice.delta.content if choice.delta else None
                    if delta:
                        parts.append(delta)
                        on_text(delta)
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except openai.APIConnectionError as exc:
            if not started:
                raise explain(exc, what="answer") from exc
            # The SDK reports a body cut mid-stream as a connection error; say what it means.
            raise ChatError(_cut_message(parts, "the connection was lost")) from exc
        except openai.OpenAIError as exc:
            raise explain(exc, what="answer") from exc
        if finish is None:
            raise ChatError(_cut_message(parts, "the stream ended without a finish reason"))
        return ChatResult("".join(parts), finish, usage)


@functools.lru_cache(maxsize=64)
def _note_dropped(model: str, reasoning: bool, names: tuple[str, ...]) -> None:
    """Say once per process (not once per question) which settings a model cannot take."""
    kind = "a reasoning model" if reasoning else "not a reasoning model"
    log.warning("%s is %s: not sending %s", model, kind, ", ".join(names))


def _cut_message(parts: Sequence[str], why: str) -> str:
    got = sum(len(p) for p in parts)
    return f"the answer stream was cut after {got} characters ({why}); re-run the question"


def _usage(usage: Any) -> dict[str, int]:
    """Token counts from the SDK's usage object, flat: prompt, completion, total, reasoning."""
    if usage is None:
        return {}
    data = usage.model_dump() if hasattr(usage, "model_dump") else dict(usage)
    out = {k: int(v) for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool)}
    details = data.get("completion_tokens_details") or {}
    if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
        out["reasoning_tokens"] = int(details["reasoning_tokens"])
    return out


@functools.lru_cache(maxsize=8)
def _shared_client(api_key: str | None, base_url: str | None, max_retries: int) -> Any:
    """One client per endpoint and key, shared by every chat model and thread (the SDK's client
    is thread-safe): building one loads the CA bundle (~0.1 s), and sharing it keeps connections
    alive from one question to the next."""
    return without_quota_retries(
        make_client(api_key=api_key, base_url=base_url, max_retries=max_retries)
    )


def without_quota_retries(client: Any) -> Any:
    """The same client, except that a 429 ``insufficient_quota`` is final: the SDK obeys a
    response's ``x-should-retry: false``, so one is added to such responses before it looks."""
    import openai

    def mark(response: Any) -> None:
        if response.status_code != 429:
            return
        response.read()
        try:
            error = json.loads(response.content).get("error") or {}
        except (ValueError, AttributeError):
            return
        if isinstance(error, dict) and "insufficient_quota" in (
            error.get("code"),
            error.get("type"),
        ):
            response.headers["x-should-retry"] = "false"

    http_client = openai.DefaultHttpxClient(event_hooks={"response": [mark]})
    return client.with_options(http_client=http_client)
