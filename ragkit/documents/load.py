"""``load_document``: one file's bytes through the reader for its kind into a ``Document``."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from ragkit.documents.discovery import relative_path
from ragkit.documents.document import Document, Limits, kind_of, unsupported
from ragkit.documents.select import LONG_LINE_CHARS
from ragkit.documents.text import Extracted, read_markdown, read_plain, read_rst
from ragkit.errors import LoadError


def _read_html(data: bytes, limits: Limits) -> Extracted:
    from ragkit.documents.html import read_html

    return read_html(data, max_chars=limits.max_chars_per_file)


def _read_pdf(data: bytes, limits: Limits) -> Extracted:
    from ragkit.documents.pdf import read_pdf

    return read_pdf(data, limits)


_READERS: dict[str, Callable[[bytes, Limits], Extracted]] = {
    "text": lambda data, _: read_plain(data),
    "code": lambda data, _: read_plain(data),
    "markdown": lambda data, _: read_markdown(data),
    "rst": lambda data, _: read_rst(data),
    "html": _read_html,
    "pdf": _read_pdf,
}


def load_document(path: Path, root: Path, *, limits: Limits | None = None) -> Document:
    """Read one file into a ``Document``; raises ``LoadError`` saying why it cannot."""
    path = Path(path)
    limits = limits or Limits()
    # A symlink is read as what it points at: its target's name decides the reader.
    kind = kind_of(os.path.realpath(path) if path.is_symlink() else path)
    if kind is None:
        raise LoadError(unsupported(path), failed=False)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block open() for ever
            raise LoadError("not a regular file", failed=False)
        with open(path, "rb") as fh:
            data = fh.read()
            mtime = os.fstat(fh.fileno()).st_mtime
    except OSError as exc:
        raise LoadError(f"unreadable: {exc.strerror or exc}", failed=True) from exc
    extracted = _READERS[kind](data, limits)
    if len(extracted.text) > limits.max_chars_per_file:
        raise LoadError(
            f"more than {limits.max_chars_per_file:,} characters of text (--max-chars-per-file)",
            failed=True,
        )
    if kind == "code" and limits.skip_generated and _has_long_line(extracted.text):
        raise LoadError(
            f"minified or generated (a line over {LONG_LINE_CHARS:,} characters;"
            " --no-skip-generated indexes it)",
            failed=False,
        )
    return Document(
        path=relative_path(path, Path(root)),
        text=extracted.text,
        kind=kind,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        mtime=mtime,
        pages=extracted.pages,
        headings=extracted.headings,
        warnings=extracted.warnings,
        line_map=extracted.line_map,
    )


def _has_long_line(text: str) -> bool:
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        if end - start > LONG_LINE_CHARS:
            return True
        start = end + 1
    return False
