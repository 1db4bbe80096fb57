"""The offline answerer: which sentences are quoted, on small passages, with the fake embedder."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from numpy.typing import NDArray

import ragkit
from ragkit.answerer import Answer, Citation
from ragkit.conversation import merge_hits
from ragkit.errors import ConfigError, IndexNotFoundError, QueryError, RagkitError
from ragkit.extractive import _sentences, content_terms, extractive_answer, followup_hits
from ragkit.retriever import Hit
from tests.test_pipeline import PAGES, write


def hit(text: str, n: int = 1, heading: str = "", path: str = "a.rst") -> Hit:
    return Hit(n, 0.9, n, path, None, 1, text.count("\n") + 1, 0, len(text), heading, text, 0.9)


RST = """\
#########################
E-bike Battery Handling
#########################

Lithium-ion batteries hold a lot of energy in a small space.

Charging bay
============

Batteries are charged only in the charging bay, on the steel shelving.
"""


def test_rst_titles_and_underlines_are_not_sentences():
    assert _sentences(RST, "E-bike Battery Handling > Charging bay") == [
        "Lithium-ion batteries hold a lot of energy in a small space.",
        "Batteries are charged only in the charging bay, on the steel shelving.",
    ]


def test_markdown_headings_permalinks_and_questions_are_not_sentences():
    text = (
        "## Shop Hours and Locations\n"
        "How do I program using threads?¶\n\n"
        "Which shop opens on Sundays for repairs?\n"
        "The Harbor Street shop opens at nine every day of the week.\n"
    )
    assert _sentences(text, "Shop Hours and Locations") == [
        "The Harbor Street shop opens at nine every day of the week."
    ]


def test_adornment_runs_inside_flattened_text_are_cut():
    # A chunk whose line breaks were lost (or an overline glued to its title).
    text = "Battery storage rules apply ######################### to every shop and van."
    assert _sentences(text) == ["Battery storage rules apply to every shop and van."]


def test_a_heading_line_glued_to_its_paragraph_is_dropped_by_its_heading_path():
    text = "Returns policy\nBikes may be returned within 30 days with the receipt."
    assert _sentences(text, "Returns policy") == [
        "Bikes may be returned within 30 days with the receipt."
    ]


def test_content_terms_drop_stop_words_and_stem():
    assert content_terms("How many days can bikes be returned?") == {"days", "bikes", "retur"}
    assert content_terms("the returns") == content_terms("returned")


class SameVector:
    """An embedder that finds every text equally similar, so only the term score can decide."""

    name, model, dimension, max_tokens = "same", "one", 4, 256

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return np.full((len(texts), 4), 0.5, dtype=np.float32)


def test_sentences_with_the_question_terms_are_preferred():
    text = (
        "The frame is long and light.\n"
        "A long frame suits a tall rider.\n"
        "The warranty on frames lasts a lifetime.\n"
    )
    answer = extractive_answer(
        "how long is the frame warranty?", [hit(text)], SameVector(), abstain_below=0.0,
        max_sentences=1,
    )  # fmt: skip
    # All three hold "frame"; "long" is in two, "warranty" (the rarest asked-for term) in one.
    assert answer.text == "The warranty on frames lasts a lifetime. [1]"


def test_followup_hits_keep_only_passages_with_the_question_terms():
    hours = hit("On Sundays the shop is closed all day.", 1, path="hours.txt")
    safety = hit("Always wear a helmet on every ride.", 2, path="safety.md")
    assert followup_hits("and on sundays?", [hours, safety]) == [hours]
    assert followup_hits("what about lattice chromodynamics?", [hours, safety]) == []


def test_merge_hits_breaks_fused_score_ties_by_cosine():
    a = Hit(1, 0.0328, 7, "h.txt", None, 1, 1, 0, 1, "", "t", 0.09)
    b = Hit(1, 0.0328, 7, "h.txt", None, 1, 1, 0, 1, "", "t", 0.39)
    assert merge_hits([[a], [b]], k=1)[0].dense_score == 0.39
    assert merge_hits([[b], [a]], k=1)[0].dense_score == 0.39


def test_str_of_an_answer_is_its_text_and_sources():
    citation = Citation(1, "returns.md", 2, 3, 5, "Bikes may be returned.", 9)
    answer = Answer("q?", "Bikes may be returned. [1]", "extractive", "m", False, (citation,))
    assert str(answer) == "Bikes may be returned. [1]\n\n[1] returns.md (page 2, lines 3–5)"
    abstained = Answer("q?", "The indexed documents do not answer this.", "llm", "m", True, ())
    assert str(abstained) == "The indexed documents do not answer this."


def test_errors_are_also_the_builtins_python_callers_catch(tmp_path):
    settings = ragkit.Settings.load(environ={}, index_dir=tmp_path / "none", embedder="bow")
    with pytest.raises(FileNotFoundError) as not_found:
        ragkit.search("anything", settings)
    assert isinstance(not_found.value, IndexNotFoundError)
    assert str(not_found.value).startswith("no index at")

    ragkit.index(write(tmp_path / "docs", PAGES), settings)
    with pytest.raises(ValueError) as bad_query:
        ragkit.search("   ", settings)
    assert isinstance(bad_query.value, QueryError) and isinstance(bad_query.value, RagkitError)
    with pytest.raises(ValueError) as bad_setting:
        ragkit.Settings.load(environ={}, k=0)
    assert isinstance(bad_setting.value, ConfigError)


def test_the_answer_quality_bench_finds_gold_sentences_by_span():
    from bench.extractive_quality import gold_spans, overlaps, quoted_spans

    title, abstract = "A title.", "First finding here. Second  finding, the evidence. Third one."
    doc = f"{title} {abstract}"
    (gold,) = gold_spans(title, abstract, [1])
    assert " ".join(doc.split())[gold[0] : gold[1]] == "Second finding, the evidence."
    quoted = quoted_spans(doc, "First finding here. … Second finding, the evidence.")
    assert [overlaps(q, gold) for q in quoted] == [False, True]
    assert gold_spans(title, abstract, [7]) == []  # an index past the split is dropped


def test_a_short_line_standing_alone_is_a_title_but_a_list_item_is_not():
    text = (
        "Shop Hours and Locations\n\n"
        "The Harbor Street shop opens at nine every day.\n\n"
        "- Helmet rental is free with every bike hire\n"
        "- Lights are lent out after dark for free\n"
    )
    assert _sentences(text) == [
        "The Harbor Street shop opens at nine every day.",
        "Helmet rental is free with every bike hire",
        "Lights are lent out after dark for free",
    ]
