"""Words pypdf extracts from a PDF before and after ragkit's fix for fonts without a space glyph.

    python bench/pdf_word_gaps.py FILE.pdf [PAGES]

TeX engines (xdvipdfmx) draw word gaps by moving the pen; pypdf then runs words together
("Afewextradetailsonthisexample"). Prints the word counts of the first PAGES pages (all by
default) as pypdf reads them, then as ragkit's PDF worker reads them, and their ratio.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pypdf import PdfReader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def words(path: Path, pages: int | None) -> int:
    reader = PdfReader(path)
    return sum(len(p.extract_text().split()) for p in list(reader.pages)[:pages])


def main() -> None:
    path = Path(sys.argv[1])
    pages = int(sys.argv[2]) if len(sys.argv) > 2 else None
    before = words(path, pages)
    from ragkit.documents.pdf_extract import space_width_without_a_space_glyph

    space_width_without_a_space_glyph()
    after = words(path, pages)
    print(
        f"{path.name}: {before} words as pypdf reads it, {after} with ragkit's fix"
        f" ({after / before:.3f}x)"
    )


if __name__ == "__main__":
    main()
