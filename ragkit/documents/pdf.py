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
import io
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ragkit
from ragkit.documents.document import Heading, Limits, Page, clip
from ragkit.documents.text import Extracted, text_lines
from ragkit.errors import LoadError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from pypdf import PdfReader

_NOTES_KEPT = 5  # pypdf can log hundreds of lines for one damaged file
# The worker's address space may grow this far past what it uses at start: a backstop for the
# time cap, since pypdf parses a page's whole content stream before any text comes out.
WORKER_MEMORY_BYTES = 1024 * 1024 * 1024
_GRACE_SECONDS = 5.0  # the worker checks the deadline itself; the kill is for when it cannot
_STARTUP_SECONDS = 120.0


@dataclass
class RawPdf:
    """What the worker read from one PDF: page texts, outline, labels and pypdf's notes."""

    pages: list[tuple[int, str]] = field(default_factory=list)  # (1-based number, text)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # one per page, or none
    outline: list[tuple[int, str, int]] = field(default_factory=list)  # level, title, number
    count: int = 0
    error: tuple[str, bool] | None = None  # (reason, failed) when the file cannot be read


class _CapReached(Exception):
    """A cap stopped extraction; its message is the reason reported for the file."""


# --- in the worker ---------------------------------------------------------------------------


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@contextmanager
def _pdf_notes() -> Iterator[list[str]]:
    """Catch pypdf's log lines and Python warnings into a list instead of the user's console."""
    notes: list[str] = []
    pdf_logger = logging.getLogger("pypdf")
    handler = _ListHandler(notes)
    propagate = pdf_logger.propagate
    pdf_logger.addHandler(handler)
    pdf_logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield notes
        notes.extend(str(w.message) for w in caught)
    finally:
        pdf_logger.removeHandler(handler)
        pdf_logger.propagate = propagate


def _reason(exc: BaseException) -> str:
    return clip(str(exc)) or type(exc).__name__


def _open_pdf(data: bytes) -> PdfReader:
    from pypdf import PasswordType, PdfReader

    # pypdf reports damage through many exception types (PdfReadError, ValueError, KeyError,
    # RecursionError...); each becomes a reported LoadError, not a hidden failure.
    try:
        reader = PdfReader(io.BytesIO(data))
        if not reader.is_encrypted:
            return reader
    except Exception as exc:
        raise LoadError(f"corrupt PDF: {_reason(exc)}", failed=True) from exc
    try:
        unlocked = reader.decrypt("")  # many PDFs are encrypted only to set permissions
    except Exception as exc:  # e.g. pypdf's DependencyError for AES without `cryptography`
        raise LoadError(f"encrypted PDF — decrypt it first ({_reason(exc)})", failed=True) from exc
    if unlocked == PasswordType.NOT_DECRYPTED:
        raise LoadError("encrypted PDF — decrypt it first", failed=True)
    return reader


def _space_width_without_a_space_glyph() -> None:
    """Make pypdf estimate the word gap of a font that has no space glyph from its other widths.

    TeX engines (xdvipdfmx, and pdfTeX for symbol fonts) embed fonts whose word gaps are drawn
    by moving the pen: no code maps to a space. pypdf then takes the width of whatever glyph
    sits at code 32 ("Q", or an 838-unit arrow in DejaVu) as the space width, so real gaps
    (about 330 units) look like kerning and the words run together ("Afewextradetails").
    fontTools (pypdf's "full" extra) only decodes CFF encodings; it does not change this
    (pypdf issues #3973 and #3978). Here such a font gets the estimate pypdf itself uses when
    the code-32 slot is empty: half the default glyph width, or all of it for monospaced fonts.
    """
    from pypdf.generic import _font

    font_class: Any = getattr(_font, "Font", None)
    build = getattr(font_class, "from_font_resource", None)
    if build is None or getattr(build, "ragkit_space_fix", False):
        return
    original = build.__func__

    def from_font_resource(cls: Any, pdf_font_dict: Any) -> Any:
        font = original(cls, pdf_font_dict)
        encoding = font.encoding
        if " " in font.character_map.values() or (
            isinstance(encoding, dict) and " " in encoding.values()
        ):
            return font
        widths = [w for k, w in font.character_widths.items() if k != "default" and w > 0]
        default = font.character_widths.get("default", 0)
        if not default or default == 2 * font.character_widths.get(" ", -1):
            # pypdf derived the default from the wrong glyph too: use the average width.
            default = sum(widths) / len(widths) if widths else 500
        fixed_pitch = bool(font.font_descriptor.flags & 1)
        font.space_width = default if fixed_pitch else default / 2
        return font

    from_font_resource.ragkit_space_fix = True  # type: ignore[attr-defined]
    font_class.from_font_resource = classmethod(from_font_resource)


