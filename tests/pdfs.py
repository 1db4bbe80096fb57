"""PDFs built for tests: hostile ones (expanding, shared, endless streams) and a small book."""

from __future__ import annotations

import io

from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject


def _font() -> DictionaryObject:
    return DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )


def pdf_with_contents(
    contents: list[bytes], *, compress: bool = False, shared: bool = False
) -> bytes:
    """A PDF with one page per content stream; ``shared``: every page uses the first stream."""
    writer = PdfWriter()
    font = writer._add_object(_font())
    shared_ref = None
    for data in contents:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        if shared and shared_ref is not None:
            page[NameObject("/Contents")] = shared_ref
            continue
        stream = DecodedStreamObject()
        stream.set_data(data)
        obj = stream.flate_encode() if compress else stream
        ref = writer._add_object(obj)
        page[NameObject("/Contents")] = ref
        shared_ref = ref
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def text_run(word: bytes, times: int) -> bytes:
    """A content stream that shows ``word`` ``times`` times, one text operator each."""
    return b"BT /F1 10 Tf 72 700 Td " + (b"(" + word + b") Tj ") * times + b"ET"


def _escape(text: str) -> bytes:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")


def lines_stream(lines: list[str], *, top: float = 760, step: float = 20) -> bytes:
    """A content stream that shows each line below the previous one."""
    parts = [b"BT /F1 10 Tf 72 %d Td" % top]
    for i, line in enumerate(lines):
        if i:
            parts.append(b"0 -%d Td" % step)
        parts.append(b"(" + _escape(line) + b") Tj")
    parts.append(b"ET")
    return b"\n".join(parts)


def book_pdf(
    pages: list[list[str]],
    *,
    outline: list[tuple[str, int, str | None]] = (),  # type: ignore[assignment]
    roman_front_pages: int = 0,
) -> bytes:
    """A PDF with one page per list of lines, an outline of (title, page index, parent title),
    and the first ``roman_front_pages`` pages labelled i, ii... and the rest 1, 2..."""
    writer = PdfWriter()
    font = writer._add_object(_font())
    for lines in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        stream = DecodedStreamObject()
        stream.set_data(lines_stream(lines))
        page[NameObject("/Contents")] = writer._add_object(stream)
    if roman_front_pages:
        writer.set_page_label(0, roman_front_pages - 1, style="/r")
        writer.set_page_label(roman_front_pages, len(pages) - 1, style="/D")
    items: dict[str, object] = {}
    for title, index, parent in outline:
        items[title] = writer.add_outline_item(
            title=title,
            page_number=index,
            parent=items.get(parent) if parent else None,  # type: ignore[arg-type]
        )
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
