"""The ChatModel seam (messages in, text or a stream of text out) and its OpenAI implementation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ragkit.errors import ChatError
from ragkit.openai_client import explain, make_client

Message = dict[str, str]


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


class OpenAIChatModel:
    """Chat completions through the ``openai`` SDK (OpenAI or any compatible server)."""

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        client: Any = None,
        temperature: float | None = 0.0,
        max_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.client = client or make_client(api_key=api_key, base_url=base_url)
        self.temperature = temperature
        self.max_tokens = max_tokens

    def _params(self, messages: Sequence[Message]) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        return params

    def complete(self, messages: Sequence[Message]) -> ChatResult:
        """One request, whole answer."""
        import openai

        try:
            response = self.client.chat.completions.create(**self._params(messages))
        except openai.OpenAIError as exc:
            raise explain(exc, what="answer") from exc
        choice = response.choices[0]
        usage = response.usage.model_dump() if response.usage else {}
        return ChatResult(choice.message.content or "", choice.finish_reason, _ints(usage))

    def stream(self, messages: Sequence[Message], on_text: Callable[[str], None]) -> ChatResult:
        """Stream the answer; a stream that ends without a finish reason is an error."""
        import openai

        parts: list[str] = []
        finish: str | None = None
        usage: dict[str, int] = {}
        try:
            events = self.client.chat.completions.create(
                **self._params(messages), stream=True, stream_options={"include_usage": True}
            )
            for event in events:
                if event.usage:
                    usage = _ints(event.usage.model_dump())
                for choice in event.choices:
                    delta = choice.delta.content or ""
                    if delta:
                        parts.append(delta)
                        on_text(delta)
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except openai.OpenAIError as exc:
            raise explain(exc, what="answer") from exc
        if finish is None:
            raise ChatError("the answer stream was cut before it finished; re-run the question")
        return ChatResult("".join(parts), finish, usage)


def _ints(usage: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in usage.items() if isinstance(v, int)}
