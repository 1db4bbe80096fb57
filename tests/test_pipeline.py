"""The library verbs end to end with real files, real SQLite and FAISS, and the fake embedder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import ragkit
from ragkit.errors import (
    ConfigError,
    IndexMismatchError,
    IndexNotFoundError,
    QueryError,
    RagkitError,
)
from ragkit.store import protocol
from tests import fakes

PAGES = {
    "returns.md": "# Returns\n\nBikes may be returned within 30 days of purchase with the receipt.\n\n"
    "## Refunds\n\nRefunds go back to the original card within five business days.\n",
    "hours.txt": "The shop opens at nine in the morning and closes at six in the evening.\n"
    "On Sundays the shop is closed all day.\n",
    "notes/safety.md": "# Safety\n\nAlways wear a helmet. Check the brakes before every ride.\n",
}


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


@pytest.fixture
def settings(tmp_path):
    return ragkit.Settings.load(environ={}, index_dir=tmp_path / "indexes", embedder="bow")


def test_index_search_ask(tmp_path, settings):
    docs = write(tmp_path / "docs", PAGES)
    report = ragkit.index(docs, settings)
    assert sorted(report.added) == sorted(PAGES) and report.ok
    assert report.embedder == "bow:hash-256" and report.chunks_embedded == report.chunks > 0

    hits = ragkit.search("when does the shop close on sundays", settings)
    assert hits[0].path == "hours.txt" and hits[0].rank == 1
    assert hits[0].score >= hits[-1].score

    answer = ragkit.ask(
        "how many days to return bikes with the receipt", settings, abstain_below=0.1
    )
    assert answer.mode == "extractive" and not answer.abstained
    assert answer.citations[0].path == "returns.md"
    assert "30 days" in answer.text and "[1]" in answer.text


def test_search_filters_by_path_glob_before_ranking(tmp_path, settings):
    ragkit.index(write(tmp_path / "docs", PAGES), settings)
    hits = ragkit.search("shop closes", settings, path="notes/*")
    assert hits and {h.path for h in hits} == {"notes/safety.md"}


def test_unrelated_question_abstains(tmp_path, settings):
    ragkit.index(write(tmp_path / "docs", PAGES), settings)
    answer = ragkit.ask("quantum chromodynamics lattice gauge", settings)
    assert answer.abstained and answer.citations == ()


def test_reindex_unchanged_embeds_nothing(tmp_path, settings):
    docs = write(tmp_path / "docs", PAGES)
    ragkit.index(docs, settings)
    fakes.instances.clear()
    report = ragkit.index(docs, settings)
    assert report.unchanged == len(PAGES) and report.chunks_embedded == 0
    assert all(not e.calls for e in fakes.instances)


def test_search_uses_the_index_embedder_and_refuses_another(tmp_path, settings):
    ragkit.index(write(tmp_path / "docs", PAGES), settings)
    with pytest.raises(IndexMismatchError, match="--index NEW_NAME"):
        ragkit.search("helmet", settings.replace(embedder="local"))
    with pytest.raises(IndexMismatchError):
        ragkit.index(tmp_path / "docs", settings.replace(embedder="openai"))
    # With no embedder named, the index's own is used even when OpenAI is configured.
    hits = ragkit.search("helmet", settings.replace(embedder=None, openai_api_key="sk-test"))
    assert hits[0].path == "notes/safety.md"


def test_user_errors(tmp_path, settings):
    with pytest.raises(IndexNotFoundError):
        ragkit.search("x", settings)
    with pytest.raises(RagkitError, match="no such file"):
        ragkit.index(tmp_path / "missing", settings)
    ragkit.index(write(tmp_path / "docs", PAGES), settings)
    with pytest.raises(QueryError):
        ragkit.search("   ", settings)
    with pytest.raises(ConfigError, match="unknown embedder"):
        ragkit.index(tmp_path / "docs", settings.replace(index="other", embedder="nope"))


def test_index_refuses_a_different_folder(tmp_path, settings):
    ragkit.index(write(tmp_path / "docs", PAGES), settings)
    with pytest.raises(ConfigError, match="--index NEW_NAME"):
        ragkit.index(write(tmp_path / "other", {"x.txt": "hello there"}), settings)


def test_dry_run_reads_waiting_chunks_a_page_at_a_time(tmp_path, settings, monkeypatch, request):
    files = {
        **PAGES,
        "notes/copy.md": PAGES["notes/safety.md"],  # the same texts: sent (and counted) once
        "more.md": "".join(
            f"# Part {n}\n\nPart {n} of the manual, page {n}.\n\n" for n in range(6)
        ),
    }
    docs = write(tmp_path / "docs", files)
    conf = settings.replace(chunk_tokens=16, chunk_overlap=0)

    def killed(self, texts):
        raise RuntimeError("killed before the first vector was stored")

    with monkeypatch.context() as m:  # an interrupted first run: documents in, no vectors
        m.setattr(fakes.BagOfWordsEmbedder, "embed", killed)
        with pytest.raises(RuntimeError):
            ragkit.index(docs, conf)
    write(docs, {"hours.txt": "Open every day.\n"})  # its waiting chunks no run will embed
    whole = ragkit.index(docs, conf, dry_run=True)
    reads = request.getfixturevalue("pending_reads")  # spying from here on, not on "whole"
    monkeypatch.setattr(protocol, "PENDING_PAGE", 2)
    paged = ragkit.index(docs, conf, dry_run=True)
    assert len(reads) > 3 and all(limit == 2 for limit, _ in reads)
    assert dataclasses.replace(paged, seconds=0) == dataclasses.replace(whole, seconds=0)
    assert paged.changed == ("hours.txt",) and paged.unchanged == len(files) - 1
    real = ragkit.index(docs, conf)
    assert (paged.chunks_embedded, paged.tokens_embedded, paged.chunks) == (
        real.chunks_embedded,
        real.tokens_embedded,
        real.chunks,
    )
