"""Both stores behind one seam: the same behaviour on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import dataclasses
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import ragkit
import ragkit.maintenance
import ragkit.pipeline
import ragkit.store.copy
import ragkit.store.protocol
from ragkit.chunking import Chunk
from ragkit.cli import app
from ragkit.errors import IndexLockedError
from ragkit.filters import make_filters
from ragkit.store.address import Address
from ragkit.store.copy import copy_index
from ragkit.store.postgres_search import glob_regex
from tests import fakes
from tests.backends import Backend, child_env

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "tests" / "ragkit_with_fakes.py"
runner = CliRunner()


def chunks(texts: list[str], heading: str = "") -> list[Chunk]:
    return [
        Chunk(i, t, 0, len(t), i + 1, i + 1, None, heading, len(t.split()))
        for i, t in enumerate(texts)
    ]


def filled(backend: Backend, docs: dict[str, list[str]], name: str = "default"):
    emb = fakes.BagOfWordsEmbedder()
    store = backend.address(name).create(
        embedder=emb.name, model=emb.model, dimension=emb.dimension
    )
    store.lock()
    for n, (path, texts) in enumerate(docs.items()):
        kind = "markdown" if path.endswith(".md") else "text"
        store.put_document(
            path=path,
            sha256=path,
            size=1,
            mtime=1000.0 * (n + 1),
            kind=kind,
            pages=0,
            warnings=(),
            chunks=chunks(texts, heading=f"Guide > {path}"),
        )
    pending = store.pending()
    store.set_vectors([i for i, _, _ in pending], emb.embed([t for _, t, _ in pending]), 7)
    store.save_vectors()
    return store, emb


DOCS = {
    "notes/a.md": ["red apples in the orchard", "green pears ripen slowly"],
    "notes/b.txt": ["the blue sky over the harbour"],
    "src/c.py": ["apples and pears in code"],
    "Upper/D.MD": ["lighthouse keeper polishes the lens"],
}


def test_the_store_seam_behaves_the_same(backend):
    store, emb = filled(backend, DOCS)
    with store:
        assert store.counts() == {
            "documents": 4,
            "chunks": 5,
            "vectors": 5,
            "pending_documents": 0,
        }
        assert store.manifest.tokens_embedded == 7
        owner = store.chunk_documents()
        assert sorted(set(owner.values())) == sorted(DOCS)
        ids = sorted(owner)
        rows = store.chunks(ids)
        assert (
            rows[ids[0]].text == "red apples in the orchard" and rows[ids[0]].path == "notes/a.md"
        )
        # Vectors come back bit for bit, in the order asked.
        want = emb.embed([rows[i].text for i in reversed(ids)])
        assert np.array_equal(store.vectors(list(reversed(ids))), want)
        # Dense: each chunk is its own nearest neighbour, with cosine 1.
        scores, found = store.search_vectors(want[:1], 3)
        assert found[0][0] == ids[-1] and scores[0][0] == pytest.approx(1.0, abs=1e-5)
        # Keyword: the words, stemmed, in chunks that have vectors.
        hits = store.keyword_search("apple", 10)
        assert {rows[i].path for i, _ in hits} == {"notes/a.md", "src/c.py"}
        assert store.keyword_search("the and of", 10) == [] or backend.kind == "sqlite"
        # The embedding cache: a new document with a known text takes its vector.
        missing, reused = store.put_document(
            path="copy.txt", sha256="x", size=1, mtime=1.0, kind="text", pages=0,
            warnings=("odd bytes",), chunks=chunks(["the blue sky over the harbour", "brand new words"]),
        )  # fmt: skip
        assert (missing, reused) == (1, 1)
        assert store.cached_keys([]) == set()
        assert [t for _, t, _ in store.pending()] == ["brand new words"]
        assert store.documents()["copy.txt"].status == "pending"
        assert store.documents()["copy.txt"].warnings == "odd bytes"
        # Renames and touches keep chunks; removal takes them away.
        store.move_document("copy.txt", "moved.txt", mtime=5.0)
        store.touch_document("moved.txt", mtime=6.0)
        assert store.documents()["moved.txt"].mtime == 6.0
        assert store.remove_documents(["moved.txt", "never.txt"]) == 1
        assert store.pending() == [] and store.counts()["chunks"] == 5
        assert store.check().ok


FILTERS = [
    {"path": "notes/*"},
    {"path": "*.[mM][dD]"},
    {"path": "notes/?.md"},
    {"path": "src/[^a-b]*"},
    {"file_type": "markdown"},
    {"file_type": ".md"},
    {"file_type": "text,.py"},
    {"heading": "GUIDE > NOTES"},
    {"modified_after": "1970-01-01T00:33:00+00:00"},
    {"modified_before": "1970-01-01T00:40:00+00:00", "file_type": ".txt,.md"},
]


@pytest.mark.parametrize("values", FILTERS, ids=[json.dumps(f) for f in FILTERS])
def test_filters_select_the_same_chunks_on_both_stores(tmp_path, pg_url, values):
    sqlite_store, _ = filled(Backend("sqlite", tmp_path / "a"), DOCS)
    pg_store, _ = filled(Backend("postgres", tmp_path / "b", pg_url), DOCS)
    filters = make_filters(**values)
    with sqlite_store, pg_store:

        def paths(store, ids):
            rows = store.chunks([int(i) for i in ids])
            return sorted(rows[int(i)].text for i in ids)

        expected = paths(sqlite_store, sqlite_store.chunk_ids(filters=filters))
        assert expected, "each case selects something"
        assert expected != paths(sqlite_store, sqlite_store.chunk_ids())  # and not everything
        assert paths(pg_store, pg_store.chunk_ids(filters=filters)) == expected
        for store in (sqlite_store, pg_store):
            found = store.keyword_search("apples pears lighthouse sky", 10, filters=filters)
            assert set(paths(store, [i for i, _ in found])) <= set(expected)


@pytest.mark.parametrize(
    "pattern",
    ["*", "a*", "*.md", "notes/?.md", "[a-c]*", "[^a-c]*", "a[.]b", "x(y)+z", "\\*", "[]x]", "a]b"],
)
def test_glob_regex_matches_like_sqlite_glob(pattern):
    import re

    names = ["a", "ab", "notes/a.md", "b.md", "d.txt", "a.b", "x(y)+z", "*", "\\x", "]x", "a]b"]
    conn = sqlite3.connect(":memory:")
    for name in names:
        expected = bool(conn.execute("SELECT ? GLOB ?", (name, pattern)).fetchone()[0])
        assert bool(re.search(glob_regex(pattern), name)) == expected, (pattern, name)


def test_sync_embeds_only_what_changed(backend, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nZebras graze on the savannah.\n\n## B\n\nOwls hunt mice.\n")
    (docs / "b.txt").write_text("Penguins huddle through the polar winter.\n")
    (docs / "d.txt").write_text("Herons wade in the marsh at dawn.\n")
    settings = ragkit.Settings.load(environ={}, embedder="bow", **backend.settings)
    first = ragkit.index(docs, settings)
    assert first.chunks_embedded == first.chunks > 0
    (docs / "c.txt").write_text("Penguins huddle through the polar winter.\n")  # b's text
    (docs / "d.txt").rename(docs / "moved.txt")
    (docs / "a.md").write_text("# A\n\nZebras graze on the savannah.\n\n## B\n\nBats hunt moths.\n")
    fakes.instances.clear()
    second = ragkit.index(docs, settings)
    assert second.moved == (("d.txt", "moved.txt"),) and second.changed == ("a.md",)
    assert second.added == ("c.txt",) and second.chunks_reused == 2  # c.txt and a.md § A
    embedded = [t for e in fakes.instances for t in e.embedded_texts]
    assert all("Penguins" not in t for t in embedded) and any("Bats" in t for t in embedded)
    (docs / "c.txt").unlink()
    third = ragkit.index(docs, settings)
    assert third.removed == ("c.txt",) and third.chunks_embedded == 0
    hits = ragkit.search("herons marsh", settings, k=1, mode="keyword")
    assert hits[0].path == "moved.txt"
    with settings.address.open() as store:
        assert store.check().ok
        assert set(store.documents()) == {"a.md", "b.txt", "moved.txt"}


def test_embedding_in_pages_sends_each_text_once(backend, tmp_path, monkeypatch):
    monkeypatch.setattr(ragkit.pipeline, "EMBED_PAGE", 2)  # copies fall in later pages
    docs = tmp_path / "docs"
    docs.mkdir()
    words = ["Zebras graze.", "Owls hunt mice.", "Herons wade.", "Bats hunt moths."]
    for name in ("a", "b", "c"):
        (docs / f"{name}.md").write_text("".join(f"# {w}\n\n{w}\n\n" for w in words))
    settings = ragkit.Settings.load(
        environ={}, embedder="bow", chunk_tokens=16, chunk_overlap=0, **backend.settings
    )
    fakes.instances.clear()
    report = ragkit.index(docs, settings)
    embedded = [t for e in fakes.instances for t in e.embedded_texts]
    assert report.chunks_embedded == report.chunks == 3 * len(embedded) > 2 * 2
    assert len(embedded) == len(set(embedded))
    with settings.address.open() as store:
        assert store.pending() == [] and store.check().ok
    hits = ragkit.search("herons wade", settings, k=3, mode="dense")
    assert {h.path for h in hits} == {"a.md", "b.md", "c.md"}


def test_one_writer_at_a_time_and_wait_queues(backend):
    store, _ = filled(backend, {"a.txt": ["alpha"]})
    store.unlock()
    other = backend.address().open()
    with store, other:
        store.lock()
        with pytest.raises(IndexLockedError, match="being written by another process"):
            other.lock()
        started = time.monotonic()
        with pytest.raises(IndexLockedError):
            other.lock(wait=True, timeout=0.5)
        assert time.monotonic() - started >= 0.5
        store.unlock()
        other.lock(wait=True, timeout=10)


def test_a_killed_writer_releases_the_advisory_lock(pg_url, tmp_path):
    filled(Backend("postgres", tmp_path, pg_url), {"a.txt": ["alpha"]})[0].close()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; sys.path.insert(0, sys.argv[2]);"
         "from ragkit.store.postgres import PostgresStore;"
         "s = PostgresStore.open(sys.argv[1], 'default'); s.lock(); print('locked', flush=True);"
         "time.sleep(600)", pg_url, str(ROOT)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        store = Backend("postgres", tmp_path, pg_url).address().open()
        with store:
            with pytest.raises(IndexLockedError, match=r"ragkit pid \d+ on "):
                store.lock()
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            store.lock(wait=True, timeout=30)  # the server ends the dead session's lock
    finally:
        holder.kill()
        holder.wait()


def test_sigkill_mid_index_keeps_postgres_consistent_and_the_rerun_finishes(pg_url, tmp_path):
    backend = Backend("postgres", tmp_path / "indexes", pg_url)
    docs = tmp_path / "docs"
    for i in range(500):  # eight batches of 64 to embed
        (docs / f"p{i % 4}").mkdir(parents=True, exist_ok=True)
        (docs / f"p{i % 4}" / f"d{i:03d}.txt").write_text(f"Item{i} quartz{i} meadow{i} harbour.\n")
    env = child_env(backend, RAGKIT_BATCH_SIZE="2", RAGKIT_TEST_EMBED_DELAY="0.05")
    command = [sys.executable, str(ENTRY), "index", str(docs), "--embedder", "bow"]
    for round_ in range(4):
        phases = tmp_path / f"phases{round_}"
        proc = subprocess.Popen(
            command, env={**env, "RAGKIT_TEST_PHASES": str(phases)}, stderr=subprocess.PIPE
        )
        # Killed while loading files (inside a write transaction) or while embedding.
        phase, nth = ("load", 40) if round_ % 2 else ("embed", 2)
        deadline = time.monotonic() + 120
        while (phases.read_text().split() if phases.exists() else []).count(phase) < nth:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with backend.address().open() as store:
            report = store.check()
            assert {p.code for p in report.problems} <= {"pending"}, report.problems
            counts = store.counts()
            assert counts["vectors"] <= counts["chunks"]
        (docs / "p0" / f"new{round_}.txt").write_text(f"Fresh{round_} words here.\n")
    with backend.address().open() as store:
        before = {t for t in (r.text for r in store.chunks(store.chunk_ids()).values())}
    log = tmp_path / "embedded.jsonl"
    done = subprocess.run(
        [*command, "--json"], env={**env, "RAGKIT_TEST_EMBED_LOG": str(log)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    embedded = {json.loads(line) for line in log.read_text().splitlines()}
    assert embedded and not embedded & before  # nothing committed was embedded again
    with backend.address().open() as store:
        assert store.check().ok
        assert store.counts()["documents"] == 504 and store.pending() == []
        assert len(store.chunk_ids()) == store.counts()["chunks"]


def test_cli_on_postgres_index_search_status_doctor(pg_url, tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Bikes\n\nOil the chain every month.\n")
    monkeypatch.delenv("RAGKIT_STORE", raising=False)
    result = runner.invoke(app, ["index", str(docs), "--store", pg_url, "--embedder", "bow"])
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("RAGKIT_STORE", pg_url)  # one name everywhere: the variable works too
    result = runner.invoke(app, ["search", "chain oil", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["hits"][0]["path"] == "a.md"
    result = runner.invoke(app, ["status", "--json"])
    status = json.loads(result.stdout)
    assert status["documents"] == 1 and status["vectors"] == 1
    assert status["path"].startswith("postgresql://") and "(index default)" in status["path"]
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0 and "healthy" in result.stdout
    # Bad input: one line on stderr saying what to do, exit 1, no traceback.
    for args, message in [
        (["--index", "other"], f"no index named other in {pg_url}: build one with"),
        (["--store", "mysql://h/db"], "is not a postgresql:// URL"),
        (["--store", "postgresql://u:secret@127.0.0.1:9/x"], "cannot connect to"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "ragkit", "search", "x", *args],
            env=child_env(Backend("postgres", tmp_path, pg_url)), cwd=tmp_path,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and message in lines[0], proc.stderr
        assert "secret" not in proc.stderr


def test_several_indexes_share_one_database(pg_url, tmp_path):
    backend = Backend("postgres", tmp_path, pg_url)
    one, _ = filled(backend, {"a.txt": ["apples"]}, name="one")
    two, _ = filled(backend, {"b.txt": ["pears"], "c.txt": ["plums"]}, name="two")
    with one, two:
        assert one.counts()["documents"] == 1 and two.counts()["documents"] == 2
        assert one.keyword_search("pears plums", 5) == []
        one.lock()
        two.lock()  # each index has its own writer lock


def test_copy_sqlite_to_postgres_and_back_keeps_every_vector(pg_url, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"d{i}.md").write_text(f"# Part {i}\n\nWords{i} alpha{i % 3} beta.\n\nMore{i}.\n")
    local = ragkit.Settings.load(environ={}, embedder="bow", index_dir=tmp_path / "ix")
    ragkit.index(docs, local)
    result = runner.invoke(app, ["copy", "--index-dir", str(tmp_path / "ix"), "--to", pg_url])
    assert result.exit_code == 0, result.output
    back = tmp_path / "back"
    result = runner.invoke(app, ["copy", "--store", pg_url, "--to", str(back), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["vectors"] == 30

    def by_span(address):
        with address.open() as store:
            ids = store.chunk_ids()
            rows = store.chunks([int(i) for i in ids])
            vectors = store.vectors([int(i) for i in ids])
            docs_ = {p: (r.sha256, r.mtime, r.status) for p, r in store.documents().items()}
            return docs_, {
                (rows[int(i)].path, rows[int(i)].ordinal, rows[int(i)].text): vectors[n].tobytes()
                for n, i in enumerate(ids)
            }

    original = by_span(local.address)
    remote = by_span(ragkit.Settings.load(environ={}, store=pg_url).address)
    returned = by_span(local.replace(index_dir=back).address)
    assert original == remote == returned
    # Searches agree, and indexing the same folder again finds nothing to do.
    pg = ragkit.Settings.load(environ={}, store=pg_url)
    for mode in ("dense", "keyword", "hybrid"):
        there = ragkit.search("words7 more7 alpha1", pg, k=5, mode=mode)
        here = ragkit.search("words7 more7 alpha1", local, k=5, mode=mode)
        assert there[0].text == here[0].text and "Words7" in here[0].text
        if mode == "dense":  # the same vectors: the same cosines (ties may order differently)
            assert [h.dense_score for h in there] == pytest.approx([h.dense_score for h in here])
    fakes.instances.clear()
    again = ragkit.index(docs, pg)
    assert again.chunks_embedded == 0 and again.unchanged == 30
    # A copy never replaces an index.
    with pytest.raises(ragkit.RagkitError, match="already exists"):
        ragkit.maintenance.copy(pg_url, local)


def test_copy_gives_waiting_chunks_their_vectors_a_page_at_a_time(
    backend, tmp_path, monkeypatch, request
):
    source, _ = filled(backend, DOCS)
    with source:  # an interrupted run: these chunks have no vectors, here or in a copy
        source.put_document(
            path="late.md",
            sha256="late",
            size=1,
            mtime=1.0,
            kind="markdown",
            pages=0,
            warnings=(),
            chunks=chunks(["the first of three", "the second", "and the third"]),
        )
        monkeypatch.setattr(ragkit.store.copy, "BATCH_CHUNKS", 2)  # waiting chunks stay waiting
        whole = copy_index(source, "default", Address("whole", tmp_path / "whole", None))
        reads = request.getfixturevalue("pending_reads")  # the copy's reads: it writes SQLite
        monkeypatch.setattr(ragkit.store.protocol, "PENDING_PAGE", 2)
        paged = copy_index(source, "default", Address("paged", tmp_path / "paged", None))
    assert len(reads) > 4 and all(limit == 2 for limit, _ in reads)
    # Each waiting chunk is read once, not again by every later batch.
    waiting_read = [i for _, ids in reads for i in ids]
    assert sorted(waiting_read) == sorted(set(waiting_read))
    assert dataclasses.replace(paged, target="") == dataclasses.replace(whole, target="")
    assert (paged.chunks, paged.vectors) == (8, 5)

    def copied(name):
        with Address(name, tmp_path / name, None).open() as store:
            ids = [int(i) for i in store.chunk_ids()]
            rows = store.chunks(ids)
            vectors = {
                (rows[i].path, rows[i].ordinal): v.tobytes()
                for i, v in zip(ids, store.vectors(ids), strict=True)
            }
            waiting = sorted(text for _, text, _ in store.pending())
            return vectors, waiting, store.check().ok

    assert copied("paged") == copied("whole")
    assert copied("paged")[1] == ["and the third", "the first of three", "the second"]


def test_doctor_finds_and_repairs_a_dropped_vector_index(pg_url, tmp_path):
    import psycopg

    store, _ = filled(Backend("postgres", tmp_path, pg_url), {"a.txt": ["alpha", "beta"]})
    with store:
        store.conn.execute("DROP INDEX chunks_embedding")
        store.conn.execute(
            "UPDATE chunks SET embedding = NULL WHERE id = (SELECT min(id) FROM chunks)"
        )
        report = store.check()
        assert {p.code for p in report.problems} == {"indexes", "status"}
        store.unlock()
        repaired = store.repair()
        assert {p.code for p in repaired.problems} == {"pending"}
        assert any("chunks_embedding" in r for r in repaired.repaired)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'ragkit_default'"
            " AND indexname = 'chunks_embedding'"
        ).fetchone() == (1,)


def test_an_open_index_on_postgres_sees_new_commits(pg_url, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Kites fly over the dunes.\n")
    settings = ragkit.Settings.load(environ={}, embedder="bow", store=pg_url)
    ragkit.index(docs, settings)
    with ragkit.open(settings) as idx:
        assert idx.search("kites dunes", k=1)[0].path == "a.txt"
        (docs / "b.txt").write_text("Herons wade in the marsh.\n")
        ragkit.index(docs, settings)
        assert idx.search("herons marsh", k=1, mode="keyword")[0].path == "b.txt"
        assert idx.status().documents == 2


def test_a_bulk_load_builds_hnsw_once_and_a_killed_one_is_mended(pg_url, tmp_path, monkeypatch):
    import ragkit.store.postgres as pg

    monkeypatch.setattr(pg, "BULK_BUILD", 3)  # any run adding 3+ vectors to a smaller index
    backend = Backend("postgres", tmp_path, pg_url)
    emb = fakes.BagOfWordsEmbedder()
    store = backend.address().create(embedder=emb.name, model=emb.model, dimension=emb.dimension)
    with store:
        store.lock()
        texts = [f"word{i} shared" for i in range(6)]
        store.put_document(path="a.txt", sha256="a", size=1, mtime=1.0, kind="text", pages=0,
                           warnings=(), chunks=chunks(texts))  # fmt: skip
        pending = store.pending()
        store.set_vectors([i for i, _, _ in pending[:3]], emb.embed(texts[:3]))
        # Dropped for the load: searches still answer (exactly); the store says it is stale.
        assert not store.vectors_agree() and store.vectors_stale("auto")
        assert store.search_vectors(emb.embed(texts[:1]), 1)[1][0][0] == pending[0][0]
        assert {p.code for p in store.check().problems} == {"indexes", "pending"}
    # A writer killed here: the next run's save builds the index.
    store = backend.address().open()
    with store:
        store.lock()
        store.set_vectors([i for i, _, _ in pending[3:]], emb.embed(texts[3:]))
        store.save_vectors()
        assert store.vectors_agree() and not store.vectors_stale("auto") and store.check().ok


def test_eval_runs_on_postgres_and_scores_like_sqlite(pg_url, tmp_path, monkeypatch):
    from tests.test_evaluation import make_dataset

    dataset = make_dataset(tmp_path / "tiny")
    reports = {}
    for kind, flags in {
        "sqlite": ["--index-dir", str(tmp_path / "ix")],
        "postgres": ["--store", pg_url],
    }.items():
        result = runner.invoke(app, ["eval", str(dataset), "--embedder", "bow", "--json", *flags])
        assert result.exit_code == 0, result.output
        reports[kind] = json.loads(result.stdout)
    assert all(p["index"].startswith("postgresql://") for p in reports["postgres"]["protocols"])

    def scores(report):
        return [(r["protocol"], r["mode"], r["ndcg_at_10"]) for r in report["results"]]

    assert scores(reports["postgres"]) == scores(reports["sqlite"])
    assert all(n == pytest.approx(1.0) for _, _, n in scores(reports["postgres"]))
    # The cached indexes are reused: nothing embedded the second time.
    again = json.loads(
        runner.invoke(
            app, ["eval", str(dataset), "--embedder", "bow", "--json", "--store", pg_url]
        ).stdout
    )
    assert [p["chunks_embedded"] for p in again["protocols"]] == [0, 0]
