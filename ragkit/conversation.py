"""Multi-turn state: earlier turns kept within a token budget, follow-up retrieval, merged hits.

A conversation is just the list of earlier :class:`Turn` objects, passed to ``ask(...,
history=turns)``. Each turn retrieves afresh and numbers its own sources from [1], so markers in
earlier answers are stripped before they are shown to the model again: they named other sources.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ragkit.chat import Message
    from ragkit.retriever import Hit

_MARKER = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")


@dataclass(frozen=True)
class Turn:
    """One earlier exchange: the user's question and the answer given."""

    question: str
    answer: str


def count_tokens(text: str) -> int:
    """Tokens in ``text``: tiktoken's cl100k_base when it loads, else UTF-8 bytes (never fewer)."""
    from ragkit.embedders.tokens import count_tokens as count_batch

    return count_batch([text])[0]


def fit_history(turns: Sequence[Turn], budget: int) -> tuple[Turn, ...]:
    """The most recent turns whose questions and answers fit in ``budget`` tokens, oldest first.

    Oldest turns go first; a turn is kept whole or not at all.
    """
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        cost = count_tokens(turn.question) + count_tokens(turn.answer)
        if used + cost > budget:
            break
        kept.append(turn)
        used += cost
    return tuple(reversed(kept))


def history_messages(turns: Sequence[Turn]) -> list[Message]:
    """Earlier turns as user/assistant messages, their citation markers removed."""
    messages: list[Message] = []
    for turn in turns:
        messages.append({"role": "user", "content": turn.question})
        messages.append({"role": "assistant", "content": _MARKER.sub("", turn.answer).strip()})
    return messages


def followup_query(question: str, turns: Sequence[Turn]) -> str | None:
    """A second retrieval query for a follow-up: the previous question, then this one.

    "And on Sundays?" alone retrieves nothing useful; after "When does the shop close?" it
    does. Only the previous question is added (not its answer, which would pull retrieval back
    to the sources already shown), and the plain question is searched too (see merge_hits), so
    a change of topic still finds its own sources. The price: an unrelated question right after
    another also finds the earlier topic's sources and passes the abstention threshold, leaving
    the chat model (told to say when the sources do not answer) to judge; extractive answers,
    with no model to judge, keep only the follow-up hits that hold one of the new question's
    own terms (``ragkit.extractive.followup_hits``).
    """
    if not turns:
        return None
    return f"{turns[-1].question}\n{question}"


def merge_hits(results: Sequence[Sequence[Hit]], k: int) -> list[Hit]:
    """Several queries' hits as one ranking: each chunk at its best score, top ``k``, re-ranked."""
    best: dict[int, Hit] = {}

    def strength(hit: Hit) -> tuple[float, float]:
        # Fused scores come from ranks, so one chunk ranked first by two queries ties: the
        # query it is closer to (its cosine, which abstention reads) then decides.
        return hit.score, -1.0 if hit.dense_score is None else hit.dense_score

    for hits in results:
        for hit in hits:
            seen = best.get(hit.chunk_id)
            if seen is None or strength(hit) > strength(seen):
                best[hit.chunk_id] = hit
    ranked = sorted(best.values(), key=lambda h: (-h.score, h.chunk_id))[:k]
    return [dataclasses.replace(h, rank=i) for i, h in enumerate(ranked, start=1)]
