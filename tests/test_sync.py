"""Incremental sync: each case embeds exactly the chunks whose text is new, and nothing else."""

from __future__ import annotations

import os
import random
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

import ragkit
from ragkit.store import FAISS_NAME, Store
from ragkit.store.vectors import faiss_ids as _faiss_ids
from tests import fakes

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike oscar".split()
)


def paragraph(rng: random.Random, n: int = 45) -> str:
    return " ".join(f"{rng.choice(WORDS)}{rng.randint(0, 99)}" for _ in range(n)) + "."


def write_long(path: Path, paragraphs: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Long\n\n" + "\n\n".join(paragraphs) + "\n")


@pytest.fixture
def settings(tmp_path):
    return ragkit.Settings.load(environ={}, index_dir=tmp_path / "indexes", embedder="bow")


@pytest.fixture
def corpus(tmp_path):
    rng = random.Random(7)
    docs = tmp_path / "docs"
    paragraphs = [paragraph(rng) for _ in range(20)]
    write_long(docs / "long.md", paragraphs)
    (docs / "short.txt").write_text("Zebras graze on the savannah near the waterhole.\n")
    (docs / "notes").mkdir()
    (docs / "notes" / "moving.txt").write_text(
        "Penguins huddle together through the polar winter.\n"
    )
    return docs, paragraphs, rng


def embedded() -> list[str]:
    """Texts the fake embedder was asked for since the last clear (query embeddings included)."""
    return [t for e in fakes.instances for t in e.embedded_texts]


def run(docs: Path, settings: ragkit.Settings) -> ragkit.IndexReport:
    fakes.instances.clear()
    return ragkit.index(docs, settings)


def chunk_texts(settings: ragkit.Settings, path: str) -> list[str]:
    with Store.open(settings.index_path) as store:
        rows = store.db.conn.execute(
            "SELECT c.text FROM chunks c JOIN documents d ON d.id = c.document_id"
            " WHERE d.path = ? ORDER BY c.ordinal",
            (path,),
        )
        return [r[0] for r in rows]


def assert_consistent(settings: ragkit.Settings) -> Store:
    store = Store.open(settings.index_path)
    assert store.vectors_agree()
    report = store.check()
    assert report.ok, report.problems
    return store


def fts_count(store: Store, word: str) -> int:
    return int(
        store.db.conn.execute(
            "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?", (word,)
        ).fetchone()[0]
    )


def test_added_file_embeds_only_its_chunks(corpus, settings):
    docs, _, _ = corpus
    first = run(docs, settings)
    assert sorted(first.added) == ["long.md", "notes/moving.txt", "short.txt"]
    assert first.chunks_embedded == first.chunks == len(embedded())

    (docs / "new.md").write_text(
        "# Giraffes\n\nGiraffes browse acacia leaves high above the ground.\n"
    )
    report = run(docs, settings)
    assert report.added == ("new.md",) and report.unchanged == 3
    assert (report.changed, report.removed, report.moved) == ((), (), ())
    assert embedded() == chunk_texts(settings, "new.md") and report.chunks_embedded == 1
    hits = ragkit.search("giraffes acacia leaves", settings)
    assert hits[0].path == "new.md"
    assert_consistent(settings).close()


def test_changing_one_paragraph_embeds_only_the_changed_chunks(corpus, settings):
    docs, paragraphs, rng = corpus
    run(docs, settings)
    before = chunk_texts(settings, "long.md")
    assert len(before) >= 8  # a long file: many chunks to reuse

    old, paragraphs[10] = paragraphs[10], paragraph(rng)
    write_long(docs / "long.md", paragraphs)
    report = run(docs, settings)

    after = chunk_texts(settings, "long.md")
    fresh = [t for t in after if t not in before]
    assert report.changed == ("long.md",) and report.unchanged == 2
    assert 1 <= len(fresh) <= 2
    assert embedded() == fresh  # exactly the new texts, each once
    assert report.chunks_embedded == len(fresh)
    assert report.chunks_reused == len(after) - len(fresh)
    with assert_consistent(settings) as store:
        # Words only the replaced paragraph had are gone from the keyword index; the new ones are in.
        remaining = set(re.findall(r"\w+", " ".join(after)))
        gone = [w for w in re.findall(r"\w+", old) if w not in remaining]
        assert gone and all(fts_count(store, w) == 0 for w in gone)
        assert all(fts_count(store, w) >= 1 for w in re.findall(r"\w+", paragraphs[10]))


def test_deleted_file_leaves_faiss_sqlite_and_fts(corpus, settings):
    docs, _, _ = corpus
    run(docs, settings)
    with Store.open(settings.index_path) as store:
        before_ids = set(store.chunk_ids().tolist())
        zebra_ids = {
            r[0]
            for r in store.db.conn.execute(
                "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.path = 'short.txt'"
            )
        }
        assert zebra_ids and fts_count(store, "zebras") == 1

    (docs / "short.txt").unlink()
    report = run(docs, settings)
    assert report.removed == ("short.txt",) and report.chunks_embedded == 0 and not embedded()
    with assert_consistent(settings) as store:
        assert "short.txt" not in store.documents()
        ids = set(store.chunk_ids().tolist())
        assert ids == before_ids - zebra_ids
        assert set(_faiss_ids(store.faiss_index()).tolist()) == ids
        import faiss

        on_disk = faiss.read_index(str(store.path / FAISS_NAME))
        assert on_disk.ntotal == len(ids) and not zebra_ids & set(_faiss_ids(on_disk).tolist())
        assert fts_count(store, "zebras") == 0
    assert all(h.path != "short.txt" for h in ragkit.search("zebras graze savannah", settings))


def test_renamed_and_moved_files_are_repointed_without_embedding(corpus, settings):
    docs, _, _ = corpus
    run(docs, settings)
    with Store.open(settings.index_path) as store:
        ids_before = store.chunk_ids().tolist()
    (docs / "archive").mkdir()
    os.rename(docs / "notes" / "moving.txt", docs / "archive" / "penguins.txt")
    os.rename(docs / "long.md", docs / "long-renamed.md")

    report = run(docs, settings)
    assert sorted(report.moved) == [
        ("long.md", "long-renamed.md"),
        ("notes/moving.txt", "archive/penguins.txt"),
    ]
    assert (report.added, report.removed, report.changed) == ((), (), ())
    assert report.chunks_embedded == 0 and not embedded()
    with assert_consistent(settings) as store:
        assert store.chunk_ids().tolist() == ids_before  # the same rows, re-pointed
        assert set(store.documents()) == {"long-renamed.md", "archive/penguins.txt", "short.txt"}
    assert ragkit.search("penguins huddle polar winter", settings)[0].path == "archive/penguins.txt"


def test_moved_and_edited_file_reuses_the_vectors_of_its_old_path(corpus, settings):
    docs, paragraphs, rng = corpus
    run(docs, settings)
    before = chunk_texts(settings, "long.md")
    (docs / "long.md").unlink()
    paragraphs[3] = paragraph(rng)
    write_long(docs / "moved" / "long.md", paragraphs)

    report = run(docs, settings)
    after = chunk_texts(settings, "moved/long.md")
    fresh = [t for t in after if t not in before]
    assert report.added == ("moved/long.md",) and report.removed == ("long.md",)
    assert 1 <= len(fresh) <= 2 and embedded() == fresh
    assert report.chunks_reused == len(after) - len(fresh)
    assert_consistent(settings).close()


def test_touched_file_is_unchanged_and_takes_the_fast_path_next_time(corpus, settings, monkeypatch):
    docs, _, _ = corpus
    run(docs, settings)
    stat = (docs / "short.txt").stat()
    os.utime(docs / "short.txt", (stat.st_atime, stat.st_mtime + 100))
    report = run(docs, settings)
    assert report.unchanged == 3 and report.changed == () and not embedded()

    # The new mtime was recorded: a third run loads nothing at all.
    from ragkit import sync

    loads: list[Path] = []
    real = sync.load_document
    monkeypatch.setattr(sync, "load_document", lambda f, r: loads.append(f) or real(f, r))
    assert run(docs, settings).unchanged == 3 and loads == []


def test_identical_text_in_a_new_file_is_reused_not_embedded(corpus, settings):
    docs, _, _ = corpus
    run(docs, settings)
    shutil.copy(docs / "short.txt", docs / "copy-of-short.txt")
    report = run(docs, settings)
    assert report.added == ("copy-of-short.txt",)
    assert report.chunks_embedded == 0 and report.chunks_reused == 1 and not embedded()


def test_a_run_with_nothing_to_do_still_mends_what_a_kill_left(corpus, settings):
    docs, _, _ = corpus
    run(docs, settings)
    conn = sqlite3.connect(settings.index_path / "ragkit.db", isolation_level=None)
    # Killed after renaming the FAISS file into place, before recording its count.
    conn.execute("UPDATE manifest SET value = '0' WHERE key = 'faiss_count'")
    conn.close()
    (settings.index_path / f".{FAISS_NAME}.999.tmp").write_bytes(b"half written")
    report = run(docs, settings)
    assert report.unchanged == 3 and not embedded()
    assert_consistent(settings).close()  # check() is ok: count recorded, temporary file gone
