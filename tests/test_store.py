"""The store: SQLite is the truth, FAISS is derived from it and checked against it."""

from __future__ import annotations

import numpy as np
import pytest

from ragkit.chunking import Chunk
from ragkit.errors import IndexLockedError, IndexNotFoundError
from ragkit.store import FAISS_NAME, Store, cache_key, vectors
from ragkit.store.vectors import faiss_ids as _faiss_ids
from tests.fakes import BagOfWordsEmbedder


def _chunks(texts: list[str]) -> list[Chunk]:
    return [
        Chunk(
            ordinal=i,
            text=t,
            start_char=0,
            end_char=len(t),
            start_line=1,
            end_line=1,
            page=None,
            heading="",
            tokens=len(t.split()),
        )
        for i, t in enumerate(texts)
    ]


def _filled(tmp_path, texts_by_path):
    emb = BagOfWordsEmbedder()
    store = Store.create(
        tmp_path / "ix", embedder=emb.name, model=emb.model, dimension=emb.dimension
    )
    for path, texts in texts_by_path.items():
        store.put_document(
            path=path,
            sha256=path,
            size=1,
            mtime=1.0,
            kind="text",
            pages=0,
            warnings=(),
            chunks=_chunks(texts),
        )
    pending = store.pending()
    store.set_vectors([i for i, _, _ in pending], emb.embed([t for _, t, _ in pending]), 7)
    store.save_vectors()
    return store, emb


def test_open_missing_index_says_how_to_build_one(tmp_path):
    with pytest.raises(IndexNotFoundError, match="ragkit index"):
        Store.open(tmp_path / "nothing")


def test_faiss_ids_are_sqlite_chunk_ids(tmp_path):
    store, _ = _filled(tmp_path, {"a.txt": ["red apples", "green pears"], "b.txt": ["blue sky"]})
    import faiss

    index = faiss.read_index(str(store.path / FAISS_NAME))
    ids = sorted(faiss.vector_to_array(index.id_map).tolist())
    rows = [r[0] for r in store.db.conn.execute("SELECT id FROM chunks ORDER BY id")]
    assert ids == rows and len(ids) == 3
    # And each stored vector is the chunk's own: searching with a chunk's text finds that chunk.
    emb = BagOfWordsEmbedder()
    for chunk_id, text in store.db.conn.execute("SELECT id, text FROM chunks"):
        scores, found = store.search_vectors(emb.embed([text]), 1)
        assert found[0][0] == chunk_id and scores[0][0] == pytest.approx(1.0, abs=1e-5)
    assert store.manifest.faiss_count == 3 and store.manifest.tokens_embedded == 7


def test_reopened_store_gives_identical_results(tmp_path):
    store, emb = _filled(
        tmp_path,
        {
            "a.txt": ["red apples and pears", "green pears"],
            "b.txt": ["blue sky at night", "red sky"],
        },
    )
    q = emb.embed(["red sky"])
    before = store.search_vectors(q, 4)
    store.close()
    again = Store.open(tmp_path / "ix")
    after = again.search_vectors(q, 4)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0])


def test_faiss_rebuilt_from_sqlite_when_they_disagree(tmp_path):
    store, emb = _filled(tmp_path, {"a.txt": ["red apples", "green pears"]})
    store.close()
    (tmp_path / "ix" / FAISS_NAME).write_bytes(b"garbage")
    again = Store.open(tmp_path / "ix")
    assert not again.vectors_agree()
    scores, ids = again.search_vectors(emb.embed(["green pears"]), 1)
    text = again.chunks([int(ids[0][0])])[int(ids[0][0])].text
    assert text == "green pears"
    again.save_vectors()
    assert again.vectors_agree()


def test_replacing_a_document_reuses_vectors_of_unchanged_text(tmp_path):
    store, _ = _filled(tmp_path, {"a.txt": ["one two", "three four"]})
    missing, reused = store.put_document(
        path="a.txt",
        sha256="x",
        size=2,
        mtime=2.0,
        kind="text",
        pages=0,
        warnings=(),
        chunks=_chunks(["one two", "five six"]),
    )
    assert (missing, reused) == (1, 1)
    assert [t for _, t, _ in store.pending()] == ["five six"]
    assert store.documents()["a.txt"].status == "pending"


def test_second_writer_is_refused(tmp_path):
    store, _ = _filled(tmp_path, {"a.txt": ["x y"]})
    store.lock()
    other = Store.open(tmp_path / "ix")
    with pytest.raises(IndexLockedError, match="--wait"):
        other.lock()
    store.unlock()
    other.lock()  # free again
    other.close()
    store.close()


