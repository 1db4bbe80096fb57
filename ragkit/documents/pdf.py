"""PDFs: each page's text, read by pypdf in a worker process under time, memory and size caps.

A small PDF can expand without bound (a stream that inflates to gigabytes, one huge stream
shared by every page, a run of text operators repeated millions of times) and pypdf has no way
to cancel an extraction, so pages are read in a child process that is killed at the deadline.
Character caps are checked as text comes out. Back in this process, lines repeated at the top
or bottom of most pages (running headers and footers) are dropped, the outline (bookmarks)
becomes the heading path, and printed page labels are kept where they differ.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ragkit
from ragkit.documents.document import Heading, Limits, Page, clip
from ragkit.documents.pdf_extract import WORKER_MEMORY_BYTES, RawPdf, out_of_memory, too_slow
from ragkit.documents.text import Extracted, text_lines
from ragkit.errors import LoadError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

_NOTES_KEPT = 5  # pypdf can log hundreds of lines for one damaged file
_GRACE_SECONDS = 5.0  # the worker checks the deadline itself; the kill is for when it cannot
_STARTUP_SECONDS = 120.0


class _Worker:
    """One long-lived child process that extracts PDFs, restarted after it is killed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: Any = None
        self._send: Connection | None = None
        self._recv: Connection | None = None

    def _start(self) -> None:
        import subprocess
        from multiprocessing.connection import Connection

        env = dict(os.environ)
        # The child must import this same ragkit, wherever it was imported from.
        package_parent = str(Path(ragkit.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            [sys.executable, "-m", "ragkit.documents.pdf_worker", str(WORKER_MEMORY_BYTES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self._send = Connection(os.dup(proc.stdin.fileno()), readable=False)
        self._recv = Connection(os.dup(proc.stdout.fileno()), writable=False)
        proc.stdin.close()
        proc.stdout.close()
        try:
            ready = self._recv.poll(_STARTUP_SECONDS) and self._recv.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.close()
            raise LoadError("the PDF reader process did not start (see its error above)")

    def run(self, data: bytes, limits: Limits) -> RawPdf:
        """The worker's reading of one PDF; a LoadError when it overran or died."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            assert self._send is not None and self._recv is not None
            try:
                self._send.send((data, limits))
                if self._recv.poll(limits.max_seconds_per_file + _GRACE_SECONDS):
                    result: RawPdf = self._recv.recv()
                    return result
                reason = too_slow(limits)
            except (EOFError, OSError):
                reason = f"the PDF reader stopped (it may have {out_of_memory()})"
            self.close()
            raise LoadError(reason, failed=True)

    def close(self) -> None:
        """Stop the child: end of input lets it exit, a kill makes sure."""
        for conn in (self._send, self._recv):
            if conn is not None:
                conn.close()
        self._send = self._recv = None
        if self._proc is not None:
            import subprocess

            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:  # still busy with a PDF: kill it
                self._proc.kill()
                self._proc.wait()
            self._proc = None


_WORKER = _Worker()
atexit.register(_WORKER.close)

_HTML_START = re.compile(rb"\s*(<!doctype html|<html|<head|<body|<!--)", re.IGNORECASE)


def read_pdf(data: bytes, limits: Limits) -> Extracted:
    """A PDF's page texts (furniture dropped), page labels, and headings from its outline."""
    if b"%PDF-" not in data[:1024] and _HTML_START.match(data[:1024]):
        raise LoadError("not a PDF but an HTML page: rename it to .html", failed=True)
    raw = _WORKER.run(data, limits)
    if raw.error is not None:
        raise LoadError(raw.error[0], failed=raw.error[1])
    if raw.count == 0:
        raise LoadError("a PDF with no pages", failed=False)
    texts = _drop_running_lines(
        [
            (n, t.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").strip())
            for n, t in raw.pages
        ]
    )
    parts: list[str] = []
    pages: list[Page] = []
    offset = 0
    for number, page_text in texts:
        if not page_text:
            continue
        if parts:
            offset += 2  # the "\n\n" between pages
        label = raw.labels[number - 1] if len(raw.labels) == raw.count else None
        pages.append(
            Page(number, offset, offset + len(page_text), label if label != str(number) else None)
        )
        parts.append(page_text)
        offset += len(page_text)
    if not parts:
        if raw.failures:
            raise LoadError(f"corrupt PDF: no page could be read ({raw.failures[0]})", failed=True)
        raise LoadError("no text — scanned? (OCR it first)", failed=True)
    text = "\n\n".join(parts)
    unique = list(dict.fromkeys(raw.notes))
    kept = [f"pypdf: {clip(note)}" for note in unique[:_NOTES_KEPT]]
    if len(unique) > _NOTES_KEPT:
        kept.append(f"pypdf: {len(unique) - _NOTES_KEPT} more warnings")
    return Extracted(
        text,
        pages=tuple(pages),
        headings=tuple(_outline_headings(text, pages, raw.outline)),
        warnings=tuple(raw.failures + kept),
    )


# --- running headers and footers -------------------------------------------------------------

_DIGITS = re.compile(r"\d+")
_EDGE_LINES = 2  # lines looked at, at the top and at the bottom of each page


def _shape(line: str) -> str:
    """A line with its numbers blurred, so "222 gnuplot 5.4" and "223 gnuplot 5.4" compare equal."""
    return _DIGITS.sub("#", " ".join(line.lower().split()))


def _drop_running_lines(pages: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Pages without the lines that repeat at their top or bottom on most pages.

    A line counts as running when it sits at an edge of at least three pages and of at least
    half of them all, or of half the left or the right pages (books alternate their headers).
    """
    if len(pages) < 3:
        return pages
    edges: list[set[str]] = []
    for _, text in pages:
        lines = [line for line in text.split("\n") if line.strip()]
        top, bottom = lines[:_EDGE_LINES], lines[-_EDGE_LINES:]
        edges.append({_shape(line) for line in top + bottom})
    running: set[str] = set()
    groups = [edges] + [
        [e for (number, _), e in zip(pages, edges, strict=True) if number % 2 == parity]
        for parity in (0, 1)
    ]
    for group in groups:
        counts = Counter(shape for e in group for shape in e)
        running |= {s for s, n in counts.items() if n >= 3 and 2 * n >= len(group)}
    if not running:
        return pages
    return [(number, _strip_edges(text, running)) for number, text in pages]


def _strip_edges(text: str, running: set[str]) -> str:
    lines = text.split("\n")
    for _ in range(_EDGE_LINES):
        while lines and not lines[0].strip():
            lines.pop(0)
        if lines and _shape(lines[0]) in running:
            lines.pop(0)
    for _ in range(_EDGE_LINES):
        while lines and not lines[-1].strip():
            lines.pop()
        if lines and _shape(lines[-1]) in running:
            lines.pop()
    return "\n".join(lines).strip()


# --- outline ---------------------------------------------------------------------------------


def _outline_headings(
    text: str, pages: list[Page], outline: list[tuple[int, str, int]]
) -> list[Heading]:
    """A heading for each bookmark: at the line of its page that carries its title, else the
    page's first line (bookmarks on pages without text go to the next page that has some)."""
    headings: list[Heading] = []
    numbers = [p.number for p in pages]
    for level, title, number in outline:
        at = next((i for i, n in enumerate(numbers) if n >= number), None)
        if at is None:
            continue
        page = pages[at]
        start = page.start
        wanted = _shape(title)
        if numbers[at] == number:
            for offset, line in text_lines(text[page.start : page.end]):
                if wanted and wanted in _shape(line):
                    start = page.start + offset
                    break
        headings.append(Heading(start, level, title))
    headings.sort(key=lambda h: h.start)  # stable: outline order among equal offsets
    return headings
