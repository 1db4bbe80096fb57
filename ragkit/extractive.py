"""Extractive answers, offline: the retrieved sentences that best answer the question, cited.

No chat model: the answer is made of sentences quoted from the retrieved passages, each followed
by the [n] of its source, so every word of it can be checked against the documents.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ragkit.answerer import Answer, Citation, abstention, should_abstain
from ragkit.embedders import Embedder
from ragkit.retriever import Hit

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
# A line that starts a list item, a table row or a heading begins a new unit of text; other
# line breaks are wrapping (PDF text, hard-wrapped prose) inside a sentence.
_UNIT_START = re.compile(r"\n(?=[ \t]*(?:[-*+•|#]|\d+[.)])\s)|\n[ \t]*\n")


def _sentences(text: str) -> list[str]:
    """Split a passage into sentences, treating list items and paragraphs as separate units."""
    out = []
    for unit in _UNIT_START.split(text):
        for part in _SENTENCE_END.split(" ".join(unit.split())):
            # List bullets, heading marks and table pipes are not part of the quote.
            sentence = re.sub(r"^(?:[-*+•|#>]+|\d+[.)])\s*", "", part.strip()).strip(" |")
            if len(sentence.split()) >= 4:
                out.append(sentence)
    return out


def extractive_answer(
    question: str,
    hits: Sequence[Hit],
    embedder: Embedder,
    *,
    abstain_below: float,
    max_sentences: int = 3,
) -> Answer:
    """The retrieved sentences most similar to the question, each followed by its [n]."""
    model = f"{embedder.name}:{embedder.model}"
    if should_abstain(hits, abstain_below):
        return abstention(question, "extractive", model, hits)
    candidates: list[tuple[int, int, str]] = []  # (source n, position, sentence)
    for n, hit in enumerate(hits, start=1):
        for pos, sentence in enumerate(_sentences(hit.text)):
            candidates.append((n, pos, sentence))
    if not candidates:
        candidates = [(n, 0, " ".join(h.text.split())) for n, h in enumerate(hits, start=1)]
    vectors = embedder.embed([question] + [s for _, _, s in candidates])
    scores = vectors[1:] @ vectors[0]
    # A source's retrieval rank counts too: a sentence from hit 1 beats an equally similar one
    # from hit 5, since the whole passage matched better.
    rank_bonus = np.array([0.02 * (len(hits) - n) for n, _, _ in candidates], dtype=np.float32)
    order = np.argsort(-(scores + rank_bonus), kind="stable")
    chosen: list[tuple[int, int, str]] = []
    seen: set[str] = set()
    for i in order:
        n, pos, sentence = candidates[int(i)]
        key = sentence.lower()
        if key in seen:  # overlapping chunks repeat sentences
            continue
        seen.add(key)
        chosen.append((n, pos, sentence))
        if len(chosen) == max_sentences:
            break
    text = " ".join(f"{s} [{n}]" for n, _, s in chosen)
    by_source: dict[int, list[str]] = {}
    for n, _, s in chosen:
        by_source.setdefault(n, []).append(s)
    citations = tuple(
        _citation(n, hits[n - 1], " … ".join(q)) for n, q in sorted(by_source.items())
    )
    return Answer(question, text, "extractive", model, False, citations, tuple(hits))


def _citation(n: int, hit: Hit, quote: str) -> Citation:
    return Citation(n, hit.path, hit.page, hit.start_line, hit.end_line, quote, hit.chunk_id)
