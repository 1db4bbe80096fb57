"""Write corpus/warranty-handbook.pdf by hand: a few pages of Helvetica text, no PDF library.

Run ``python bench/make_corpus_pdf.py`` from the repository root. The output is byte-for-byte
deterministic (no dates, no random ids), so a test can check the committed PDF is up to date.
``build_pdf`` and ``assemble_pdf`` are also imported by tests to make PDFs in a temp folder.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

PAGE_WIDTH, PAGE_HEIGHT = 612, 792  # US Letter, in points
MARGIN = 72
BODY_SIZE, HEADING_SIZE, TITLE_SIZE = 11, 14, 18
LEADING = 15  # points between body lines
WRAP = 86  # characters per body line: Helvetica 11 pt averages about 5.4 pt a character

OUTPUT = Path(__file__).resolve().parent.parent / "corpus" / "warranty-handbook.pdf"
TITLE = "Northwind Bicycle Co-op Warranty Handbook"

# One list of blocks per page. "# " starts the handbook title, "## " a section heading,
# "- " a bullet; anything else is a paragraph; "" is a blank line.
PAGES: list[list[str]] = [
    [
        "# Northwind Bicycle Co-op Warranty Handbook",
        "Edition 4, effective 1 March 2024. Replaces Edition 3 (June 2021).",
        "",
        "## 1. Who this handbook is for",
        (
            "This handbook explains the warranty the co-op gives on everything sold new or "
            "refurbished at our Harbor Street and Millbrook shops. Staff use it at the service "
            "counter; members may ask for a printed copy at any time."
        ),
        "",
        "## 2. Coverage periods",
        (
            "All periods run from the date on the receipt. The warranty covers defects in "
            "materials and workmanship, not wear or damage."
        ),
        "",
        "- Frames and rigid forks sold new: lifetime warranty for the original owner.",
        "- Suspension forks and rear shocks: 2 years.",
        "- Components (drivetrain, brakes, wheels, handlebars, saddles): 2 years.",
        "- Paint and decals: 1 year.",
        (
            "- E-bike drive units (motor and controller): 3 years or 15,000 km, whichever "
            "comes first."
        ),
        (
            "- E-bike batteries: 2 years or 500 full charge cycles, whichever comes first. A "
            "battery that holds less than 60 percent of its rated capacity within that period "
            "counts as defective."
        ),
        "- Labour on workshop repairs: 90 days.",
        "- Refurbished bikes from the Second Spin program: 6 months on frame and components.",
    ],
    [
        "## 3. What the warranty does not cover",
        (
            "The following are never warranty claims, although our mechanics will gladly quote "
            "a repair:"
        ),
        "",
        (
            "- Wear items: tyres, inner tubes, chains, cassettes, chainrings, brake pads, disc "
            "rotors, cables, grips and bar tape."
        ),
        "- Crash damage, theft, vandalism, and damage in transport.",
        (
            "- Riding beyond the intended use: jumps and drops on city or touring bikes, and any "
            "racing on a bike not sold as a race bike."
        ),
        (
            "- Loads above the frame's stated limit. Most of our city frames are rated for 120 kg "
            "including rider, luggage and child seat; cargo frames for 200 kg."
        ),
        "- Assembly or repairs by anyone other than a co-op mechanic or a certified shop.",
        "- Aftermarket e-bike conversion kits: fitting one ends the frame warranty.",
        "- Batteries left fully discharged for more than 3 months.",
        "",
        (
            "Courier clause: bikes used for paid delivery work keep the component warranty, but "
            "the frame warranty is limited to 1 year instead of lifetime."
        ),
    ],
    [
        "## 4. How to make a claim",
        (
            "Claims must be made within 30 days of discovering the defect. Late claims are "
            "refused, so encourage members to come in early."
        ),
        "",
        (
            "- Step 1: the member brings the bike and proof of purchase (a receipt or their "
            "member number) to either shop."
        ),
        "- Step 2: staff fill in Warranty Claim Form W-7 and photograph the defect.",
        "- Step 3: a mechanic inspects the bike within 2 business days.",
        (
            "- Step 4: the co-op decides on the claim within 10 business days. Claims passed on "
            "to a manufacturer can take up to 6 weeks."
        ),
        (
            "- Step 5: if the repair will take longer than 5 business days, members get a free "
            "loaner bike for the duration."
        ),
        "",
        (
            "Warranty desk: warranty@northwindbikes.coop, phone 555-0142. The claims coordinator "
            "is Priya Raman; in her absence, the Millbrook shop manager, Tomas Berg, signs off "
            "claims."
        ),
    ],
    [
        "## 5. Crash Replacement Program",
        (
            "A crash is not a defect, but we do not leave members stranded. If a frame sold new "
            "by the co-op is damaged in a crash within 3 years of purchase, the original owner "
            "may buy a replacement frame at 40 percent off list price. The offer can be used "
            "once per frame and needs the damaged frame handed in."
        ),
        "",
        "## 6. Transfers and disputes",
        (
            "The lifetime frame warranty does not transfer to a new owner. Component warranties "
            "do transfer for their remaining term if the new owner has the original receipt."
        ),
        "",
        (
            "A member who disagrees with a claim decision can ask for a review by the Member "
            "Services Committee, which meets on the first Tuesday of each month. Its decision "
            "is final."
        ),
        "",
        "## 7. Changes from Edition 3",
        "- E-bike battery cover rose from 1 year to 2 years or 500 cycles.",
        "- The claim window grew from 14 days to 30 days.",
        "- The Crash Replacement discount rose from 30 percent to 40 percent.",
    ],
]


def _pdf_string(text: str) -> bytes:
    """Encode text as a PDF literal string in WinAnsi (cp1252), escaping what must be."""
    out = bytearray(b"(")
    for byte in text.encode("cp1252"):
        if byte in b"\\()":
            out += b"\\" + bytes([byte])
        elif byte < 32 or byte > 126:
            out += b"\\%03o" % byte
        else:
            out.append(byte)
    return bytes(out + b")")


def content_stream(blocks: Sequence[str], footer: str = "") -> bytes:
    """Lay out one page's blocks as a content stream; fails loudly if they overflow the page."""
    lines: list[tuple[str, int, str, int]] = []  # (font, size, text, indent)
    for block in blocks:
        if block.startswith("# "):
            lines += [("F2", TITLE_SIZE, block[2:], 0), ("F1", BODY_SIZE, "", 0)]
        elif block.startswith("## "):
            lines.append(("F2", HEADING_SIZE, block[3:], 0))
        elif block.startswith("- "):
            wrapped = textwrap.wrap(block[2:], WRAP - 4)
            lines.append(("F1", BODY_SIZE, "- " + wrapped[0], 0))
            lines += [("F1", BODY_SIZE, rest, 12) for rest in wrapped[1:]]
        elif block:
            lines += [("F1", BODY_SIZE, part, 0) for part in textwrap.wrap(block, WRAP)]
        else:
            lines.append(("F1", BODY_SIZE, "", 0))
    ops = [b"BT"]
    y = PAGE_HEIGHT - MARGIN
    for font, size, text, indent in lines:
        if text:
            ops.append(b"/%s %d Tf" % (font.encode(), size))
            ops.append(b"1 0 0 1 %d %d Tm" % (MARGIN + indent, y))
            ops.append(_pdf_string(text) + b" Tj")
        y -= LEADING + (size - BODY_SIZE)
    if y < MARGIN:
        raise ValueError(f"page overflows by {MARGIN - y} points: {blocks[0]!r}")
    if footer:
        ops += [
            b"/F1 9 Tf",
            b"1 0 0 1 %d %d Tm" % (MARGIN, MARGIN // 2),
            _pdf_string(footer) + b" Tj",
        ]
    ops.append(b"ET")
    return b"\n".join(ops) + b"\n"


def assemble_pdf(streams: Sequence[bytes], *, title: str = "") -> bytes:
    """Wrap raw page content streams in a minimal valid PDF 1.4 file with a correct xref."""
    fonts = b"/Font << /F1 3 0 R /F2 4 0 R >>"
    first_page = 6
    kids = b" ".join(b"%d 0 R" % (first_page + 2 * i) for i in range(len(streams)))
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(streams)),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
        b"<< /Title %s /Producer (ragkit bench/make_corpus_pdf.py) >>" % _pdf_string(title),
    ]
    for i, stream in enumerate(streams):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Resources << %s >> "
            b"/Contents %d 0 R >>" % (PAGE_WIDTH, PAGE_HEIGHT, fonts, first_page + 2 * i + 1)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 5 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(out)


def build_pdf(pages: Sequence[Sequence[str]], *, title: str = "", footer: str = "") -> bytes:
    """A PDF with one page per block list; ``footer`` may use {page} and {pages}."""
    streams = [
        content_stream(blocks, footer.format(page=n, pages=len(pages)))
        for n, blocks in enumerate(pages, start=1)
    ]
    return assemble_pdf(streams, title=title)


def corpus_pdf() -> bytes:
    """The bytes of corpus/warranty-handbook.pdf."""
    return build_pdf(
        PAGES,
        title=TITLE,
        footer="Northwind Bicycle Co-op - Warranty Handbook - page {page} of {pages}",
    )


def main() -> None:
    """Write the corpus PDF and say where."""
    OUTPUT.write_bytes(corpus_pdf())
    sys.stdout.write(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes, {len(PAGES)} pages)\n")


if __name__ == "__main__":
    main()
