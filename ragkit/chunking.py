"""Token-aware splitting of a Document into Chunks that keep their exact source spans."""

from __future__ import annotations

import logging
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from ragkit.documents import Document, Heading

__all__ = ["Chunk", "TokenCounter", "chunk_document"]

log = logging.getLogger(__name__)

TokenCounter = Callable[[Sequence[str]], list[int]]
"""Token counts of a batch of texts in the embedder's tokenizer, special tokens excluded."""


@dataclass(frozen=True)
class Chunk:
    """A span of a document small enough to embed, with where it came from."""

    ordinal: int  # 0-based position within the document
    text: str  # == doc.text[start_char:end_char], exactly
    start_char: int
    end_char: int
    # 1-based, inclusive: lines of the source file (HTML too); for PDFs, of the page's text
    start_line: int
    end_line: int
    page: int | None  # PDF page number, else None
    heading: str  # heading path, e.g. "Returns > Refunds > Store credit"; "" when none
    tokens: int  # count_tokens(text), measured on this exact text
    page_label: str | None = None  # the page's printed label ("xii") when it differs from page


# How strong the boundary just before a unit is; a chunk prefers to end at the strongest one.
_CHAR, _WORD, _SENTENCE, _PARAGRAPH = 0, 1, 2, 3

# Blank line(s): the separator is all the whitespace between the two paragraphs.
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
# Whitespace after sentence-ending punctuation (closing quotes/brackets stay with the sentence);
# CJK full stops need no space after them; a single line break inside a paragraph (lists, code,
# verse) is as good a place to cut as a sentence end. Only the captured group is the separator.
_SENTENCE_BREAK = re.compile(
    r"[.!?\u2026][\"'\u201d\u2019)\]]*(\s+)|[\u3002\uff01\uff1f][\"'\u201d\u2019)\]]*(\s*)|(\s*\n\s*)"
)
_WORD_BREAK = re.compile(r"\s+")
_SETEXT_UNDERLINE = re.compile(r"[=-]+\s*")

# A chunk may end early at a stronger boundary (paragraph over sentence over word) as long as
# its new text still fills at least this share of the room it had.
_MIN_FILL = 0.5

# A piece longer than this many characters per allowed token is over the limit in any real
# tokenizer, so it is split without being counted: counting it would only cost time.
_SURELY_OVER = 16


@dataclass(frozen=True)
class _Section:
    """A stretch of text chunked on its own: one heading section, clipped to one PDF page."""

    start: int
    end: int
    heading: str
    page: int | None
    line_base: int  # offset that line 1 starts at: 0, or the page's start for PDFs
    page_label: str | None = None


@dataclass(frozen=True)
class _Unit:
    """The smallest piece packing works with; its token count was measured on its own text."""

    start: int
    end: int
    level: int  # strength of the boundary just before this unit
    tokens: int