def extract(data: bytes, limits: Limits) -> RawPdf:
    """Read every page's text, stopping with an error when a cap is reached (runs in the worker)."""
    _space_width_without_a_space_glyph()
    raw = RawPdf()
    deadline = time.monotonic() + limits.max_seconds_per_file
    total = 0
    with _pdf_notes() as notes:
        try:
            reader = _open_pdf(data)
            try:
                raw.count = len(reader.pages)
            except Exception as exc:  # a broken page tree; see _open_pdf
                raise LoadError(f"corrupt PDF: {_reason(exc)}", failed=True) from exc
            for number in range(1, raw.count + 1):
                seen = 0

                def on_text(text: str, *_: Any, page: int = number) -> None:
                    nonlocal seen
                    seen += len(text)
                    if seen > limits.max_chars_per_page:
                        raise _CapReached(
                            f"page {page} has more than {limits.max_chars_per_page:,}"
                            " characters of text (--max-chars-per-page)"
                        )

                def on_operator(*_: Any) -> None:
                    if time.monotonic() > deadline:
                        raise _CapReached(_too_slow(limits))

                try:
                    text = reader.pages[number - 1].extract_text(
                        visitor_text=on_text, visitor_operand_before=on_operator
                    )
                except _CapReached:
                    raise
                except MemoryError:
                    raise _CapReached(_out_of_memory()) from None
                # One bad page should not cost the others; see _open_pdf for the broad except.
                except Exception as exc:  # noqa: BLE001
                    raw.failures.append(f"page {number} failed: {_reason(exc)}")
                    continue
                total += len(text)
                if total > limits.max_chars_per_file:
                    raise _CapReached(
                        f"more than {limits.max_chars_per_file:,} characters of text"
                        " (--max-chars-per-file)"
                    )
                raw.pages.append((number, text))
            raw.labels, raw.outline = _labels(reader), _outline(reader)
        except _CapReached as exc:
            return RawPdf(error=(str(exc), True))
        except LoadError as exc:
            return RawPdf(error=(exc.reason, exc.failed))
    raw.notes = notes
    return raw


def _too_slow(limits: Limits) -> str:
    return f"took longer than {limits.max_seconds_per_file:g} s (--max-seconds-per-file)"


def _out_of_memory() -> str:
    return f"needed more than {WORKER_MEMORY_BYTES // 2**20:,} MB of memory to read"


def _labels(reader: PdfReader) -> list[str]:
    try:
        return [str(label) for label in reader.page_labels]
    except Exception:  # noqa: BLE001 - labels are a nicety; a damaged label tree loses only them
        return []


def _outline(reader: PdfReader) -> list[tuple[int, str, int]]:
    """(level, title, 1-based page) of every bookmark that points at a page, in outline order."""
    found: list[tuple[int, str, int]] = []

    def walk(items: Any, level: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
                continue
            try:
                page = reader.get_destination_page_number(item)
                title = " ".join(str(item.title).split())
            except Exception:  # noqa: BLE001 - a bookmark without a usable target is dropped
                continue
            if page is not None and page >= 0 and title:
                found.append((level, title, page + 1))

    try:
        walk(reader.outline, 1)
    except Exception:  # noqa: BLE001 - a damaged outline loses the headings, not the text
        return []
    return found


# --- in this process -------------------------------------------------------------------------


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
                reason = _too_slow(limits)
            except (EOFError, OSError):
                reason = f"the PDF reader stopped (it may have {_out_of_memory()})"
            self.close()
            raise LoadError(reason, failed=True)

    def close(self) -> None:
        """Stop the child: end of input lets it exit, a kill makes sure."""
        for conn in (self._send, self._recv):
            if conn is not None:
                conn.close()
        self._send = self._recv = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=2)
            except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: it is busy, so kill it
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

    Books alternate headers between left and right pages, so a line counts as running when it
    sits at an edge of at least half the pages of one parity (and of three pages at least).
    """
    if len(pages) < 3:
        return pages
    edges: list[set[str]] = []
    for _, text in pages:
        lines = [line for line in text.split("\n") if line.strip()]
        top, bottom = lines[:_EDGE_LINES], lines[-_EDGE_LINES:]
        edges.append({_shape(line) for line in top + bottom})
    running: set[str] = set()
    for parity in (0, 1):
        group = [e for (number, _), e in zip(pages, edges, strict=True) if number % 2 == parity]
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
