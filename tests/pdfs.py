"""PDFs built for tests: hostile ones (expanding, shared, endless streams) and a small book."""

from __future__ import annotations

import io

from pypdf import PdfWriter
from pypdf.generic import (
    ArrayObject,
    DecodedStreamObject,
    DictionaryObject,
    NameObject,
    NumberObject,
    TextStringObject,
)


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


def tex_like_pdf(lines: list[str], *, gap: int = 318, kern: int = -40) -> bytes:
    """A PDF set the way xdvipdfmx sets DejaVu Serif: a Type0 font (Identity-H) whose ToUnicode
    maps no code to a space, a wide glyph at code 32, word gaps drawn as TJ offsets, and a
    small kern in the middle of every longer word."""
    chars = sorted({c for line in lines for c in line if c != " "})
    cids = {c: 40 + i for i, c in enumerate(chars)}  # clear of 32, which holds another glyph
    bfchar = b"\n".join(b"<%04X> <%04X>" % (cid, ord(c)) for c, cid in cids.items())
    cmap = (
        b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n"
        b"/CMapName /Adobe-Identity-UCS def /CMapType 2 def\n"
        b"1 begincodespacerange <0000> <FFFF> endcodespacerange\n"
        b"%d beginbfchar\n%s\nendbfchar\n"
        b"endcmap CMapName currentdict /CMap defineresource pop end end" % (len(cids), bfchar)
    )
    writer = PdfWriter()
    to_unicode = DecodedStreamObject()
    to_unicode.set_data(cmap)
    widths = ArrayObject([NumberObject(32), ArrayObject([NumberObject(838)])])
    widths += [NumberObject(40), ArrayObject([NumberObject(500) for _ in chars])]
    descendant = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/CIDFontType2"),
            NameObject("/BaseFont"): NameObject("/YSDOVX+DejaVuSerif"),
            NameObject("/CIDSystemInfo"): DictionaryObject(
                {
                    NameObject("/Registry"): TextStringObject("Adobe"),
                    NameObject("/Ordering"): TextStringObject("Identity"),
                    NameObject("/Supplement"): NumberObject(0),
                }
            ),
            NameObject("/DW"): NumberObject(636),
            NameObject("/W"): widths,
        }
    )
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type0"),
            NameObject("/BaseFont"): NameObject("/YSDOVX+DejaVuSerif"),
            NameObject("/Encoding"): NameObject("/Identity-H"),
            NameObject("/DescendantFonts"): ArrayObject([writer._add_object(descendant)]),
            NameObject("/ToUnicode"): writer._add_object(to_unicode),
        }
    )
    ops = [b"BT /F1 10 Tf 72 700 Td"]
    for i, line in enumerate(lines):
        if i:
            ops.append(b"0 -14 Td")
        parts = []
        for j, word in enumerate(line.split(" ")):
            if j:
                parts.append(b"-%d" % gap)
            codes = [b"%04X" % cids[c] for c in word]
            if len(codes) >= 4:  # a kern inside the word: no word gap
                half = len(codes) // 2
                parts += [b"<" + b"".join(codes[:half]) + b">", b"%d" % kern]
                codes = codes[half:]
            parts.append(b"<" + b"".join(codes) + b">")
        ops.append(b"[" + b" ".join(parts) + b"] TJ")
    ops.append(b"ET")
    page = writer.add_blank_page(612, 792)
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
    )
    stream = DecodedStreamObject()
    stream.set_data(b"\n".join(ops))
    page[NameObject("/Contents")] = writer._add_object(stream)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()
