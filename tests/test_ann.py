"""Approximate search chosen by size: the IVF file is derived, updated, checked and filtered like
the flat one, and never returns a deleted chunk."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from ragkit.chunking import Chunk
from ragkit.cli import app
from ragkit.store import Store
from ragkit.store import vectors as vec
from ragkit.store.schema import needs_migration
from tests import fakes  # noqa: F401  (registers the "bow" embedder)

DIM = 32
N = 2_400  # enough to train an IVF index (vec.IVF_MIN)


def _unit(rows: int, seed: int) -> np.ndarray:
    """Clustered unit vectors, like embeddings: a low-dimensional latent space plus noise."""
    shared = np.random.default_rng(7)
    centres = shared.standard_normal((24, 8)).astype(np.float32)
    project = shared.standard_normal((8, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    z = centres[rng.integers(0, len(centres), rows)] + 0.8 * rng.standard_normal((rows, 8))
    x = (z @ project + 0.1 * rng.standard_normal((rows, DIM))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _chunk(i: int, text: str) -> Chunk:
    return Chunk(
        ordinal=i,
        text=text,
        start_char=0,
        end_char=len(text),
        start_line=1,
        end_line=1,
        page=None,
        heading="",
        tokens=2,
    )


def _store(tmp_path, vector_index: str, docs: int = N // 10) -> tuple[Store, np.ndarray]:
    """An index of ``docs`` documents x 10 chunks with synthetic vectors, saved as asked."""
    store = Store.create(tmp_path / "ix", embedder="synthetic", model="m", dimension=DIM)
    store.lock()
    with store.bulk():
        for d in range(docs):
            store.put_document(
                path=f"doc{d}.txt",
                sha256=str(d),
                size=1,
                mtime=1.0,
                kind="text",
                pages=0,
                warnings=(),
                chunks=[_chunk(i, f"doc {d} part {i}") for i in range(10)],
            )
    pending = store.pending()
    data = _unit(len(pending), seed=1)
    store.set_vectors([i for i, _, _ in pending], data)
    store.save_vectors(vector_index)
    return store, data


def _exact_top(store: Store, queries: np.ndarray, k: int) -> list[set[int]]:
    ids, stored = store.all_vectors()
    sims = queries @ stored.T
    return [set(ids[np.argsort(-row)[:k]].tolist()) for row in sims]


def test_auto_keeps_exact_search_below_the_threshold_and_ivf_above():
    assert vec.choose("auto", vec.IVF_FROM - 1) == vec.FLAT
    assert vec.choose("auto", vec.IVF_FROM) == vec.IVF
    assert vec.choose("flat", 10 * vec.IVF_FROM) == vec.FLAT
    assert vec.choose("ivf", vec.IVF_MIN) == vec.IVF
    assert vec.choose("ivf", vec.IVF_MIN - 1) == vec.FLAT  # too few vectors to train lists


def test_ivf_index_is_recorded_and_finds_the_exact_neighbours(tmp_path):
    store, _ = _store(tmp_path, "ivf")
    assert store.manifest.vector_index == "ivf"
    index, problem = vec.read(store.path, DIM)
    assert problem == "" and vec.kind_of(index) == vec.IVF
    assert np.array_equal(vec.faiss_ids(index), store.chunk_ids())
    queries = _unit(50, seed=2)
    truth = _exact_top(store, queries, 10)
    _, found = store.search_vectors(queries, 10)
    recall = np.mean([len(set(f.tolist()) & t) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.95
    assert store.check().ok
    store.close()


def test_a_small_change_updates_the_ivf_file_without_retraining(tmp_path):
    store, _ = _store(tmp_path, "ivf")
    before = vec.read(store.path, DIM)[0]
    centroids = vec.import_faiss().downcast_index(before.quantizer).reconstruct_n(0, before.nlist)
    gone = int(store.chunk_ids()[0])
    store.remove_documents(["doc0.txt"])
    store.put_document(
        path="new.txt",
        sha256="n",
        size=1,
        mtime=1.0,
        kind="text",
        pages=0,
        warnings=(),
        chunks=[_chunk(0, "new")],
    )
    ((new_id, _, _),) = store.pending()
    target = _unit(1, seed=3)
    store.set_vectors([new_id], target)
    store.save_vectors("ivf")
    after = vec.read(store.path, DIM)[0]
    same = vec.import_faiss().downcast_index(after.quantizer).reconstruct_n(0, after.nlist)
    assert np.array_equal(centroids, same)  # updated in place, not rebuilt
    held = vec.faiss_ids(after)
    assert new_id in held and gone not in held
    assert np.array_equal(held, store.chunk_ids())
    _, found = store.search_vectors(target, 1)
    assert int(found[0][0]) == new_id
    assert store.check().ok
    store.close()


def test_a_deleted_chunk_is_never_returned_while_the_file_lags(tmp_path):
    """A writer deleted a document and has not saved yet: readers use the older file, minus it."""
    store, data = _store(tmp_path, "ivf")
    ids = store.chunk_ids()
    victim = int(ids[5])
    victim_vector = data[5:6]
    store.remove_documents(["doc0.txt"])  # chunks 0..9; the lock stays held, no save
    reader = Store.open(tmp_path / "ix")
    scores, found = reader.search_vectors(victim_vector, 10)
    assert victim not in found[0].tolist()
    assert (found[0] >= 0).all()  # still k hits
    assert set(found[0].tolist()) <= set(reader.chunk_ids().tolist())
    reader.close()
    store.save_vectors()
    assert store.db.conn.execute("SELECT count(*) FROM vectors_deleted").fetchone()[0] == 0
    assert store.manifest.vector_index == "ivf"
    store.close()


@pytest.mark.parametrize("allowed_count", [3, 40, 1500])
def test_filtered_ivf_search_returns_k_hits_when_k_match(tmp_path, allowed_count):
    store, _ = _store(tmp_path, "ivf")
    index = vec.read(store.path, DIM)[0]
    rng = np.random.default_rng(4)
    allowed = np.sort(rng.choice(store.chunk_ids(), allowed_count, replace=False))
    queries = _unit(5, seed=5)
    ids, stored = store.all_vectors()
    keep = np.isin(ids, allowed)
    for via_store in (True, False):
        if via_store:
            _, found = store.search_vectors(queries, 10, allowed=allowed)
        else:  # the IVF path itself, without the exact fallback for few ids
            _, found = vec.search(index, queries, 10, allowed=allowed)
        for row in found:
            hits = [int(i) for i in row if i >= 0]
            assert len(hits) == min(10, allowed_count)
            assert set(hits) <= set(allowed.tolist())
        if allowed_count <= 40:  # every list probed: exact
            exact = ids[keep][np.argsort(-(stored[keep] @ queries[0]))[:10]]
            assert [int(i) for i in found[0] if i >= 0] == exact.tolist()
    store.close()


def test_doctor_compares_ivf_vectors_bit_for_bit_and_repair_rebuilds(tmp_path):
    store, _ = _store(tmp_path, "ivf")
    victim = int(store.chunk_ids()[3])
    changed = np.asarray(_unit(1, seed=9)[0], dtype="<f4").tobytes()
    with store.transaction() as conn:
        conn.execute("UPDATE chunks SET vector = ? WHERE id = ?", (changed, victim))
    report = store.check()
    assert [p.code for p in report.problems] == ["faiss"]
    assert "1 vectors" in report.problems[0].detail
    fixed = store.repair()
    assert fixed.ok and store.manifest.vector_index == "ivf"
    store.close()


def test_an_index_from_an_earlier_release_is_migrated_on_open(tmp_path):
    store, _ = _store(tmp_path, "flat", docs=3)
    hits_before = store.keyword_search("doc part", 10)
    with store.transaction() as conn:
        for name in (
            "chunks_vector_ad",
            "chunks_vector_au",
            "chunks_pending",
            "chunks_with_vector",
        ):
            kind = "TRIGGER" if "_a" in name[-3:] else "INDEX"
            conn.execute(f"DROP {kind} {name}")
        conn.execute("DROP TABLE vectors_deleted")
    store.close()
    assert needs_migration(sqlite3.connect(tmp_path / "ix" / "ragkit.db"))
    again = Store.open(tmp_path / "ix")
    assert not needs_migration(again.db.conn)
    assert again.keyword_search("doc part", 10) == hits_before
    again.lock()
    again.remove_documents(["doc0.txt"])  # the restored trigger records its vectors
    assert again.db.conn.execute("SELECT count(*) FROM vectors_deleted").fetchone()[0] == 10
    again.close()


def test_bulk_writes_commit_together_and_keep_whole_documents_on_interrupt(tmp_path):
    store, _ = _store(tmp_path, "flat", docs=1)

    def put(name: str) -> None:
        store.put_document(
            path=name,
            sha256=name,
            size=1,
            mtime=1.0,
            kind="text",
            pages=0,
            warnings=(),
            chunks=[_chunk(0, name)],
        )

    # A database error rolls the open transaction back: none of its documents stay.
    with pytest.raises(sqlite3.OperationalError), store.bulk():
        put("x.txt")
        store.db.conn.execute("SELECT * FROM no_such_table")
    assert set(store.documents()) == {"doc0.txt"}
    # Ctrl-C keeps the documents written whole, and not the one it interrupted.
    with pytest.raises(KeyboardInterrupt), store.bulk():
        put("y.txt")
        with store._write() as conn:  # a document write cut short halfway
            conn.execute(
                "INSERT INTO documents(path, sha256, size, mtime, kind, status, indexed_at)"
                " VALUES ('z.txt', 'z', 1, 1.0, 'text', 'pending', 'now')"
            )
            raise KeyboardInterrupt
    assert set(store.documents()) == {"doc0.txt", "y.txt"}
    store.remove_documents(["y.txt"])
    with store.bulk(chunks_per_commit=2):
        put("a.txt")
        put("b.txt")  # commits here: a reader sees both
        other = sqlite3.connect(tmp_path / "ix" / "ragkit.db")
        seen = {r[0] for r in other.execute("SELECT path FROM documents")}
        put("c.txt")
    assert seen == {"doc0.txt", "a.txt", "b.txt"}
    assert set(store.documents()) == {"doc0.txt", "a.txt", "b.txt", "c.txt"}
    store.close()


def test_cli_index_builds_the_kind_asked_for_and_status_reports_it(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    words = [f"w{i}" for i in range(400)]
    paragraphs = [" ".join(words[(p * 7 + j) % 400] for j in range(10)) for p in range(1_100)]
    (docs / "big.txt").write_text("\n\n".join(paragraphs))
    runner = CliRunner()
    base = ["--index-dir", str(tmp_path / "ix"), "--index", "t"]
    result = runner.invoke(
        app,
        ["index", str(docs), "--embedder", "bow", "--chunk-tokens", "16", "--chunk-overlap", "0"]
        + base
        + ["--vector-index", "ivf", "--json"],
    )
    assert result.exit_code == 0, result.output
    status = runner.invoke(app, ["status", *base, "--json"])
    info = json.loads(status.output)
    assert info["vectors"] >= vec.IVF_MIN and info["vector_index"] == "ivf"
    assert info["faiss_agrees"]
    # The setting is applied on the next run, even when no file changed.
    again = runner.invoke(app, ["index", str(docs), *base, "--vector-index", "flat"])
    assert again.exit_code == 0, again.output
    assert "vector index: flat" in runner.invoke(app, ["status", *base]).output
    search = runner.invoke(app, ["search", "w3 w4 w5", *base, "--mode", "dense"])
    assert search.exit_code == 0, search.output
    bad = subprocess.run(
        [sys.executable, "-m", "ragkit", "index", str(docs), *base, "--vector-index", "hnsw"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "use auto, flat or ivf" in bad.stderr
    assert "Traceback" not in bad.stderr
