"""Keyword search from memory (ragkit/store/bm25.py): FTS5's rankings, exactly, and kept current."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from pathlib import Path

import pytest

import ragkit
from ragkit.filters import Filters
from ragkit.store import keyword
from ragkit.store.bm25 import KeywordMemory
from ragkit.store.sqlite import Store
from tests import fakes  # noqa: F401  (registers the "bow" embedder)
from tests.test_pipeline import write

SCIFACT = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "scifact"
VOCAB = (
    "run running runs runner brake brakes braking tyre tyres pressure battery batteries charge"
    " charging café cafe naïve über gear gears geared chain the a of and is to in helmet light"
    " lights rain rainy commute commuting route routes saddle saddles pump pumped valve 42 3mm"
).split()


def _corpus(seed: int = 7, files: int = 60) -> dict[str, str]:
    rng = random.Random(seed)
    out = {}
    for n in range(files):
        folder = "notes" if n % 3 else "guides"
        sections = []
        for s in range(rng.randint(1, 3)):
            heading = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 3)))
            body = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(3, 60)))
            sections.append(f"## {heading} {s}\n\n{body.capitalize()}.\n")
        out[f"{folder}/f{n}.md"] = "\n".join(sections)
    return out


def _queries(seed: int = 11, count: int = 120) -> list[str]:
    rng = random.Random(seed)
    extra = ["absentword", "RUNNING", "Brakes!", "the", "a the of", "café's", "(gear)", "OR"]
    pool = VOCAB + extra
    return [" ".join(rng.choice(pool) for _ in range(rng.randint(1, 14))) for _ in range(count)]


@pytest.fixture
def settings(tmp_path):
    return ragkit.Settings.load(environ={}, index_dir=tmp_path / "indexes", embedder="bow")


@pytest.fixture
def docs(tmp_path, settings):
    root = write(tmp_path / "docs", _corpus())
    ragkit.index(root, settings)
    return root


def _ready(memory: KeywordMemory, store: Store) -> None:
    """Ask twice (the second keyword ranking starts the build), then wait for it."""
    for _ in range(2):
        memory.search(store.db.conn, "brake", 5, generation=store.manifest.faiss_generation)
    assert memory.wait(60)


def _traced(idx: ragkit.Index) -> list[str]:
    statements: list[str] = []
    idx._store().db.conn.set_trace_callback(statements.append)
    return statements


def _fts(settings, query: str, k: int, filters: Filters | None = None) -> list[tuple[int, float]]:
    with Store.open(settings.index_path) as store:
        return keyword.keyword_search(store.db.conn, query, k, filters=filters)


def test_memory_ranks_exactly_as_fts5(settings, docs):
    with Store.open(settings.index_path) as store:
        memory = KeywordMemory(store.path)
        try:
            _ready(memory, store)
            assert memory.postings is not None and len(memory.postings.terms) > 20
            compared = 0
            for query in _queries():
                for k in (1, 5, 100):
                    want = keyword.keyword_search(store.db.conn, query, k)
                    got = memory.search(
                        store.db.conn, query, k, generation=store.manifest.faiss_generation
                    )
                    assert got == want, (query, k)  # same ids, same order, same float scores
                    compared += bool(want)
            assert compared > 200
        finally:
            memory.close()


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="needs ../shared/datasets/scifact")
def test_memory_ranks_scifact_exactly_as_fts5(tmp_path, settings):
    files = {}
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            files[f"{doc['_id']}.txt"] = f"{doc['title']}\n\n{doc['text']}\n"
            if len(files) == 800:
                break
    ragkit.index(write(tmp_path / "scifact", files), settings)
    with (SCIFACT / "queries.jsonl").open(encoding="utf-8") as fh:
        queries = [json.loads(line)["text"] for line in fh][:300]
    with Store.open(settings.index_path) as store:
        memory = KeywordMemory(store.path)
        try:
            _ready(memory, store)
            for query in queries:
                want = keyword.keyword_search(store.db.conn, query, 100)
                got = memory.search(
                    store.db.conn, query, 100, generation=store.manifest.faiss_generation
                )
                assert got == want, query
        finally:
            memory.close()


def test_open_index_ranks_from_memory_and_sees_other_writers(tmp_path, settings, docs):
    with ragkit.open(settings, mode="keyword", k=5) as idx:
        idx.search("brake pump")
        idx.search("brake pump")
        assert idx._keywords.wait(60)
        statements = _traced(idx)
        for query in _queries(count=30):
            hits = idx.search(query)
            assert [(h.chunk_id, h.score) for h in hits] == [
                (i, pytest.approx(s)) for i, s in _fts(settings, query, 5)
            ]
        assert not [s for s in statements if "MATCH" in s.upper()]  # FTS5 never asked

        # Another writer adds a file with a new word and deletes one: seen at once (FTS5
        # ranks while the copy is stale), then from memory again once rebuilt.
        gone = (docs / "notes" / "f1.md").read_text()
        (docs / "notes" / "f1.md").unlink()
        (docs / "zeppelin.md").write_text("# Zeppelin\n\nThe zeppelin brake pump floats.\n")
        ragkit.index(docs, settings)
        assert [h.path for h in idx.search("zeppelin")] == ["zeppelin.md"]
        assert all(h.path != "notes/f1.md" for h in idx.search(gone, k=100))
        assert idx._keywords.wait(60)  # the rebuild the moved generation started
        statements.clear()
        assert [h.path for h in idx.search("zeppelin")] == ["zeppelin.md"]
        hits = idx.search(gone, k=100)
        assert hits and all(h.path != "notes/f1.md" for h in hits)
        assert [h.chunk_id for h in hits] == [i for i, _ in _fts(settings, gone, 100)]
        assert not [s for s in statements if "MATCH" in s.upper()]


def test_memory_leaves_out_chunks_without_vectors_and_keeps_k(settings, docs):
    query = "brake brakes braking pump"
    with ragkit.open(settings, mode="keyword") as idx:
        idx.search(query)
        idx.search(query)
        assert idx._keywords.wait(60)
        before = [h.chunk_id for h in idx.search(query, k=10)]
        # Vectors dropped (as when an index run is interrupted): FTS5's index is unchanged,
        # so the copy in memory stays in use and must leave these chunks out by itself.
        conn = sqlite3.connect(settings.index_path / "ragkit.db")
        with conn:
            conn.executemany(
                "UPDATE chunks SET vector = NULL WHERE id = ?", [(i,) for i in before[:7]]
            )
        conn.close()
        statements = _traced(idx)
        after = [h.chunk_id for h in idx.search(query, k=10)]
        assert not [s for s in statements if "MATCH" in s.upper()]
    assert len(after) == 10 and not set(after) & set(before[:7])
    assert after == [i for i, _ in _fts(settings, query, 10)]


def test_filters_from_memory_still_give_k_hits(settings, docs):
    query = "gear chain saddle"
    filters = Filters(path="guides/*")
    with ragkit.open(settings, mode="keyword") as idx:
        idx.search(query)
        idx.search(query)
        assert idx._keywords.wait(60)
        statements = _traced(idx)
        hits = idx.search(query, path="guides", k=8)
        assert not [s for s in statements if "MATCH" in s.upper()]
    assert len(hits) == 8 and all(h.path.startswith("guides/") for h in hits)
    assert [h.chunk_id for h in hits] == [i for i, _ in _fts(settings, query, 8, filters)]


def test_threads_share_one_copy(settings, docs):
    queries = _queries(count=40)
    with ragkit.open(settings, mode="keyword", k=10) as idx:
        idx.search("brake")
        idx.search("brake")
        assert idx._keywords.wait(60)
        expected = {q: [h.chunk_id for h in idx.search(q)] for q in queries}
        results: dict[str, list[int]] = {}
        errors: list[BaseException] = []

        def work(part: list[str]) -> None:
            try:
                for q in part:
                    results[q] = [h.chunk_id for h in idx.search(q)]
            except BaseException as exc:  # reported below, on the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(queries[n::4],)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and results == expected


def test_one_shot_search_builds_nothing_and_close_stops_a_build(settings, docs):
    ragkit.search("brake", settings, mode="keyword")
    assert not [t for t in threading.enumerate() if t.name == "ragkit-keywords"]
    idx = ragkit.open(settings, mode="keyword")
    idx.search("brake")
    idx.search("brake")  # starts a build, which close() interrupts or waits for
    idx.close()
    assert not [t for t in threading.enumerate() if t.name == "ragkit-keywords"]


def test_keyword_search_embeds_the_query_only_for_a_cosine(settings, docs):
    with ragkit.open(settings, mode="keyword") as idx:
        calls = idx.embedder.calls  # type: ignore[attr-defined]
        calls.clear()
        hits = idx.search("brake pump")
        assert hits and calls == [] and all(h.dense_score is None for h in hits)
        floored = idx.search("brake pump", min_score=-1.0)
        assert calls == [["brake pump"]] and all(h.dense_score is not None for h in floored)
        assert [h.chunk_id for h in floored] == [h.chunk_id for h in hits]
        calls.clear()
        answer = idx.ask("brake pump", llm=False)  # abstention reads the cosine
        assert ["brake pump"] in calls and answer.hits[0].dense_score is not None


def test_an_empty_index_builds_and_finds_nothing(tmp_path, settings):
    root = tmp_path / "empty"
    root.mkdir()
    ragkit.index(root, settings)
    with Store.open(settings.index_path) as store:
        memory = KeywordMemory(store.path)
        try:
            _ready(memory, store)
            got = memory.search(store.db.conn, "brake", 5, generation=0)
            assert got == [] == keyword.keyword_search(store.db.conn, "brake", 5)
        finally:
            memory.close()
