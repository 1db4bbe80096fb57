"""Full disks and read-only storage: the one-line errors that say what to do about them."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ragkit.errors import RagkitError

_SQLITE_FULL = 13
_SQLITE_READONLY = 8
_SQLITE_CANTOPEN = 14
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def writable(folder: Path) -> bool:
    """True when this process may create and change files in ``folder`` (a read-only mount or
    missing permissions say no; root on a writable mount always may)."""
    return os.access(folder, os.W_OK)


def disk_full(folder: Path, detail: str) -> RagkitError:
    """The error for a write that found no space left."""
    return RagkitError(
        f"the disk holding index {folder} is full ({detail}): free some space there, then run"
        " the same command again; everything indexed before this is kept"
    )


def read_only(folder: Path) -> RagkitError:
    """The error for a write to an index on read-only storage."""
    return RagkitError(
        f"index {folder} is on read-only storage: search, ask and status work, changing it"
        " does not; copy the folder to writable storage (or remount it read-write) to update it"
    )


def storage_error(exc: BaseException, folder: Path) -> RagkitError | None:
    """The one-line error for a full disk or read-only storage behind ``exc``, else None."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
        text = str(exc)
        if code == _SQLITE_FULL or (code is None and "disk is full" in text):
            return disk_full(folder, text)
        if (code is not None and code & 0xFF == _SQLITE_READONLY) or "readonly database" in text:
            return read_only(folder)
        return None
    if isinstance(exc, OSError):
        if exc.errno in _FULL_ERRNOS:
            return disk_full(folder, os.strerror(exc.errno))
        if exc.errno in _READ_ONLY_ERRNOS and not writable(folder):
            return read_only(folder)
        return None
    # FAISS reports failed writes as RuntimeError with the C library's message in it.
    if isinstance(exc, RuntimeError) and os.strerror(errno.ENOSPC) in str(exc):
        return disk_full(folder, os.strerror(errno.ENOSPC))
    return None


@contextlib.contextmanager
def storage_errors(folder: Path) -> Iterator[None]:
    """Turn a full disk or read-only storage met inside the block into its one-line error."""
    try:
        yield
    except (OSError, RuntimeError, sqlite3.Error) as exc:
        error = storage_error(exc, folder)
        if error is None:
            raise
        raise error from exc
