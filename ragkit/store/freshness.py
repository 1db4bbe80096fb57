"""Whether the FAISS file still holds exactly SQLite's vectors, told without reading every id.

Comparing the file's ids with every chunk id that has a vector costs a read of both (about a
second at a million chunks), which a cold ``ragkit search`` cannot afford. So each write of
the file records a stamp in the manifest, in the transaction that records the new generation:

- the file's identity (inode, size, modification time) and how many vectors it holds;
- the highest chunk id with a vector, and how many chunks at or below it were waiting for one.

The file still matches SQLite when the stamp describes the file on disk and, since it was
written: no vector left SQLite (``vectors_deleted`` is empty: triggers fill it on every delete,
and the write empties it), no chunk above that id has a vector (chunk ids are never reused, so
every new chunk is above it), and no chunk at or below it got one (the count waiting is the
same: it only falls as they get vectors or go, and only rises by losing a vector, which
``vectors_deleted`` records). Anything else (an older index without a stamp, a writer at
work, a killed one) is decided by the full comparison, as before.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

STAMP_KEY = "faiss_stamp"


def identity(file: Path) -> tuple[int, int, int] | None:
    """What ``holds`` compares: the file's (inode, size, mtime), or None when it is missing."""
    try:
        st = os.stat(file)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _highest_and_waiting(conn: sqlite3.Connection) -> tuple[int, int]:
    top = conn.execute("SELECT max(id) FROM chunks WHERE vector IS NOT NULL").fetchone()[0] or 0
    waiting = conn.execute(
        "SELECT count(*) FROM chunks WHERE vector IS NULL AND id <= ?", (top,)
    ).fetchone()[0]
    return int(top), int(waiting)


def stamp(conn: sqlite3.Connection, file: Path, count: int) -> str:
    """The stamp of ``file`` (holding ``count`` vectors), just written from SQLite's vectors.

    Call inside the write transaction that records the file, under the write lock.
    """
    held = identity(file) or (0, 0, 0)
    return ":".join(str(v) for v in (*held, count, *_highest_and_waiting(conn)))


def holds(
    conn: sqlite3.Connection, file: Path, index: Any, *, before: tuple[int, int, int] | None
) -> bool:
    """True when the stamp proves ``index`` (read from ``file``, whose identity was ``before``
    just before the read) holds exactly the chunk ids that have vectors in SQLite now.

    False means "not proven", never "different": the caller then compares the ids.
    """
    after = identity(file)
    if after is None or after != before:  # replaced while it was read: which one is unknown
        return False
    in_transaction = conn.in_transaction
    if not in_transaction:
        conn.execute("BEGIN")  # the stamp and the checks against it from one snapshot
    try:
        row = conn.execute("SELECT value FROM manifest WHERE key = ?", (STAMP_KEY,)).fetchone()
        try:
            *stamped, count, top, waiting = (int(v) for v in str(row[0]).split(":"))
        except (TypeError, ValueError):  # no stamp (an older index), or a damaged one
            return False
        if tuple(stamped) != after or int(index.ntotal) != count:
            return False
        if conn.execute("SELECT 1 FROM vectors_deleted LIMIT 1").fetchone():
            return False
        return _highest_and_waiting(conn) == (top, waiting)
    except sqlite3.OperationalError:  # an index from before vectors_deleted, not yet migrated
        return False
    finally:
        if not in_transaction and conn.in_transaction:
            conn.execute("COMMIT")
