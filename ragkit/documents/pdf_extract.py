"""What the PDF worker process runs: pypdf reading each page's text under the caps.

Runs in the child process (``pdf_worker``): caps are checked as text comes out, the deadline
before every content-stream operator; pypdf's log lines are kept as notes, not printed.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragkit.documents.document import Limits, clip
from ragkit.errors import LoadError

if TYPE_CHECKING:
    from pypdf import PdfReader

# The worker's address space may grow this far past what it uses at start: a backstop for the
# time cap, since pypdf parses a page's whole content stream before any text comes out.
WORKER_MEMORY_BYTES = 1024 * 1024 * 1024


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


def space_width_without_a_space_glyph() -> None:
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
    from pypdf.errors import LimitReachedError

    space_width_without_a_space_glyph()
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
                        raise _CapReached(too_slow(limits))

                try:
                    text = reader.pages[number - 1].extract_text(
                        visitor_text=on_text, visitor_operand_before=on_operator
                    )
                except _CapReached:
                    raise
                except MemoryError:
                    raise _CapReached(out_of_memory()) from None
                except LimitReachedError as exc:  # pypdf's own guard against bombs
                    raise _CapReached(pypdf_limit(number, exc)) from None
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


def pypdf_limit(page: int, exc: Exception) -> str:
    """The reason given for a PDF whose page ran into one of pypdf's own safety limits."""
    return f"page {page} is past pypdf's safety limits ({_reason(exc)}): a decompression bomb?"


def too_slow(limits: Limits) -> str:
    """The reason given for a PDF that ran past the time cap."""
    return f"took longer than {limits.max_seconds_per_file:g} s (--max-seconds-per-file)"


def out_of_memory() -> str:
    """The reason given for a PDF whose reading ran out of the worker's memory allowance."""
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