def test_fts_follows_chunk_changes(tmp_path):
    store, _ = _filled(tmp_path, {"a.txt": ["zebra crossing"], "b.txt": ["lion king"]})

    def fts(word: str) -> int:
        return store.db.conn.execute(
            "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?", (word,)
        ).fetchone()[0]

    assert fts("zebra") == 1
    store.remove_documents(["a.txt"])
    assert fts("zebra") == 0 and fts("lion") == 1
    store.put_document(
        path="b.txt",
        sha256="y",
        size=1,
        mtime=1.0,
        kind="text",
        pages=0,
        warnings=(),
        chunks=_chunks(["tiger stripes"]),
    )
    assert fts("lion") == 0 and fts("tiger") == 1


def test_the_cache_key_names_embedder_model_and_dimension(tmp_path):
    text = "the same words"
    keys = {
        cache_key(text, embedder="bow", model="hash-256", dimension=256),
        cache_key(text, embedder="bow", model="hash-512", dimension=256),
        cache_key(text, embedder="bow", model="hash-256", dimension=128),
        cache_key(text, embedder="local", model="hash-256", dimension=256),
    }
    assert len(keys) == 4
    store, _ = _filled(tmp_path, {"a.txt": [text]})
    stored = store.db.conn.execute("SELECT cache_key FROM chunks").fetchone()[0]
    assert stored == cache_key(text, embedder="bow", model="hash-256", dimension=256)
    store.close()


def test_a_crash_before_faiss_is_saved_never_serves_a_stale_vector(tmp_path):
    """Chunk ids are never reused, so a FAISS file from before the crash cannot pass for current."""
    store, emb = _filled(tmp_path, {"a.txt": ["red apples"], "b.txt": ["blue whales"]})
    # b.txt holds the highest chunk id. Replace it and store its vector, then "crash" before
    # save_vectors: the FAISS file still has the old vector under the old id.
    store.put_document(
        path="b.txt",
        sha256="b2",
        size=1,
        mtime=2.0,
        kind="text",
        pages=0,
        warnings=(),
        chunks=_chunks(["green frogs"]),
    )
    pending = store.pending()
    store.set_vectors([i for i, _, _ in pending], emb.embed([t for _, t, _ in pending]))
    store.close()

    again = Store.open(tmp_path / "ix")
    scores, ids = again.search_vectors(emb.embed(["green frogs"]), 1)
    assert again.chunks([int(ids[0][0])])[int(ids[0][0])].text == "green frogs"
    assert scores[0][0] == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(_faiss_ids(again.faiss_index()), again.chunk_ids())
    again.close()


def test_a_wide_vector_slice_holds_fewer_rows():
    """Slices are sized in bytes: 1536-dim vectors come a few thousand rows at a time."""
    assert vectors.slice_rows(1536) < vectors.slice_rows(384)
    assert vectors.slice_rows(1536) * 4 * 1536 <= 64 << 20
    assert vectors.slice_rows(10**12) == 1


@pytest.mark.parametrize("kind", ["flat", "ivf"])
@pytest.mark.parametrize("dimension", [16, 64])
def test_faiss_builds_add_slices_whose_rows_depend_on_the_dimension(
    tmp_path, monkeypatch, kind, dimension
):
    import faiss

    # 6,400 bytes a slice: 100 rows of 16 floats, 25 rows of 64 floats.
    monkeypatch.setattr(vectors, "SLICE_BYTES", 6_400, raising=False)
    most = 6_400 // (4 * dimension)
    store = Store.create(tmp_path / "ix", embedder="e", model="m", dimension=dimension)
    store.lock()

    def put(first: int, count: int) -> None:
        texts = [f"chunk {i}" for i in range(first, first + count)]
        store.put_document(
            path=f"{first}.txt", sha256=str(first), size=1, mtime=1.0, kind="text",
            pages=0, warnings=(), chunks=_chunks(texts),
        )  # fmt: skip
        pending = [i for i, _, _ in store.pending()]
        data = np.random.default_rng(first).standard_normal((len(pending), dimension))
        data /= np.linalg.norm(data, axis=1, keepdims=True)
        store.set_vectors(pending, data.astype(np.float32))

    added: list[int] = []
    for cls in (faiss.IndexIDMap2, faiss.IndexIVFFlat):
        real = cls.add_with_ids

        def spy(self, x, ids, real=real):
            added.append(len(ids))
            return real(self, x, ids)

        monkeypatch.setattr(cls, "add_with_ids", spy)
    put(0, 1_200)
    store.save_vectors(kind)  # built anew from every stored vector
    assert sum(added) == 1_200 and max(added) == most
    sliced = [len(ids) for ids, _ in store.vector_slices()]
    assert sum(sliced) == 1_200 and max(sliced) == most
    added.clear()
    put(10_000, 300)
    store.save_vectors(kind)  # updated in place: only the new vectors are added
    assert sum(added) == 300 and max(added) == most
    assert len(store.search_vectors(np.ones((1, dimension), np.float32), 5)[1][0]) == 5
    store.close()