def chunk_document(
    doc: Document, count_tokens: TokenCounter, *, max_tokens: int, overlap: int = 0
) -> list[Chunk]:
    """Split doc into chunks of at most max_tokens tokens, cut at the most natural boundaries."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    if overlap < 0 or 2 * overlap >= max_tokens:
        raise ValueError(
            f"overlap must be at least 0 and less than half of max_tokens ({max_tokens}), "
            f"got {overlap}"
        )
    text = doc.text
    sections = _sections(doc)
    units = _units(text, sections, count_tokens, max_tokens)
    spans = _verified_spans(text, units, count_tokens, max_tokens, overlap)

    newlines = [m.start() for m in re.finditer("\n", text)]
    mapped = [offset for offset, _ in doc.line_map]
    heads = sorted(doc.headings, key=lambda h: h.start)
    head_starts, paths = [h.start for h in heads], _heading_paths(heads)
    chunks: list[Chunk] = []
    for ordinal, (si, a, b, tokens) in enumerate(spans):
        section = sections[si]
        start, end = units[si][a].start, units[si][b - 1].end
        # end - 1 is the last character, never a newline: chunks end on non-whitespace.
        if mapped:  # HTML: the lines of the file the text came from
            start_line = doc.line_map[max(bisect_right(mapped, start) - 1, 0)][1]
            end_line = doc.line_map[max(bisect_right(mapped, end - 1) - 1, 0)][1]
        else:
            base = bisect_left(newlines, section.line_base)
            start_line = bisect_left(newlines, start) - base + 1
            end_line = bisect_left(newlines, end - 1) - base + 1
        # The path in force at the chunk's last character: a bare heading merged into its
        # subsection but cut off from it (too many tokens) keeps its own path.
        here = bisect_right(head_starts, end - 1) - 1
        chunks.append(
            Chunk(
                ordinal=ordinal,
                text=text[start:end],
                start_char=start,
                end_char=end,
                start_line=start_line,
                end_line=end_line,
                page=section.page,
                heading=paths[here] if here >= 0 else "",
                tokens=tokens,
                page_label=section.page_label,
            )
        )
    log.debug("%s: %d chunks from %d sections", doc.path, len(chunks), len(sections))
    return chunks


def _sections(doc: Document) -> list[_Section]:
    """Cut the text at every PDF page and every heading; text outside every page is dropped."""
    text = doc.text
    heads = sorted(doc.headings, key=lambda h: h.start)
    starts = [h.start for h in heads]
    paths = _heading_paths(heads)
    regions: list[tuple[int, int, int | None]]
    labels = {p.number: p.label for p in doc.pages}
    if doc.pages:
        regions = [(p.start, p.end, p.number) for p in sorted(doc.pages, key=lambda p: p.start)]
    else:
        regions = [(0, len(text), None)]

    out: list[_Section] = []
    for region_start, region_end, number in regions:
        region_start, region_end = max(0, region_start), min(len(text), region_end)
        line_base = region_start if number is not None else 0
        inner = starts[bisect_right(starts, region_start) : bisect_left(starts, region_end)]
        cuts = [region_start, *inner, region_end]
        merged_start: int | None = None
        for a, b in pairwise(cuts):
            if a >= b:
                continue
            here = bisect_right(starts, a) - 1
            # A heading with nothing under it but a deeper heading joins that subsection: the
            # subsection's path names it, so the merged chunk's heading stays honest.
            if here >= 0 and starts[here] == a and b < region_end and _is_bare_heading(text, a, b):
                below = bisect_right(starts, b) - 1
                if heads[below].level > heads[here].level:
                    merged_start = a if merged_start is None else merged_start
                    continue
            path = paths[here] if here >= 0 else ""
            start = a if merged_start is None else merged_start
            label = labels.get(number) if number is not None else None
            out.append(_Section(start, b, path, number, line_base, label))
            merged_start = None
    return out


def _heading_paths(heads: Sequence[Heading]) -> list[str]:
    """The nested path in force just after each heading, e.g. "Returns > Refunds"."""
    stack: list[Heading] = []
    paths: list[str] = []
    for head in heads:
        while stack and stack[-1].level >= head.level:
            stack.pop()
        stack.append(head)
        paths.append(" > ".join(t for t in (h.title.strip() for h in stack) if t))
    return paths


def _is_bare_heading(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] is one heading line (or a setext heading) and nothing else."""
    newline = text.find("\n", start, end)
    if newline < 0:
        return True
    rest = text[newline + 1 : end].strip()
    return not rest or _SETEXT_UNDERLINE.fullmatch(rest) is not None


