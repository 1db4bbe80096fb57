"""Keyword (FTS5 BM25), hybrid (RRF) and MMR retrieval, and metadata filters, on real indexes."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pytest

import ragkit
from ragkit.errors import ConfigError, QueryError
from ragkit.filters import Filters, make_filters, parse_file_types
from ragkit.retriever import check_mode, mmr, rrf
from ragkit.store import Store, fts_match
from tests import fakes  # noqa: F401  (registers the "bow" embedder)
from tests.test_pipeline import PAGES, write


@pytest.fixture
def settings(tmp_path):
    return ragkit.Settings.load(environ={}, index_dir=tmp_path / "indexes", embedder="bow")


@pytest.fixture
def docs(tmp_path, settings):
    root = write(tmp_path / "docs", PAGES)
    ragkit.index(root, settings)
    return root


def _fts_rowids(settings) -> list[int]:
    with Store.open(settings.index_path) as store:
        # The FTS index's own record of which rows it holds (external content tables read the
        # chunks table for everything else, so only the shadow tables show what was indexed).
        return [
            r[0] for r in store.db.conn.execute("SELECT id FROM chunks_fts_docsize ORDER BY id")
        ]


def _chunk_ids(settings) -> list[int]:
    with Store.open(settings.index_path) as store:
        return [r[0] for r in store.db.conn.execute("SELECT id FROM chunks ORDER BY id")]


# -- keyword search and the FTS index ----------------------------------------------------------


def test_fts_follows_add_change_and_delete(tmp_path, settings, docs):
    assert _fts_rowids(settings) == _chunk_ids(settings)
    hits = ragkit.search("receipt", settings, mode="keyword")
    assert [h.path for h in hits] == ["returns.md"]

    # Change: the old word goes, a new one arrives; the FTS index has exactly the new rows.
    (docs / "returns.md").write_text(
        "# Returns\n\nBring the invoice and the bike back within a month.\n"
    )
    os.utime(docs / "returns.md", (1, 1))
    ragkit.index(docs, settings)
    assert ragkit.search("receipt", settings, mode="keyword") == []
    assert [h.path for h in ragkit.search("invoice", settings, mode="keyword")] == ["returns.md"]

    # Add.
    write(docs, {"new.txt": "Gift vouchers never expire."})
    ragkit.index(docs, settings)
    assert [h.path for h in ragkit.search("vouchers", settings, mode="keyword")] == ["new.txt"]

    # Delete.
    (docs / "new.txt").unlink()
    (docs / "returns.md").unlink()
    ragkit.index(docs, settings)
    assert ragkit.search("vouchers invoice", settings, mode="keyword") == []
    assert _fts_rowids(settings) == _chunk_ids(settings)
    with Store.open(settings.index_path) as store:
        store.db.conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")


def test_keyword_scores_are_bm25_best_first_and_stemmed(settings, docs):
    hits = ragkit.search("shop closing", settings, mode="keyword")  # "closing" ~ "closes"
    assert hits[0].path == "hours.txt"
    assert all(h.score > 0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # No cosine unless asked for (the query is not embedded), and then it is the dense mode's
    # score for the same chunk: a cosine floor asks for it.
    assert all(h.dense_score is None for h in hits)
    dense = {
        h.chunk_id: h.score for h in ragkit.search("shop closing", settings, mode="dense", k=20)
    }
    floored = ragkit.search("shop closing", settings, mode="keyword", min_score=-1.0)
    assert [h.chunk_id for h in floored] == [h.chunk_id for h in hits]
    for h in floored:
        assert h.dense_score == pytest.approx(dense[h.chunk_id], abs=1e-5)


@pytest.mark.parametrize(
    "query, expected",
    [
        ("the cat", '"cat"'),
        ("NOT helmet AND brakes", '"helmet" OR "brakes"'),
        ('say "hi" (now)', '"say" OR "hi" OR "now"'),
        ("col:value -neg ^start pre*", '"col" OR "value" OR "neg" OR "start" OR "pre"'),
        ("NEAR(a b, 2)", '"near" OR "b" OR "2"'),
        ("the", '"the"'),  # only stopwords: keep them rather than search for nothing
        ("!!! ... ---", ""),
        ("repeat repeat", '"repeat" OR "repeat"'),  # query term frequency counts in BM25
    ],
)
def test_fts_match_quotes_every_term(query, expected):
    assert fts_match(query) == expected


HOSTILE = [
    '"',
    '"unbalanced',
    "a OR",
    "OR AND NOT",
    "(((",
    ")",
    "*",
    "helmet*",
    "^helmet",
    "text:helmet",
    "heading:Safety",
    "-helmet",
    "helmet + brakes",
    "NEAR(helmet brakes, 1)",
    "'; DROP TABLE chunks; --",
    "{text heading}: helmet",
    "helmet\x00brakes",
    "😀 helmet ✓",
    "Ωmega café naïve",
    "helmet " * 500,
    "\\",
]


@pytest.mark.parametrize("query", HOSTILE)
@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
def test_hostile_queries_never_break_fts(settings, docs, query, mode):
    hits = ragkit.search(query, settings, mode=mode)
    if "helmet" in query.lower():
        assert hits and hits[0].path == "notes/safety.md"
    assert len(_chunk_ids(settings)) > 0  # nothing was dropped


def test_operator_words_are_searched_as_words(tmp_path, settings):
    root = write(
        tmp_path / "d", {"a.txt": "Stand near the door.", "b.txt": "A bicycle with gears."}
    )
    ragkit.index(root, settings)
    assert [h.path for h in ragkit.search("NEAR", settings, mode="keyword")] == ["a.txt"]
    # "with" is a stopword, so the only content word decides.
    assert [h.path for h in ragkit.search("with GEARS", settings, mode="keyword")] == ["b.txt"]


def test_hybrid_is_the_default_mode(settings, docs):
    assert ragkit.Settings.load(environ={}).mode == "hybrid"
    default = ragkit.search("helmet brakes ride", settings, k=10)
    hybrid = ragkit.search("helmet brakes ride", settings, mode="hybrid", k=10)
    assert [h.chunk_id for h in default] == [h.chunk_id for h in hybrid]
    assert ragkit.Settings.load(environ={"RAGKIT_MODE": "keyword"}).mode == "keyword"


def test_unknown_mode_is_refused(settings, docs):
    with pytest.raises(QueryError, match="dense, keyword, hybrid"):
        check_mode("fuzzy")  # the retriever's own check, for callers that skip Settings
    with pytest.raises(ConfigError, match="unknown mode"):
        ragkit.search("helmet", settings.replace(mode="fuzzy"))  # Settings are always checked
    with pytest.raises(ConfigError, match="unknown mode"):
        ragkit.Settings.load(environ={"RAGKIT_MODE": "fuzzy"})


# -- fusion and diversity ----------------------------------------------------------------------


def test_rrf_by_hand():
    fused = rrf([["a", "b", "c"], ["c", "a"]])
    assert [item for item, _ in fused] == ["a", "c", "b"]
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["b"] == pytest.approx(1 / 62)
    assert rrf([[1, 2]], k=0) == [(1, 1.0), (2, 0.5)]


def test_mmr_by_hand():
    vectors = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)  # 0 and 1 are duplicates
    relevance = np.array([1.0, 0.99, 0.5], dtype=np.float32)
    assert mmr(relevance, vectors, 3, lambda_=1.0) == [0, 1, 2]
    # lambda 0.5: after 0, candidate 1 scores 0.495 - 0.5 < candidate 2's 0.25 - 0.
    assert mmr(relevance, vectors, 3, lambda_=0.5) == [0, 2, 1]
    assert mmr(relevance, vectors, 5) == [0, 2, 1]


def test_hybrid_fuses_both_rankings_and_keeps_the_cosine(settings, docs):
    dense = ragkit.search("helmet brakes ride", settings, mode="dense", k=10)
    keyword = ragkit.search("helmet brakes ride", settings, mode="keyword", k=10)
    hybrid = ragkit.search("helmet brakes ride", settings, mode="hybrid", k=10)
    expected = rrf([[h.chunk_id for h in dense], [h.chunk_id for h in keyword]])
    assert [h.chunk_id for h in hybrid] == [i for i, _ in expected][:10]
    assert [h.score for h in hybrid] == pytest.approx([s for _, s in expected][:10])
    cosine = {h.chunk_id: h.score for h in dense}
    for h in hybrid:
        assert h.dense_score == pytest.approx(cosine[h.chunk_id], abs=1e-5)


def test_min_score_is_a_cosine_floor_in_every_mode(settings, docs):
    for mode in ("dense", "keyword", "hybrid"):
        hits = ragkit.search("shop sundays closed", settings, mode=mode, k=10, min_score=0.3)
        assert hits and all(h.dense_score >= 0.3 for h in hits), mode


def test_mmr_skips_near_duplicates(tmp_path, settings):
    same = "Chain wax keeps the drivetrain quiet and clean."
    root = write(
        tmp_path / "d",
        {
            "a.txt": same,
            "b.txt": same + " Really.",
            "c.txt": "The chain squeaks when dry, so oil it and wipe off the rest of the oil.",
        },
    )
    ragkit.index(root, settings)
    plain = ragkit.search("chain drivetrain quiet", settings, mode="dense", k=2)
    assert {h.path for h in plain} == {"a.txt", "b.txt"}
    diverse = ragkit.search(
        "chain drivetrain quiet", settings, mode="dense", k=2, mmr=True, mmr_lambda=0.3
    )
    assert diverse[0].path == plain[0].path and diverse[1].path == "c.txt"


def test_keyword_mode_answers_and_abstains_on_the_cosine(settings, docs):
    answer = ragkit.ask(
        "how many days to return bikes with the receipt",
        settings,
        mode="keyword",
        abstain_below=0.1,
    )
    assert not answer.abstained and answer.citations[0].path == "returns.md"
    # BM25 scores are large numbers; abstention must not be fooled by them.
    hits = ragkit.search("helmet quantum", settings, mode="keyword", min_score=-1.0)
    assert hits and hits[0].score > 0.3 > hits[0].dense_score
    assert ragkit.ask("helmet quantum", settings, mode="keyword", abstain_below=0.3).abstained
    assert ragkit.ask("helmet quantum", settings, mode="hybrid", abstain_below=0.3).abstained


# -- filters -----------------------------------------------------------------------------------

FILES = {
    "guide/wheels.md": "# Wheels\n\nTrue the wheel spokes.\n\n## Tyres\n\nPump the tyres to the pressure on the sidewall.\n",
    "guide/brakes.md": "# Brakes\n\nAdjust the brake pads so they meet the rim.\n",
    "notes/tyres.txt": "Tyres wear out; replace tyres when the tread is gone.\n",
    "old/tyres.rst": "Tyres\n=====\n\nOld advice: tyres were pumped by hand.\n",
}


def _stamp(root: Path, rel: str, when: str) -> None:
    t = dt.datetime.fromisoformat(when).timestamp()
    os.utime(root / rel, (t, t))


@pytest.fixture
def filtered(tmp_path, settings):
    root = write(tmp_path / "f", FILES)
    _stamp(root, "guide/wheels.md", "2024-03-10")
    _stamp(root, "guide/brakes.md", "2024-06-01")
    _stamp(root, "notes/tyres.txt", "2024-07-15T12:00")
    _stamp(root, "old/tyres.rst", "2019-01-01")
    ragkit.index(root, settings)
    return settings


@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid"])
@pytest.mark.parametrize(
    "filter_settings, paths",
    [
        ({"file_type": "markdown"}, {"guide/wheels.md", "guide/brakes.md"}),
        ({"file_type": ".TXT"}, {"notes/tyres.txt"}),
        ({"file_type": "rst,txt"}, {"notes/tyres.txt", "old/tyres.rst"}),
        ({"modified_after": "2024-06-01"}, {"guide/brakes.md", "notes/tyres.txt"}),
        ({"modified_before": "2024-06-01"}, {"guide/wheels.md", "old/tyres.rst"}),
        (
            {"modified_after": "2024-01-01", "modified_before": "2024-07-01"},
            {"guide/wheels.md", "guide/brakes.md"},
        ),
        ({"heading": "tyres"}, {"guide/wheels.md", "old/tyres.rst"}),
        ({"path": "guide/*", "heading": "TYRES"}, {"guide/wheels.md"}),
        ({"path": "guide/*", "file_type": "pdf"}, set()),
    ],
)
def test_filters_restrict_every_mode_before_ranking(filtered, mode, filter_settings, paths):
    # k=10 covers every chunk: the hit set is exactly the chunks passing the filter.
    hits = ragkit.search("tyres pressure brake pads", filtered, mode=mode, k=10, **filter_settings)
    found = {h.path for h in hits}
    if mode == "dense":
        assert found == paths
    else:  # keyword and hybrid list only chunks with a query word; all of these have one
        assert found <= paths and (found or not paths)


@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid"])
def test_a_filter_never_leaves_fewer_than_k_hits(filtered, mode):
    # Without the filter the old rst file ranks last for this query; with it, it is the hit.
    query = "pump the tyres to the pressure on the sidewall"
    unfiltered = ragkit.search(query, filtered, mode=mode, k=1)
    assert unfiltered[0].path != "old/tyres.rst"
    hits = ragkit.search(query, filtered, mode=mode, k=1, modified_before="2020-01-01")
    assert [h.path for h in hits] == ["old/tyres.rst"]


def test_heading_filter_matches_the_heading_path(filtered):
    hits = ragkit.search("pump pressure", filtered, heading="wheels > tyres", k=10)
    assert hits and all(h.heading == "Wheels > Tyres" for h in hits)


def test_bad_filter_values_are_refused():
    with pytest.raises(ConfigError, match="ISO date"):
        make_filters(modified_after="last tuesday")
    with pytest.raises(ConfigError, match="nothing could match"):
        make_filters(modified_after="2024-05-01", modified_before="2024-01-01")
    with pytest.raises(ConfigError, match="bad file type"):
        parse_file_types("m%d")
    assert parse_file_types(" PDF, md ,.Md,") == ("pdf", ".md")
    assert make_filters(modified_after="2024-01-01T00:00:00Z").modified_after == 1704067200.0
    assert not Filters().active and make_filters(heading="  ").heading is None
