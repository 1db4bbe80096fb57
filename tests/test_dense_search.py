"""The dense query path does only the query's work: FAISS's scores are the cosines, a stamped
FAISS file is trusted without reading every id, and searches from many threads do not queue."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from numpy.typing import NDArray

import ragkit
from ragkit import retriever
from ragkit.store import Store, freshness
from ragkit.store import vectors as vec
from tests import fakes  # noqa: F401  (registers the "bow" embedder)
from tests.test_ann import DIM, _chunk, _store, _unit
from tests.test_open_index import PAGES
from tests.test_pipeline import write


class FixedEmbedder:
    """Embeds every query as one given vector (the seam a query goes through)."""

    name = "synthetic"
    model = "m"
    dimension = DIM
    max_tokens = 64

    def __init__(self, vector: NDArray[np.float32]) -> None:
        self.vector = vector

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [1 for _ in texts]

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return np.tile(self.vector, (len(texts), 1))


def _no_vector_reads(*args: object, **kwargs: object) -> None:
    raise AssertionError("dense search read stored vectors back from SQLite")


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_dense_hits_take_their_cosine_from_faiss_without_reading_vectors(
    tmp_path, monkeypatch, kind
):
    store, _ = _store(tmp_path, kind)
    query = _unit(1, seed=11)[0]
    ids, stored = store.all_vectors()
    cosine = dict(zip(ids.tolist(), (stored @ query).tolist(), strict=True))
    exact = ids[np.argsort(-(stored @ query))[:10]].tolist()
    embedder = FixedEmbedder(query)
    with monkeypatch.context() as patch:
        patch.setattr(Store, "vectors", _no_vector_reads)
        hits = retriever.search(store, embedder, "q", k=10, mode="dense")
        floor = hits[4].dense_score
        above = retriever.search(store, embedder, "q", k=10, mode="dense", min_score=floor)
    assert len(hits) == 10
    if kind == "flat":
        assert [h.chunk_id for h in hits] == exact
    for hit in hits:
        assert hit.dense_score == pytest.approx(cosine[hit.chunk_id], abs=1e-5)
        assert hit.score == pytest.approx(hit.dense_score, abs=1e-6)
    assert [h.chunk_id for h in above] == [h.chunk_id for h in hits[:5]]
    # MMR needs the vectors (redundancy between chunks): it still reads them.
    diverse = retriever.search(store, embedder, "q", k=10, mode="dense", diversify=True)
    assert len(diverse) == 10 and all(h.dense_score is not None for h in diverse)
    store.close()


def _count_calls(monkeypatch, name: str) -> list[int]:
    calls = [0]
    real = getattr(Store, name)

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Store, name, counted)
    return calls


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_freshly_written_file_is_trusted_without_reading_every_id(tmp_path, monkeypatch, kind):
    store, data = _store(tmp_path, kind)
    store.close()
    reads = _count_calls(monkeypatch, "chunk_ids")
    reader = Store.open(tmp_path / "ix")
    index = reader.faiss_index()
    assert reads == [0]
    assert vec.kind_of(index) == kind
    _, found = reader.search_vectors(data[7:8], 1)
    assert int(found[0][0]) == int(reader.chunk_ids()[7])
    reader.close()


def _add(store: Store, name: str, vectors: NDArray[np.float32] | None) -> list[int]:
    """A document of len(vectors) chunks; with vectors stored unless None (left pending)."""
    count = 3 if vectors is None else len(vectors)
    store.put_document(
        path=name,
        sha256=name,
        size=1,
        mtime=1.0,
        kind="text",
        pages=0,
        warnings=(),
        chunks=[_chunk(i, f"{name} part {i}") for i in range(count)],
    )
    ids = [i for i, t, _ in store.pending() if t.startswith(name)]
    if vectors is not None:
        store.set_vectors(ids, vectors)
    return ids


@pytest.mark.parametrize("change", ["new chunks", "pending embedded", "deleted", "older file"])
def test_the_stamp_never_vouches_for_a_file_that_lags_sqlite(tmp_path, change):
    """Each way SQLite can move past the file without a new write: the reader compares ids."""
    store, _ = _store(tmp_path, "flat", docs=20)
    target = _unit(3, seed=21)
    older = tmp_path / "older.faiss"
    if change == "pending embedded":  # pending below the highest id when the file is written
        waiting = _add(store, "late.txt", None)
        _add(store, "after.txt", _unit(2, seed=22))
        store.save_vectors()
        store.set_vectors(waiting, target)
        expected = waiting
    elif change == "new chunks":
        expected = _add(store, "new.txt", target)
    elif change == "deleted":
        gone = [int(i) for i in store.chunk_ids()[:10]]  # doc0.txt
        store.remove_documents(["doc0.txt"])
    else:
        shutil.copy(store.path / vec.FAISS_NAME, older)
        expected = _add(store, "new.txt", target)
        store.save_vectors()
        shutil.copy(older, store.path / vec.FAISS_NAME)  # e.g. restored from a backup
    store.unlock()  # the writer stops without saving: the file lags SQLite
    reader = Store.open(tmp_path / "ix")
    file = reader.path / vec.FAISS_NAME
    stale = vec.read(reader.path, DIM, mapped=True)[0]
    assert not freshness.holds(reader.db.conn, file, stale, before=freshness.identity(file))
    if change == "deleted":
        _, found = reader.search_vectors(_unit(40, seed=23), 20)
        assert not set(gone) & set(found.ravel().tolist())
    else:
        _, found = reader.search_vectors(target, 1)
        assert found[:, 0].tolist() == expected
    assert np.array_equal(vec.faiss_ids(reader.faiss_index()), reader.chunk_ids())
    reader.close()
    store.close()


def test_concurrent_dense_searches_match_serial_ones_and_leave_thread_settings(tmp_path):
    settings = ragkit.Settings.load(environ={}, index_dir=tmp_path / "ix", embedder="bow")
    ragkit.index(write(tmp_path / "docs", PAGES), settings)
    queries = [f"{a} {b}" for a, b in zip(PAGES, list(PAGES)[3:], strict=False)] * 4
    faiss = vec.import_faiss()
    threads_before = faiss.omp_get_max_threads()
    with ragkit.open(settings, mode="dense", k=5) as idx:
        serial = [[h.chunk_id for h in idx.search(q)] for q in queries]
        start = threading.Barrier(4)

        def run(part: int) -> list[list[int]]:
            start.wait()
            return [[h.chunk_id for h in idx.search(q)] for q in queries[part::4]]

        with ThreadPoolExecutor(4) as pool:
            parts = list(pool.map(run, range(4)))
    for part, results in enumerate(parts):
        assert results == serial[part::4]
    assert faiss.omp_get_max_threads() == threads_before


def test_per_call_overrides_are_checked_once_and_bad_ones_every_time(tmp_path, monkeypatch):
    settings = ragkit.Settings.load(environ={}, index_dir=tmp_path / "ix", embedder="bow")
    ragkit.index(write(tmp_path / "docs", PAGES), settings)
    checks = [0]
    real = ragkit.Settings.replace

    def counted(self, **changes):
        checks[0] += 1
        return real(self, **changes)

    monkeypatch.setattr(ragkit.Settings, "replace", counted)
    with ragkit.open(settings) as idx:
        checks[0] = 0
        sizes = [len(idx.search("tyre pressure", mode="dense", k=k)) for k in (1, 2, 1, 2, 1)]
        assert sizes == [1, 2, 1, 2, 1]
        assert checks == [2]  # one check per distinct set of overrides
        for _ in range(2):
            with pytest.raises(ragkit.ConfigError):
                idx.search("tyre pressure", k=0)
        assert checks == [4]


@pytest.mark.parametrize("mode", ["dense", "keyword", "hybrid"])
def test_hits_carry_every_field_a_hit_has(tmp_path, mode):
    """Hits are filled field by field for speed: each has all of Hit's fields, as Hit() makes."""
    settings = ragkit.Settings.load(environ={}, index_dir=tmp_path / "ix", embedder="bow")
    ragkit.index(write(tmp_path / "docs", PAGES), settings)
    with ragkit.open(settings, mode=mode, k=4) as idx:
        hits = idx.search("tyre pressure gauge")
    assert len(hits) == 4
    for hit in hits:
        fields = dataclasses.asdict(hit)
        assert set(fields) == {f.name for f in dataclasses.fields(retriever.Hit)}
        again = retriever.Hit(**fields)
        assert again == hit and hash(again) == hash(hit) and repr(again) == repr(hit)
        with pytest.raises(dataclasses.FrozenInstanceError):
            hit.rank = 9  # type: ignore[misc]
