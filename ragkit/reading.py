"""Read a cited span, or a whole indexed document, back from what the index stores.

Text comes only from the index's chunks, stitched by their character offsets (neighbouring
chunks overlap; the overlap is kept once), never from the files on disk: a path that is not an
indexed document is refused, so a server built on this cannot be made to read anything else.
Whitespace between chunks that no chunk kept is restored as line breaks, so line numbers are
the ones the citations give. PDF lines are counted within each page, as citations count them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragkit.errors import QueryError

if TYPE_CHECKING:
    from ragkit.store import Store


class DocumentNotFoundError(QueryError):
    """The path names no document in the index."""


@dataclass(frozen=True)
class Section:
    """Consecutive lines of one document (of one page, for PDFs)."""

    page: int | None
    start_line: int  # 1-based, inclusive
    end_line: int
    text: str  # the lines joined by "\n"


@dataclass(frozen=True)
class Passage:
    """What ``read`` returns: a span of an indexed document, or all of it page by page."""

    path: str
    kind: str
    page: int | None  # the page asked for; None for the whole of a PDF, or for other documents
    start_line: int
    end_line: int
    whole: bool  # True when no line range was asked for
    sections: tuple[Section, ...]

    @property
    def text(self) -> str:
        """The sections' text, pages separated by a blank line."""
        return "\n\n".join(s.text for s in self.sections)


@dataclass(frozen=True)
class _Row:
    page: int | None
    start_line: int
    end_line: int
    start_char: int
    end_char: int
    text: str


def _stitch(rows: Sequence[_Row]) -> tuple[int, list[str]]:
    """The first line number and the lines covered by ``rows`` (one page, by start_char)."""
    parts: list[str] = []
    first = rows[0].start_line
    pos = -1
    line = first
    for r in rows:
        if pos < 0:
            piece = r.text
        elif r.end_char <= pos:
            continue  # wholly inside text already stitched
        elif r.start_char < pos:
            piece = r.text[pos - r.start_char :]  # the overlap is already there
        else:
            # Text no chunk kept (whitespace between sections): keep the line numbering.
            gap = r.start_line - line
            parts.append("\n" * gap if gap > 0 else " ")
            line += max(gap, 0)
            piece = r.text
        parts.append(piece)
        line += piece.count("\n")
        pos = r.end_char
    return first, "".join(parts).split("\n")


def _check_range(start_line: int | None, end_line: int | None) -> None:
    if start_line is not None and start_line < 1:
        raise QueryError(f"start_line must be 1 or more (got {start_line})")
    if end_line is not None and end_line < 1:
        raise QueryError(f"end_line must be 1 or more (got {end_line})")
    if start_line is not None and end_line is not None and end_line < start_line:
        raise QueryError(f"end_line {end_line} is before start_line {start_line}")


def read(
    store: Store,
    path: str,
    *,
    start_line: int | None = None,
    end_line: int | None = None,
    page: int | None = None,
) -> Passage:
    """Lines ``start_line``–``end_line`` (of ``page``, for PDFs) of the indexed document ``path``.

    No lines: the whole document (or the whole page). Only one end given: from line 1, or to
    the last line. Raises DocumentNotFoundError for a path the index does not hold.
    """
    _check_range(start_line, end_line)
    conn = store.db.conn
    doc = conn.execute("SELECT id, kind FROM documents WHERE path = ?", (path,)).fetchone()
    if doc is None:
        raise DocumentNotFoundError(
            f"no document {path!r} in index {store.path.name}: use a path from a search result"
            " or a citation"
        )
    doc_id, kind = int(doc[0]), str(doc[1])
    rows = [
        _Row(*r)
        for r in conn.execute(
            "SELECT page, start_line, end_line, start_char, end_char, text FROM chunks"
            " WHERE document_id = ? ORDER BY start_char",
            (doc_id,),
        )
    ]
    pages = sorted({r.page for r in rows if r.page is not None})
    if page is not None:
        if not pages:
            raise QueryError(f"{path} has no pages (it is not a PDF): leave out page")
        if page not in pages:
            raise QueryError(f"{path} has no indexed page {page} (pages: {_ranges(pages)})")
    elif pages and (start_line is not None or end_line is not None):
        raise QueryError(f"{path} is a PDF: lines are counted per page, so give page as well")
    whole = start_line is None and end_line is None
    groups: list[list[_Row]] = []
    page_numbers: list[int | None] = list(pages) or [None]
    for p in page_numbers:
        if page is None or p == page:
            groups.append([r for r in rows if r.page == p])
    sections: list[Section] = []
    for group in groups:
        if not group:
            continue
        first, lines = _stitch(group)
        last = first + len(lines) - 1
        lo = max(start_line or first, first)
        hi = min(last if end_line is None else end_line, last)
        if lo > hi:
            where = f" of page {page}" if page is not None else ""
            raise QueryError(
                f"lines {start_line or 1}–{end_line or last}{where} of {path} hold no indexed"
                f" text: it has lines {first}–{last}"
            )
        text = "\n".join(lines[lo - first : hi - first + 1])
        sections.append(Section(group[0].page, lo, hi, text))
    if not sections:
        raise QueryError(f"{path} has no indexed text yet: run `ragkit index` again")
    return Passage(
        path=path,
        kind=kind,
        page=page,
        start_line=sections[0].start_line,
        end_line=sections[-1].end_line,
        whole=whole,
        sections=tuple(sections),
    )


def _ranges(numbers: Sequence[int]) -> str:
    """``1-3, 5`` for [1, 2, 3, 5]."""
    out: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(out)
