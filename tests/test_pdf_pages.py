"""Issues 14.2, 14.8 and 8.7 for PDFs: running headers and footers dropped, headings from the
outline, printed page labels, and messages that say what a non-PDF or an empty PDF is."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from pypdf import PdfWriter
from typer.testing import CliRunner

from ragkit.chunking import chunk_document
from ragkit.cli import app
from ragkit.documents import Document, load_document
from ragkit.errors import LoadError
from tests import fakes  # noqa: F401  (registers the "bow" embedder)
from tests.pdfs import book_pdf, tex_like_pdf

runner = CliRunner()

BODIES = [
    [
        "Preface",
        "This manual describes gnuplot, a portable plotting program.",
        "It assumes you can start a terminal.",
    ],
    [
        "Acknowledgements",
        "Many people contributed fixes and demos over the years.",
        "Thanks to all of them.",
    ],
    [
        "1 Plotting",
        "The plot command draws functions and data files.",
        "Use replot to redraw the last plot with new settings.",
    ],
    [
        "Ranges can be given before the function, as in plot [0:10] sin(x).",
        "Autoscaling picks a range from the data when none is given.",
    ],
    [
        "1.1 Styles",
        "The with keyword selects a style: lines, points or boxes.",
        "Set style data changes the default for data files.",
    ],
    [
        "Line colours come from the linetype unless lc is given.",
        "Dash types are chosen with dt followed by a number or a pattern.",
    ],
]


def book() -> bytes:
    """Six pages of a manual: left pages headed "N gnuplot 5.4", right pages by the chapter,
    a page number at the foot of each, roman labels on the two front pages, an outline."""
    pages = []
    for number, body in enumerate(BODIES, start=1):
        header = f"{number} gnuplot 5.4" if number % 2 == 0 else f"Chapter 1 Plotting {number}"
        pages.append([header, *body, str(number)])
    return book_pdf(
        pages,
        outline=[("Preface", 0, None), ("1 Plotting", 2, None), ("1.1 Styles", 4, "1 Plotting")],
        roman_front_pages=2,
    )


def load(tmp_path: Path, data: bytes, name: str = "manual.pdf") -> Document:
    path = tmp_path / name
    path.write_bytes(data)
    return load_document(path, tmp_path)


def test_running_headers_and_page_numbers_are_dropped(tmp_path: Path) -> None:
    doc = load(tmp_path, book())

    assert "gnuplot 5.4" not in doc.text
    assert "Chapter 1 Plotting" not in doc.text
    for page, body in zip(doc.pages, BODIES, strict=True):
        assert doc.text[page.start : page.end] == "\n".join(body)


def test_a_line_repeated_inside_pages_is_kept(tmp_path: Path) -> None:
    # Only lines at the top or bottom edge of a page can be running headers or footers.
    pages = [
        ["Top " + str(n), "middle", "Same line", "middle", "Bottom " + str(n * 7)]
        for n in range(1, 6)
    ]
    doc = load(tmp_path, book_pdf(pages))
    assert doc.text.count("Same line") == 5


def test_a_short_pdf_keeps_its_lines(tmp_path: Path) -> None:
    doc = load(tmp_path, book_pdf([["Report", "Alpha"], ["Report", "Beta"]]))
    assert doc.text == "Report\nAlpha\n\nReport\nBeta"


def test_printed_page_labels_are_kept_where_they_differ(tmp_path: Path) -> None:
    doc = load(tmp_path, book())
    assert [(p.number, p.label) for p in doc.pages] == [
        (1, "i"),
        (2, "ii"),
        (3, "1"),
        (4, "2"),
        (5, "3"),
        (6, "4"),
    ]
    plain = load(tmp_path, book_pdf([["One"], ["Two"]]), "plain.pdf")
    assert [p.label for p in plain.pages] == [None, None]


def test_the_outline_gives_pdf_chunks_their_heading_path(tmp_path: Path) -> None:
    doc = load(tmp_path, book())
    assert [(h.level, h.title) for h in doc.headings] == [
        (1, "Preface"),
        (1, "1 Plotting"),
        (2, "1.1 Styles"),
    ]
    for heading in doc.headings:  # placed at the line that carries the title
        assert doc.text[heading.start :].startswith(heading.title)

    chunks = chunk_document(doc, lambda ts: [len(t.split()) for t in ts], max_tokens=200)

    by_page = {c.page: c.heading for c in chunks}
    assert by_page == {
        1: "Preface",
        2: "Preface",
        3: "1 Plotting",
        4: "1 Plotting",
        5: "1 Plotting > 1.1 Styles",
        6: "1 Plotting > 1.1 Styles",
    }


def test_page_labels_and_outline_headings_reach_search_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGKIT_INDEX_DIR", str(tmp_path / "indexes"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "manual.pdf").write_bytes(book())
    assert runner.invoke(app, ["index", str(docs), "--embedder", "bow"]).exit_code == 0

    query = ["search", "dash types pattern", "-k", "1", "--mode", "keyword"]
    hit = json.loads(runner.invoke(app, [*query, "--json"]).stdout)["hits"][0]
    assert (hit["page"], hit["page_label"], hit["heading"]) == (6, "4", "1 Plotting > 1.1 Styles")

    text = runner.invoke(app, query).stdout
    assert "manual.pdf (page 6 (4), line" in text
    assert "gnuplot 5.4" not in text


def test_an_html_page_saved_as_pdf_is_named_for_what_it_is(tmp_path: Path) -> None:
    with pytest.raises(LoadError) as caught:
        load(tmp_path, b"<!DOCTYPE html>\n<html><body><p>Saved page</p></body></html>")
    assert (caught.value.reason, caught.value.failed) == (
        "not a PDF but an HTML page: rename it to .html",
        True,
    )


def test_a_pdf_with_no_pages_is_named_for_what_it_is(tmp_path: Path) -> None:
    out = io.BytesIO()
    PdfWriter().write(out)
    with pytest.raises(LoadError) as caught:
        load(tmp_path, out.getvalue())
    assert (caught.value.reason, caught.value.failed) == ("a PDF with no pages", False)


def test_words_set_by_tex_with_gaps_instead_of_spaces_keep_their_spaces(tmp_path: Path) -> None:
    # Issue 8.5: xdvipdfmx's fonts map no code to a space; pypdf took the width of the glyph at
    # code 32 (838 units) as the space width, so 318-unit word gaps were read as kerning:
    # "Inthisexample,onewantsthecheck-boxes".
    lines = ["In this example, one wants the check-boxes", "to be ticked by the students."]
    doc = load(tmp_path, tex_like_pdf(lines))
    assert doc.text == "\n".join(lines)


def test_small_kerns_inside_words_do_not_become_spaces(tmp_path: Path) -> None:
    lines = ["Typesetting kerning examples"]
    assert load(tmp_path, tex_like_pdf(lines, kern=-90)).text == lines[0]
    assert load(tmp_path, tex_like_pdf(lines, kern=60), "tight.pdf").text == lines[0]


def test_an_index_made_before_page_labels_gains_the_column_when_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    monkeypatch.setenv("RAGKIT_INDEX_DIR", str(tmp_path / "indexes"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "manual.pdf").write_bytes(book())
    assert runner.invoke(app, ["index", str(docs), "--embedder", "bow"]).exit_code == 0
    db = tmp_path / "indexes" / "default" / "ragkit.db"
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE chunks DROP COLUMN page_label")  # as an older ragkit made it
    conn.commit()
    conn.close()

    query = ["search", "dash types pattern", "-k", "1", "--mode", "keyword", "--json"]
    hit = json.loads(runner.invoke(app, query).stdout)["hits"][0]

    assert (hit["page"], hit["page_label"]) == (6, None)  # old chunks: none until the file changes
    conn = sqlite3.connect(db)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(chunks)")]
    conn.close()
    assert "page_label" in columns
