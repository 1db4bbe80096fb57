"""`ragkit doctor`: each kind of damage is found, named, and repaired where it can be."""

from __future__ import annotations

import json
import sqlite3

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

import ragkit
from ragkit.cli import EXIT_UNHEALTHY, app
from ragkit.errors import IndexLockedError, IndexMismatchError
from ragkit.store import DB_NAME, FAISS_NAME, Store
from tests import fakes  # noqa: F401  (registers the "bow" embedder)
from tests.test_pipeline import PAGES, write
from tests.test_store import _chunks

runner = CliRunner()


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGKIT_INDEX_DIR", str(tmp_path / "indexes"))
    settings = ragkit.Settings.load(environ={}, index_dir=tmp_path / "indexes", embedder="bow")
    ragkit.index(write(tmp_path / "docs", PAGES), settings)
    return settings


def raw(settings: ragkit.Settings) -> sqlite3.Connection:
    """A plain connection that bypasses ragkit, as outside damage would."""
    conn = sqlite3.connect(settings.index_path / DB_NAME, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=OFF")
    return conn


def codes(report: ragkit.HealthReport) -> set[str]:
    return {p.code for p in report.problems}


def damage_faiss_missing(settings):
    (settings.index_path / FAISS_NAME).unlink()


def damage_faiss_garbage(settings):
    (settings.index_path / FAISS_NAME).write_bytes(b"not a faiss index")


def damage_faiss_stale_vectors(settings):
    # Same ids, other vectors: only comparing the vectors themselves finds this.
    path = str(settings.index_path / FAISS_NAME)
    index = faiss.read_index(path)
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    vectors = np.roll(index.index.reconstruct_n(0, index.ntotal), 1, axis=0)
    fresh = faiss.IndexIDMap2(faiss.IndexFlatIP(index.d))
    fresh.add_with_ids(vectors, ids)
    faiss.write_index(fresh, path)


def damage_faiss_missing_ids(settings):
    path = str(settings.index_path / FAISS_NAME)
    index = faiss.read_index(path)
    index.remove_ids(np.array([faiss.vector_to_array(index.id_map)[0]], dtype=np.int64))
    faiss.write_index(index, path)


def damage_manifest_count(settings):
    raw(settings).execute("UPDATE manifest SET value = '999' WHERE key = 'faiss_count'")


def damage_manifest_key(settings):
    raw(settings).execute("DELETE FROM manifest WHERE key IN ('tokens_embedded', 'updated')")


def damage_orphans(settings):
    conn = raw(settings)
    conn.execute(
        "INSERT INTO chunks(document_id, ordinal, text, start_line, end_line, start_char, end_char, tokens, cache_key)"
        " VALUES (9999, 0, 'ghost chunk of no document', 1, 1, 0, 10, 5, 'x')"
    )


def damage_fts(settings):
    conn = raw(settings)
    conn.execute(
        "INSERT INTO chunks_fts(rowid, text, heading) VALUES (424242, 'phantom words', '')"
    )


def damage_temp_files(settings):
    (settings.index_path / f".{FAISS_NAME}.12345.tmp").write_bytes(b"half written")


def damage_wrong_size_vector(settings):
    raw(settings).execute(
        "UPDATE chunks SET vector = x'00000000' WHERE id = (SELECT min(id) FROM chunks)"
    )


def damage_status(settings):
    conn = raw(settings)
    conn.execute("UPDATE chunks SET vector = NULL WHERE id = (SELECT min(id) FROM chunks)")


def damage_missing_chunk(settings):
    conn = raw(settings)
    conn.execute("DELETE FROM chunks WHERE id = (SELECT max(id) FROM chunks)")


@pytest.mark.parametrize(
    "damage, code, then_index",
    [
        (damage_faiss_missing, "faiss", False),
        (damage_faiss_garbage, "faiss", False),
        (damage_faiss_stale_vectors, "faiss", False),
        (damage_faiss_missing_ids, "faiss", False),
        (damage_manifest_count, "faiss-count", False),
        (damage_manifest_key, "manifest", False),
        (damage_orphans, "orphans", False),
        (damage_fts, "fts", False),
        (damage_temp_files, "temp-files", False),
        # These leave chunks without vectors (or to be re-read): doctor says to run `ragkit index`.
        (damage_wrong_size_vector, "vectors", True),
        (damage_status, "status", True),
        (damage_missing_chunk, "chunks", True),
    ],
)
def test_each_damage_is_found_and_repaired(settings, tmp_path, damage, code, then_index):
    assert ragkit.doctor(settings).ok
    damage(settings)

    found = ragkit.doctor(settings)
    assert not found.ok and code in codes(found), found.problems
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == EXIT_UNHEALTHY and f"problem [{code}]" in result.stdout

    fixed = ragkit.doctor(settings, repair=True)
    assert fixed.repaired, fixed
    if then_index:
        assert codes(fixed) == {"pending"}
        pending = next(p for p in fixed.problems if p.code == "pending")
        assert not pending.repairable and "ragkit index" in pending.fix
        ragkit.index(tmp_path / "docs", settings)
    else:
        assert fixed.ok, fixed.problems
    after = ragkit.doctor(settings)
    assert after.ok and after.faiss_vectors == after.vectors == after.chunks
    assert runner.invoke(app, ["doctor"]).exit_code == 0
    # And the index answers correctly again.
    assert ragkit.search("when does the shop close on sundays", settings)[0].path == "hours.txt"


def test_repaired_keyword_index_forgets_phantom_rows(settings):
    damage_fts(settings)
    ragkit.doctor(settings, repair=True)
    with Store.open(settings.index_path) as store:
        assert (
            store.db.conn.execute(
                "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH 'phantom'"
            ).fetchone()[0]
            == 0
        )
        assert (
            store.db.conn.execute(
                "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH 'helmet'"
            ).fetchone()[0]
            == 1
        )


def test_pending_documents_are_left_to_ragkit_index(settings, tmp_path):
    (tmp_path / "docs" / "extra.txt").write_text("Tandem bicycles seat two riders.\n")
    with Store.open(settings.index_path) as store:  # as if killed before embedding it
        chunks = _chunks(["Tandem bicycles seat two riders."])
        store.put_document(
            path="extra.txt",
            sha256="?",
            size=1,
            mtime=0.0,
            kind="text",
            pages=0,
            warnings=(),
            chunks=chunks,
        )
    report = ragkit.doctor(settings, repair=True)
    assert codes(report) == {"pending"} and report.repaired == ()
    result = runner.invoke(app, ["doctor", "--json"])
    data = json.loads(result.stdout)
    assert result.exit_code == EXIT_UNHEALTHY and data["ok"] is False
    assert data["problems"] == [
        {
            "code": "pending",
            "detail": "1 documents are not fully indexed (1 chunks wait for vectors): an index run"
            " was interrupted, or a repair marked them to be read again",
            "fix": f"run `ragkit index {tmp_path / 'docs'} --index default --index-dir {tmp_path / 'indexes'}`;"
            " doctor does not embed",
            "repairable": False,
        }
    ]
    ragkit.index(tmp_path / "docs", settings)
    assert ragkit.doctor(settings).ok


def test_a_manifest_without_its_embedder_cannot_be_repaired(settings):
    raw(settings).execute("DELETE FROM manifest WHERE key = 'embedder'")
    with pytest.raises(IndexMismatchError, match="--index NEW_NAME"):
        Store.open(settings.index_path)
    report = ragkit.doctor(settings, repair=True)
    assert codes(report) == {"manifest"} and not report.problems[0].repairable
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == EXIT_UNHEALTHY and "damaged" in result.stdout


def test_repair_needs_the_write_lock(settings):
    damage_faiss_missing(settings)
    with Store.open(settings.index_path) as writer:
        writer.lock()
        with pytest.raises(IndexLockedError, match="--wait"):
            ragkit.doctor(settings, repair=True)
        assert "faiss" in codes(ragkit.doctor(settings))  # checking needs no lock


def test_healthy_index_json(settings):
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (
        data["ok"] is True
        and data["problems"] == []
        and data["vectors"] == data["faiss_vectors"] > 0
    )


def test_an_interrupted_create_is_not_an_index(tmp_path):
    """A kill while the index was being created leaves a database file; the next run starts over."""
    path = tmp_path / "indexes" / "default"
    path.mkdir(parents=True)
    sqlite3.connect(path / DB_NAME).execute("PRAGMA journal_mode=WAL").close()
    assert not Store.exists(path)
    settings = ragkit.Settings.load(environ={}, index_dir=tmp_path / "indexes", embedder="bow")
    report = ragkit.index(write(tmp_path / "docs", PAGES), settings)
    assert len(report.added) == len(PAGES) and ragkit.doctor(settings).ok
