"""``ragkit doctor``: check an index's parts against each other, and mend what can be mended.

The parts: SQLite's rows, the manifest, the FTS5 keyword index and the FAISS file. ``check``
only reads; ``repair`` (under the write lock) fixes what it can without the source files and
leaves chunks without vectors for the next ``ragkit index`` to embed.
"""

from __future__ import annotations

import dataclasses
import shlex
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ragkit.store import vectors
from ragkit.store.schema import BOOKKEEPING, index_flags
from ragkit.store.vectors import FAISS_NAME

if TYPE_CHECKING:
    from ragkit.store.sqlite import Store


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an index, and what fixes it."""

    code: str  # stable short name: "faiss", "manifest", "fts", "orphans", "pending"...
    detail: str  # what was found
    fix: str  # what `ragkit doctor --repair` does about it, or what to run instead
    repairable: bool  # True when Store.repair() fixes it


@dataclass(frozen=True)
class HealthReport:
    """What ``Store.check`` found, and after ``Store.repair`` what it did."""

    index: str
    documents: int = 0
    chunks: int = 0
    vectors: int = 0  # chunks with a vector in SQLite
    faiss_vectors: int | None = None  # vectors in the FAISS file; None when it cannot be read
    problems: tuple[Problem, ...] = ()
    repaired: tuple[str, ...] = ()  # what repair() did, in order

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


# Row conditions shared by check() and repair().
_ORPHAN = "document_id NOT IN (SELECT id FROM documents)"
_CHUNKS_MISSING = "chunks != (SELECT count(*) FROM chunks WHERE document_id = documents.id)"
_LACKS_VECTORS = "EXISTS (SELECT 1 FROM chunks WHERE document_id = documents.id AND vector IS NULL)"


def check(store: Store) -> HealthReport:
    """Verify SQLite, the manifest, the keyword index and FAISS against each other."""
    conn = store.db.conn
    problems: list[Problem] = []

    def found(code: str, detail: str, fix: str, repairable: bool = True) -> None:
        problems.append(Problem(code, detail, fix, repairable))

    quick = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
    if quick != ["ok"]:
        found(
            "sqlite",
            f"the database is damaged: {'; '.join(quick[:3])}",
            "build a new index: `ragkit index PATH --index NEW_NAME`",
            repairable=False,
        )
    if bad := _bad_bookkeeping(store):
        found("manifest", f"manifest lacks or garbles {', '.join(bad)}", "rewrite them")

    sqlite_ids = store.chunk_ids()
    index, unreadable = vectors.read(store.path, store.manifest.dimension)
    if index is None:
        found("faiss", unreadable, "rebuild it from SQLite")
    else:
        ids = vectors.faiss_ids(index)
        if not np.array_equal(ids, sqlite_ids):
            found(
                "faiss",
                f"{FAISS_NAME} holds {ids.size} vectors, SQLite {sqlite_ids.size}:"
                f" {np.setdiff1d(ids, sqlite_ids).size} ids only in FAISS,"
                f" {np.setdiff1d(sqlite_ids, ids).size} only in SQLite",
                "rebuild it from SQLite",
            )
        elif differ := _faiss_vectors_differ(store, index):
            found(
                "faiss",
                f"{differ} vectors in {FAISS_NAME} differ from SQLite's",
                "rebuild it from SQLite",
            )
        if index.ntotal != store.manifest.faiss_count:
            found(
                "faiss-count",
                f"the manifest says {FAISS_NAME} holds {store.manifest.faiss_count} vectors,"
                f" it holds {index.ntotal}",
                "rebuild the FAISS file and record its count",
            )
        elif (kind := vectors.kind_of(index)) != store.manifest.vector_index:
            found(
                "faiss-count",
                f"the manifest says {FAISS_NAME} is a {store.manifest.vector_index} index,"
                f" it is {kind}",
                "rebuild the FAISS file and record its kind",
            )
    if temps := vectors.temp_files(store.path):
        found(
            "temp-files",
            f"{len(temps)} temporary FAISS files left by an interrupted write",
            "delete them",
        )

    def count(sql: str, *args: Any) -> int:
        return int(conn.execute(sql, args).fetchone()[0])

    if n := store.wrong_size_vectors():
        found(
            "vectors",
            f"{n} stored vectors are not {store.manifest.dimension} floats long",
            "clear them; the next `ragkit index` embeds those chunks again",
        )
    if n := count(f"SELECT count(*) FROM chunks WHERE {_ORPHAN}"):
        found("orphans", f"{n} chunks belong to no document", "delete them")
    try:
        conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
    except sqlite3.DatabaseError as exc:
        found(
            "fts",
            f"the keyword index does not match the chunks ({exc})",
            "rebuild the keyword index",
        )
    if n := count(f"SELECT count(*) FROM documents WHERE {_CHUNKS_MISSING}"):
        found(
            "chunks",
            f"{n} documents do not have the chunks they should",
            "mark them so the next `ragkit index` reads them again",
        )
    if n := count(f"SELECT count(*) FROM documents WHERE status = 'indexed' AND {_LACKS_VECTORS}"):
        found(
            "status",
            f"{n} documents marked indexed lack vectors",
            "mark them pending; the next `ragkit index` embeds what they lack",
        )
    pending = count("SELECT count(*) FROM documents WHERE status = 'pending'")
    if pending:
        waiting = count("SELECT count(*) FROM chunks WHERE vector IS NULL")
        source = shlex.quote(store.manifest.source) if store.manifest.source else "PATH"
        found(
            "pending",
            f"{pending} documents are not fully indexed ({waiting} chunks wait for vectors):"
            " an index run was interrupted, or a repair marked them to be read again",
            f"run `ragkit index {source}{index_flags(store.path)}`; doctor does not embed",
            repairable=False,
        )
    counts = store.counts()
    return HealthReport(
        index=str(store.path),
        documents=counts["documents"],
        chunks=counts["chunks"],
        vectors=counts["vectors"],
        faiss_vectors=None if index is None else int(index.ntotal),
        problems=tuple(problems),
    )


def _bad_bookkeeping(store: Store) -> list[str]:
    rows = dict(store.db.conn.execute("SELECT key, value FROM manifest").fetchall())
    bad = []
    for key, default in BOOKKEEPING.items():
        if key == "source":
            continue  # set by the first `ragkit index`; an index built by hand has none
        value = rows.get(key)
        if value is None or (default.isdigit() and not str(value).isdigit()):
            bad.append(key)
    return bad


def _faiss_vectors_differ(store: Store, index: Any) -> int:
    """How many vectors in ``index`` are not bit-for-bit those SQLite holds for their ids.

    Both kinds keep full vectors (IndexFlat storage, IVF-Flat list codes), so the comparison
    is exact for the approximate index too; only its lists' assignment is not checked.
    """
    if index.ntotal == 0 or store.wrong_size_vectors():
        return 0
    order, held = vectors.held_vectors(index)
    ids, stored = store.all_vectors()  # sorted by id, the same set as `order`
    mine = stored[np.searchsorted(ids, order)]
    return int(np.count_nonzero(np.any(held != mine, axis=1)))


def repair(store: Store) -> HealthReport:
    """Fix what ``check`` finds that can be fixed without the source files (takes the lock).

    Returns the state afterwards, with ``repaired`` saying what was done. Chunks left
    without vectors are for the next ``ragkit index`` to embed.
    """
    store.lock()
    before = {p.code for p in check(store).problems}
    done: list[str] = []
    with store.transaction() as conn:
        if "manifest" in before:
            bad = _bad_bookkeeping(store)
            conn.executemany(
                "INSERT INTO manifest(key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [(k, BOOKKEEPING[k]) for k in bad],
            )
            done.append(f"reset manifest {', '.join(bad)}")
        if "orphans" in before:
            n = conn.execute(f"DELETE FROM chunks WHERE {_ORPHAN}").rowcount
            done.append(f"deleted {n} orphan chunks")
        if "vectors" in before:
            size = 4 * store.manifest.dimension
            n = conn.execute(
                "UPDATE chunks SET vector = NULL WHERE vector IS NOT NULL AND length(vector) != ?",
                (size,),
            ).rowcount
            done.append(f"cleared {n} vectors of the wrong size")
        if "chunks" in before:
            # An empty hash never matches a file, so the next run reads and re-chunks them;
            # until then what is left of them stays searchable.
            n = conn.execute(
                "UPDATE documents SET sha256 = '', status = 'pending', chunks ="
                f" (SELECT count(*) FROM chunks WHERE document_id = documents.id)"
                f" WHERE {_CHUNKS_MISSING}"
            ).rowcount
            done.append(f"marked {n} documents to be read again")
        if before & {"vectors", "status"}:
            n = conn.execute(
                "UPDATE documents SET status = 'pending'"
                f" WHERE status = 'indexed' AND {_LACKS_VECTORS}"
            ).rowcount
            done.append(f"marked {n} documents pending")
        if "fts" in before:
            conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')")
            done.append("rebuilt the keyword index")
    if done or before & {"faiss", "faiss-count", "temp-files"}:
        store.save_vectors(rebuild=True)  # also deletes temporary files
        done.append(f"rebuilt {FAISS_NAME} from SQLite ({store.manifest.faiss_count} vectors)")
    after = check(store)
    return dataclasses.replace(after, repaired=tuple(done))
