"""The one-writer lock of an index folder: ``flock`` on ``write.lock``, holder's pid inside."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from ragkit.errors import IndexLockedError
from ragkit.store.schema import LOCK_NAME


class WriteLock:
    """Held by at most one process per index; released on close or when the process dies."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True when this process holds the lock."""
        return self._fd is not None

    def acquire(self, *, wait: bool = False, timeout: float | None = None) -> bool:
        """Take the lock, or raise IndexLockedError (``wait`` blocks instead).

        Returns False when this process already held it, True when it was just taken.
        """
        if self._fd is not None:
            return False
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if not wait or (deadline is not None and time.monotonic() >= deadline):
                    os.close(fd)
                    raise IndexLockedError(
                        f"index {self.folder.name} is being written by another process"
                        f" ({self.holder()}): wait for it to finish, or pass --wait"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """Who holds the lock, as its file says."""
        try:
            return (self.folder / LOCK_NAME).read_text().strip() or "unknown pid"
        except OSError:
            return "unknown pid"

    def release(self) -> None:
        """Release the lock if this process holds it."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
