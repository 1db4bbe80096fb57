"""Issues 14.1 and 14.2 for HTML: citations give lines of the source file, page furniture is out."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragkit.chunking import chunk_document
from ragkit.cli import app
from ragkit.documents import Document, load_document
from tests import fakes  # noqa: F401  (registers the "bow" embedder)

DATA = Path(__file__).parent / "data"
SPHINX = DATA / "sphinx_stdtypes.html"  # shaped like Debian's Python 3.11 docs (Sphinx basic)
runner = CliRunner()


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text))


def source_words(path: Path, start_line: int, end_line: int) -> set[str]:
    """The words a user sees at those lines of the file (tags dropped, entities decoded)."""
    lines = path.read_text(encoding="utf-8").split("\n")[start_line - 1 : end_line]
    return words(html.unescape(re.sub(r"<[^>]*>", " ", "\n".join(lines))))


def word_counter(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def load(path: Path) -> Document:
    return load_document(path, path.parent)


@pytest.mark.parametrize("max_tokens", [12, 40, 200])
def test_every_chunk_is_found_at_its_cited_lines_of_the_source_file(max_tokens: int) -> None:
    doc = load(SPHINX)
    chunks = chunk_document(doc, word_counter, max_tokens=max_tokens, overlap=2)

    assert len(chunks) > 3
    for chunk in chunks:
        assert 1 <= chunk.start_line <= chunk.end_line
        missing = words(chunk.text) - source_words(SPHINX, chunk.start_line, chunk.end_line)
        assert not missing, (chunk.start_line, chunk.end_line, chunk.text, missing)
    # Lines of the file, not of the extracted text (which is about a third as long).
    partition = next(c for c in chunks if "3-tuple" in c.text)
    assert partition.start_line <= 80 <= partition.end_line  # "3-tuple" is on line 80
    assert partition.start_line > 50  # the extracted text has 49 lines in all


def test_a_cited_search_hit_opens_at_the_spot_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGKIT_INDEX_DIR", str(tmp_path / "indexes"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(SPHINX, docs / "stdtypes.html")
    assert runner.invoke(app, ["index", str(docs), "--embedder", "bow"]).exit_code == 0

    query = ["search", "first occurrence of sep 3-tuple", "--json", "-k", "1", "--mode", "keyword"]
    result = runner.invoke(app, query)

    assert result.exit_code == 0, result.output
    hit = json.loads(result.stdout)["hits"][0]
    cited = source_words(docs / "stdtypes.html", hit["start_line"], hit["end_line"])
    assert {"partition", "occurrence", "separator"} <= cited
    assert words(hit["text"]) <= cited


def test_sphinx_sidebar_navigation_footer_and_permalinks_are_left_out() -> None:
    doc = load(SPHINX)

    for furniture in (
        "Table of Contents",
        "Quick search",
        "Previous topic",
        "Navigation",
        "General Index",
        "Copyright",
        "Last updated",
        "\u00b6",
    ):
        assert furniture not in doc.text, furniture
    assert "Split the string at the first occurrence of sep" in doc.text
    assert [h.title for h in doc.headings] == [
        "Built-in Types \u2014 Python 3.11.2 documentation",
        "Built-in Types",
        "Truth Value Testing",
        "String Methods",
    ]
    chunks = chunk_document(doc, word_counter, max_tokens=60)
    assert "String Methods" in {c.heading.split(" > ")[-1] for c in chunks}
    assert not any("\u00b6" in c.heading for c in chunks)


MKDOCS = """<!doctype html><html><head><title>Install - Tool docs</title></head><body>
<header class="md-header"><nav>Tool docs <a href="/">Home</a></nav></header>
<div class="md-container">
<nav class="md-nav md-nav--primary">Getting started Install Configure Reference</nav>
<main class="md-main">
<article class="md-content__inner">
<h1 id="install">Install<a class="headerlink" href="#install" title="Permanent link">&para;</a></h1>
<p>Run the installer, then restart the shell.</p>
<aside class="md-sidebar">On this page: Install</aside>
</article>
</main>
</div>
<footer class="md-footer">Made with Material for MkDocs</footer>
</body></html>
"""


def test_mkdocs_page_keeps_only_its_main_content(tmp_path: Path) -> None:
    path = tmp_path / "install.html"
    path.write_text(MKDOCS)

    doc = load(path)

    assert (
        doc.text == "Install - Tool docs\n\nInstall\n\nRun the installer, then restart the shell."
    )
    assert [h.title for h in doc.headings] == ["Install - Tool docs", "Install"]


def test_without_a_main_element_furniture_is_dropped_and_an_articles_header_kept(
    tmp_path: Path,
) -> None:
    page = """<html><body>
<header><a href="/">Blog</a> | <a href="/about">About</a></header>
<nav role="navigation">Archive 2023 2022</nav>
<div role="navigation">Breadcrumbs: Home / Posts</div>
<section><header><h1>Spring tides</h1></header>
<p>Spring tides follow the new and the full moon.</p>
<footer>Posted in Sea</footer></section>
<footer>Copyright the blog</footer>
</body></html>"""
    path = tmp_path / "post.html"
    path.write_text(page)

    doc = load(path)

    assert doc.text == (
        "Spring tides\n\nSpring tides follow the new and the full moon.\n\nPosted in Sea"
    )


def test_a_main_marker_in_a_comment_does_not_hide_the_page(tmp_path: Path) -> None:
    path = tmp_path / "odd.html"
    path.write_text("<body><!-- <main> goes here later --><p>Visible words.</p></body>")
    assert load(path).text == "Visible words."


def test_pre_blocks_keep_one_source_line_per_line(tmp_path: Path) -> None:
    path = tmp_path / "code.html"
    path.write_text("<p>Intro</p>\n<pre>\nfirst()\nsecond()\n\nthird()</pre>\n<p>After</p>\n")
    doc = load(path)
    chunks = chunk_document(doc, word_counter, max_tokens=1)
    lines = {c.text: (c.start_line, c.end_line) for c in chunks}
    assert lines["first()"] == (3, 3)
    assert lines["third()"] == (6, 6)
    assert lines["After"] == (7, 7)