def _units(
    text: str, sections: Sequence[_Section], count_tokens: TokenCounter, max_tokens: int
) -> list[list[_Unit]]:
    """Split each section into units of at most max_tokens: paragraphs, else sentences, etc.

    Every round counts all new pieces of the whole document in one batch, and only pieces still
    too long go down a level, so ordinary prose is counted once, paragraph by paragraph.
    """
    # (section, start, end, level, tokens); tokens -1 means not counted (yet).
    pieces: list[tuple[int, int, int, int, int]] = [
        (si, s, e, _PARAGRAPH, -1)
        for si, section in enumerate(sections)
        for s, e in _split(text, section.start, section.end, _PARAGRAPH_BREAK)
    ]
    surely_over = _SURELY_OVER * max_tokens
    finer = [(_SENTENCE_BREAK, _SENTENCE), (_WORD_BREAK, _WORD)]
    depth = 0
    while True:
        todo = [i for i, p in enumerate(pieces) if p[4] < 0 and p[2] - p[1] <= surely_over]
        counts = _count(count_tokens, [text[pieces[i][1] : pieces[i][2]] for i in todo])
        for i, tokens in zip(todo, counts, strict=False):
            si, s, e, level, _ = pieces[i]
            pieces[i] = (si, s, e, level, tokens)
        if all(0 <= p[4] <= max_tokens for p in pieces):
            break
        split: list[tuple[int, int, int, int, int]] = []
        for piece in pieces:
            si, s, e, level, tokens = piece
            if 0 <= tokens <= max_tokens:
                split.append(piece)
                continue
            if depth < len(finer):
                pattern, child_level = finer[depth]
                parts = _split(text, s, e, pattern)
            else:
                if e - s == 1:
                    raise ValueError(
                        f"max_tokens={max_tokens} is too small: the single character "
                        f"{text[s]!r} counts as {tokens} tokens"
                    )
                parts, child_level = _cut(s, e, tokens, max_tokens), _CHAR
            if parts == [(s, e)]:
                split.append(piece)  # nothing to split at this level; keep the count
                continue
            for k, (ps, pe) in enumerate(parts):
                split.append((si, ps, pe, level if k == 0 else child_level, -1))
        pieces = split
        depth += 1

    units: list[list[_Unit]] = [[] for _ in sections]
    for si, s, e, level, tokens in pieces:
        units[si].append(_Unit(s, e, level, tokens))
    return units


