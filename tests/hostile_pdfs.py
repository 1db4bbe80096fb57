"""PDFs built to hurt a reader: expanding streams, shared streams, endless text operators."""

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
