"""The child process that reads PDFs for ``ragkit.documents.pdf``: ``python -m`` this module."""

from __future__ import annotations

import os
import signal
import sys


def _limit_memory(extra: int) -> None:
    """Cap the address space at what it is now plus ``extra`` bytes (where the OS allows it)."""
    try:
        import resource

        with open("/proc/self/statm") as fh:
            now = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):
        return  # no /proc (macOS) or no resource module (Windows): the time cap still holds
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = now + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def main() -> None:
    """Answer (bytes, limits) requests on stdin with RawPdf replies on stdout until stdin ends."""
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    replies = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # anything printed goes to stderr, never into the reply stream
    requests = Connection(os.dup(0), writable=False)
    import pypdf  # noqa: F401 - imported before "ready" so no deadline pays for it

    from ragkit.documents.pdf_extract import extract

    _limit_memory(int(sys.argv[1]))
    replies.send("ready")
    while True:
        try:
            data, limits = requests.recv()
        except EOFError:
            return
        replies.send(extract(data, limits))


if __name__ == "__main__":
    main()