def _split(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    """The non-blank pieces of text[start:end] between pattern's separators, stripped."""
    out: list[tuple[int, int]] = []
    pos = start
    for m in pattern.finditer(text, start, end):
        sep_start, sep_end = m.span(m.lastindex or 0)
        _append_stripped(out, text, pos, sep_start)
        pos = sep_end
    _append_stripped(out, text, pos, end)
    return out


def _append_stripped(out: list[tuple[int, int]], text: str, start: int, end: int) -> None:
    """Append text[start:end] without surrounding whitespace, unless nothing is left."""
    piece = text[start:end]
    kept = piece.strip()
    if kept:
        lead = len(piece) - len(piece.lstrip())
        out.append((start + lead, start + lead + len(kept)))


def _cut(start: int, end: int, tokens: int, max_tokens: int) -> list[tuple[int, int]]:
    """Cut an unbreakable run (a base64 blob, a long URL) into pieces of about a quarter chunk.

    tokens is the run's count, or -1 when it was too long to be worth counting. Small pieces
    almost never overshoot (which would cost another counting round), and packing glues them
    back together into full chunks.
    """
    if tokens < 0:
        size = max(1, max_tokens // 4)  # fits unless characters average over one token each
    else:
        size = max(1, (end - start) * max_tokens // (4 * tokens))
    return [(s, min(s + size, end)) for s in range(start, end, size)]


def _count(count_tokens: TokenCounter, texts: Sequence[str]) -> list[int]:
    """count_tokens(texts), skipping the call for an empty batch and checking the answer."""
    if not texts:
        return []
    counts = list(count_tokens(texts))
    if len(counts) != len(texts):
        raise ValueError(f"count_tokens returned {len(counts)} counts for {len(texts)} texts")
    return counts


def _verified_spans(
    text: str,
    units: Sequence[Sequence[_Unit]],
    count_tokens: TokenCounter,
    max_tokens: int,
    overlap: int,
) -> list[tuple[int, int, int, int]]:
    """Pack units into chunks and count each chunk's real text, repacking any that is over.

    Summed unit counts are only an estimate of a chunk's count (tokenizers are not additive), so
    the limit is enforced on the measured count. Returns (section, first unit, end unit, tokens)
    in document order.
    """
    # (sort key, section, first unit, end unit); a repacked chunk's parts extend its key.
    pending: list[tuple[tuple[int, ...], int, int, int]] = [
        ((si, ci), si, a, b)
        for si, section_units in enumerate(units)
        for ci, (a, b) in enumerate(
            _pack(
                [u.tokens for u in section_units],
                [u.level for u in section_units],
                max_tokens,
                overlap,
            )
        )
    ]
    done: list[tuple[tuple[int, ...], int, int, int, int]] = []
    rounds = 0
    while pending:
        rounds += 1
        # A one-unit chunk's text was already counted as that unit.
        multi = [p for p in pending if p[3] - p[2] > 1]
        counts = iter(
            _count(
                count_tokens,
                [text[units[si][a].start : units[si][b - 1].end] for _, si, a, b in multi],
            )
        )
        retry: list[tuple[tuple[int, ...], int, int, int]] = []
        for key, si, a, b in pending:
            tokens = units[si][a].tokens if b - a == 1 else next(counts)
            if tokens <= max_tokens:
                done.append((key, si, a, b, tokens))
                continue
            if b - a == 1:
                raise ValueError("count_tokens gave two different counts for the same text")
            section_units = units[si][a:b]
            estimate = sum(u.tokens for u in section_units)
            # Aim below the estimate by the factor the estimate was off by.
            budget = max(1, min(estimate - 1, estimate * max_tokens // tokens))
            parts = _pack(
                [u.tokens for u in section_units],
                [u.level for u in section_units],
                budget,
                overlap * budget // max_tokens,
            )
            if len(parts) == 1:
                # Zero-token units can still fit one chunk; halve so every round makes progress.
                parts = [(0, (b - a) // 2), ((b - a) // 2, b - a)]
            retry.extend((key + (k,), si, a + x, a + y) for k, (x, y) in enumerate(parts))
        pending = retry
    if rounds > 1:
        log.debug("chunk counts needed %d rounds to fit under %d tokens", rounds, max_tokens)
    done.sort(key=lambda d: d[0])
    return [(si, a, b, tokens) for _, si, a, b, tokens in done]


def _pack(
    tokens: Sequence[int], levels: Sequence[int], budget: int, overlap: int
) -> list[tuple[int, int]]:
    """Group consecutive units into [first, end) ranges whose summed tokens fit budget.

    Each range takes as many units as fit, then backs off to the strongest boundary that still
    leaves it at least half full of new text. The next range starts about `overlap` tokens
    before the previous one ends, at a sentence or word start where possible.
    """
    n = len(tokens)
    prefix = [0]
    for t in tokens:
        prefix.append(prefix[-1] + t)
    ranges: list[tuple[int, int]] = []
    start = new = 0  # range start (overlap included), first unit not yet in any range
    while new < n:
        # Overlap gives way when it leaves no room for the next unit.
        while start < new and prefix[new + 1] - prefix[start] > budget:
            start += 1
        stop = max(new + 1, bisect_right(prefix, prefix[start] + budget) - 1)
        end = stop
        if stop < n:
            room = budget - (prefix[new] - prefix[start])
            best = -1
            for e in range(stop, new, -1):
                if prefix[e] - prefix[new] < room * _MIN_FILL:
                    break
                if levels[e] > best:
                    best, end = levels[e], e
        ranges.append((start, end))
        new = end
        if new < n:
            start = _overlap_start(prefix, levels, start, end, overlap)
    return ranges


def _overlap_start(
    prefix: Sequence[int], levels: Sequence[int], start: int, end: int, overlap: int
) -> int:
    """Where the range after [start, end) begins, so they share about overlap tokens."""
    if overlap == 0:
        return end
    any_start = word_start = sentence_start = end
    k = end - 1
    while k > start and prefix[end] - prefix[k] <= overlap:
        any_start = k
        if levels[k] >= _WORD:
            word_start = k
        if levels[k] >= _SENTENCE and 2 * (prefix[end] - prefix[k]) >= overlap:
            sentence_start = k
        k -= 1
    if sentence_start < end:
        return sentence_start
    return word_start if word_start < end else any_start
