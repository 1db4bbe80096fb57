"""Extractive answers, offline: the retrieved sentences that best answer the question, cited.

No chat model: the answer is made of sentences quoted from the retrieved passages, each followed
by the [n] of its source, so every word of it can be checked against the documents.
"""

from __future__ import annotations

import math
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
# reStructuredText section adornments and Markdown rules/setext underlines: a line of one
# repeated punctuation character. Also such a run inside text (where a chunk's line breaks were
# lost), which no quote should carry.
_ADORNMENT_LINE = re.compile(r"^[ \t]*([=\-~^#*+`:'\"_.<>])\1{2,}[ \t]*$", re.MULTILINE)
_ADORNMENT_RUN = re.compile(r"\s*([=\-~^#*+`:_<>])\1{3,}\s*")
_PERMALINK = re.compile(r"[ \t]*[¶§][ \t]*$", re.MULTILINE)  # Sphinx/MkDocs heading anchors
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# Words that say nothing about what a question is about: they neither make a sentence an answer
# nor a follow-up question about something new.
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me might more most must my myself no nor not now of off on once only or other
    our ours ourselves out over own same shall she should so some such than that the their theirs
    them themselves then there these they this those through to too under until up very was we
    were what when where which while who whom whose why will with would you your yours yourself
    yourselves tell know please give get got many much one two use used using way ways""".split()
)


def content_terms(text: str) -> set[str]:
    """The words of ``text`` that carry its topic: lower-cased, stop words dropped, crudely stemmed.

    Stemming keeps a word's first five letters, so "returned", "returns" and "return" match.
    """
    return {
        w[:5] for w in (m.lower() for m in _WORD.findall(text)) if w not in STOPWORDS and len(w) > 1
    }


def _is_heading(line: str, following: str, headings: set[str]) -> bool:
    """True for a line that titles a section rather than saying something."""
    bare = line.strip()
    if not bare:
        return False
    if bare.startswith("#") or bare.endswith(("¶", "§")):
        return True
    if _ADORNMENT_LINE.fullmatch(following):  # reST / setext underline below it
        return True
    name = _PERMALINK.sub("", bare).strip().lower()
    return name in headings and not name.endswith((".", "!", "?", ":"))


def _units(text: str, heading: str = "") -> list[str]:
    """The passage with headings and adornment lines removed, split into paragraphs and items."""
    headings = {h.strip().lower() for h in re.split(r"\s*>\s*", heading) if h.strip()}
    lines = text.split("\n")
    kept: list[str] = []
    for i, line in enumerate(lines):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if _ADORNMENT_LINE.fullmatch(line) or _is_heading(line, following, headings):
            kept.append("")  # a heading ends the paragraph before it
            continue
        kept.append(line)
    return [u for u in _UNIT_START.split("\n".join(kept)) if not _is_title(u)]


def _is_title(unit: str) -> bool:
    """A paragraph of one short line with no closing punctuation: a title (HTML headings, PDF
    section names) rather than a sentence. List items and table rows are never titles."""
    lines = [line for line in unit.split("\n") if line.strip()]
    if len(lines) != 1:
        return False
    bare = lines[0].strip()
    return (
        len(bare.split()) <= 10
        and not bare.endswith((".", "!", "?", ":", ";", ")", '"', "'", "”"))
        and not re.match(r"(?:[-*+•|>]|\d+[.)])\s", bare)
    )


def _sentences(text: str, heading: str = "") -> list[str]:
    """Split a passage into the sentences that could answer something.

    List items and paragraphs are separate units; headings, adornment runs and questions are
    left out (a question restates what is asked; it does not answer it).
    """
    out = []
    for unit in _units(text, heading):
        flat = _ADORNMENT_RUN.sub(" ", " ".join(unit.split()))
        for part in _SENTENCE_END.split(flat.strip()):
            # List bullets, heading marks and table pipes are not part of the quote.
            sentence = re.sub(r"^(?:[-*+•|#>]+|\d+[.)])\s*", "", part.strip()).strip(" |")
            sentence = _PERMALINK.sub("", sentence)
            if len(sentence.split()) >= 4 and not sentence.endswith("?"):
                out.append(sentence)
    return out


def _term_weights(sentences: Sequence[str]) -> tuple[list[set[str]], dict[str, float]]:
    """Each sentence's terms, and each term's rarity among them (inverse sentence frequency)."""
    terms = [content_terms(s) for s in sentences]
    count: dict[str, int] = {}
    for ts in terms:
        for t in ts:
            count[t] = count.get(t, 0) + 1
    total = len(sentences)
    return terms, {t: math.log(1 + total / c) for t, c in count.items()}


# How much a sentence that holds all of the question's (rarity-weighted) terms gains over one
# holding none, in cosine units: enough to lift a sentence that names what was asked over a
# generic one about the same topic, not enough to beat a clearly closer paraphrase.
TERM_WEIGHT = 0.2


def extractive_answer(
    question: str,
    hits: Sequence[Hit],
    embedder: Embedder,
    *,
    abstain_below: float,
    max_sentences: int = 3,
) -> Answer:
    """The retrieved sentences that best answer the question, each followed by its [n].

    A sentence scores by its cosine similarity to the question, plus the share of the question's
    content terms it contains (rarer terms count more), plus a little for its source's rank.
    """
    model = f"{embedder.name}:{embedder.model}"
    if should_abstain(hits, abstain_below):
        return abstention(question, "extractive", model, hits)
    candidates: list[tuple[int, int, str]] = []  # (source n, position, sentence)
    for n, hit in enumerate(hits, start=1):
        for pos, sentence in enumerate(_sentences(hit.text, hit.heading)):
            candidates.append((n, pos, sentence))
    if not candidates:
        candidates = [(n, 0, " ".join(h.text.split())) for n, h in enumerate(hits, start=1)]
    vectors = embedder.embed([question] + [s for _, _, s in candidates])
    scores = vectors[1:] @ vectors[0]
    wanted = content_terms(question)
    terms, rarity = _term_weights([s for _, _, s in candidates])
    whole = sum(rarity.get(t, math.log(1 + len(candidates))) for t in wanted)
    coverage = np.array(
        [sum(rarity[t] for t in ts & wanted) / whole if whole else 0.0 for ts in terms],
        dtype=np.float32,
    )
    # A source's retrieval rank counts too: a sentence from hit 1 beats an equally similar one
    # from hit 5, since the whole passage matched better.
    rank_bonus = np.array([0.02 * (len(hits) - n) for n, _, _ in candidates], dtype=np.float32)
    order = np.argsort(-(scores + TERM_WEIGHT * coverage + rank_bonus), kind="stable")
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


def followup_hits(question: str, hits: Sequence[Hit]) -> list[Hit]:
    """Of the hits a follow-up query found, those that hold one of the question's own terms.

    Retrieving "When does the shop close? And on Sundays?" finds the opening-hours passage;
    keeping only hits that mention "sundays" keeps it, while after a change of topic ("what
    about lattice QCD?") the earlier topic's passages name none of the new terms and drop out,
    so the answer still abstains when the documents do not cover the new question.
    """
    wanted = content_terms(question)
    return [h for h in hits if wanted & content_terms(h.text)]


def _citation(n: int, hit: Hit, quote: str) -> Citation:
    return Citation(n, hit.path, hit.page, hit.start_line, hit.end_line, quote, hit.chunk_id)
