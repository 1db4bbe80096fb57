"""Tests for ragkit.documents: discovery rules and every loader, on real files in tmp_path."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pypdf import PdfWriter

from bench.make_corpus_pdf import OUTPUT as CORPUS_PDF
from bench.make_corpus_pdf import assemble_pdf, build_pdf, content_stream, corpus_pdf
from ragkit.documents import (
    DEFAULT_MAX_FILE_BYTES,
    Document,
    Heading,
    Skipped,
    discover,
    load_document,
    relative_path,
)
from ragkit.errors import LoadError, RagkitError

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "corpus"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_bytes(data.encode("utf-8"))
    else:
        path.write_bytes(data)
    return path


def load(path: Path) -> Document:
    return load_document(path, path.parent)


def load_error(path: Path) -> LoadError:
    with pytest.raises(LoadError) as caught:
        load(path)
    return caught.value


def titles(doc: Document) -> list[tuple[int, str]]:
    return [(h.level, h.title) for h in doc.headings]


def assert_headings_at_line_starts(doc: Document) -> None:
    for heading in doc.headings:
        assert heading.start == 0 or doc.text[heading.start - 1] == "\n", heading


# --- plain text ------------------------------------------------------------------------------


def test_text_file_normalises_newlines_strips_bom_and_records_file_facts(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbfline one\r\nline two\rline three\n"
    path = write(tmp_path / "notes.txt", data)

    doc = load(path)

    assert doc.text == "line one\nline two\nline three\n"
    assert doc.kind == "text"
    assert doc.path == "notes.txt"
    assert doc.sha256 == hashlib.sha256(data).hexdigest()
    assert doc.size == len(data)
    assert doc.mtime == path.stat().st_mtime
    assert (doc.pages, doc.headings, doc.warnings) == ((), (), ())


def test_bytes_that_are_not_utf8_are_read_as_cp1252_in_a_mixed_file(tmp_path: Path) -> None:
    # Two Latin-1 bytes, plus one U+FFFD spelled in UTF-8. Was: both bytes replaced by U+FFFD
    # with a warning, which left the words unsearchable (issue 8.4).
    path = write(tmp_path / "latin1.txt", b"caf\xe9 and na\xefve \xef\xbf\xbd end")

    doc = load(path)

    assert doc.text == "caf\xe9 and na\xefve \ufffd end"
    assert doc.warnings == ()


@pytest.mark.parametrize(
    "text",
    [
        "Cr\xe8me br\xfbl\xe9e, \u201cp\xe2tisserie\u201d \u2013 \xa320 \u20ac5.\nA\xf1o \xfcber na\xefve",
        "Stra\xdfe f\xfcr Gr\xfc\xdfe; don\u2019t\r\nstop",
    ],
    ids=["french-spanish", "german-crlf"],
)
def test_legacy_western_text_is_decoded_without_a_warning(tmp_path: Path, text: str) -> None:
    doc = load(write(tmp_path / "legacy.txt", text.encode("cp1252")))
    assert doc.text == text.replace("\r\n", "\n")
    assert doc.warnings == ()


@pytest.mark.parametrize(
    ("text", "codec"),
    [
        (
            "\u041f\u0440\u0438\u0432\u0435\u0442, \u043a\u0430\u043a \u0434\u0435\u043b\u0430?",
            "cp1251",
        ),
        ("W\u0142a\u015bciwy j\u0119zyk, \u017c\xf3\u0142w", "cp1250"),
    ],
    ids=["cyrillic", "polish"],
)
def test_a_real_guess_is_reported(tmp_path: Path, text: str, codec: str) -> None:
    doc = load(write(tmp_path / "other.txt", text.encode(codec)))
    assert doc.text == text.encode(codec).decode("cp1252")
    assert doc.warnings == (
        "not UTF-8; guessed Windows-1252 (Latin-1), which may be wrong: convert the file to UTF-8",
    )


def test_legacy_text_is_searchable_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ragkit.cli import app

    monkeypatch.chdir(tmp_path)
    write(
        tmp_path / "docs" / "menu.txt",
        "Dessert: cr\xe8me br\xfbl\xe9e with vanilla.\n".encode("cp1252"),
    )
    write(tmp_path / "docs" / "other.txt", "The ferry timetable changes in winter.\n")
    runner = CliRunner()
    indexed = runner.invoke(app, ["index", "docs"])
    assert indexed.exit_code == 0, indexed.output
    assert "warning" not in indexed.output
    found = runner.invoke(app, ["search", "br\xfbl\xe9e", "--mode", "keyword", "--json"])
    assert found.exit_code == 0, found.output
    assert "menu.txt" in found.output and "cr\xe8me br\xfbl\xe9e" in found.output


def test_utf16_with_bom_is_decoded(tmp_path: Path) -> None:
    doc = load(write(tmp_path / "wide.txt", "héllo\r\nwörld".encode("utf-16")))
    assert doc.text == "héllo\nwörld"


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", bytes(range(1, 9)) * 200],
    ids=["nul-bytes", "control-characters"],
)
def test_binary_content_with_a_text_suffix_is_skipped(tmp_path: Path, data: bytes) -> None:
    error = load_error(write(tmp_path / "picture.txt", data))
    assert (error.reason, error.failed) == ("binary content", False)


@pytest.mark.parametrize("data", [b"", b"  \n\t\r\n", b"\xef\xbb\xbf\n"])
def test_empty_or_whitespace_file_is_skipped(tmp_path: Path, data: bytes) -> None:
    error = load_error(write(tmp_path / "empty.md", data))
    assert (error.reason, error.failed) == ("empty file", False)


def test_code_file_keeps_text_and_has_no_headings(tmp_path: Path) -> None:
    source = "# a comment, not a heading\ndef f():\n    return 1\n"
    doc = load(write(tmp_path / "tool.py", source))
    assert (doc.kind, doc.text, doc.headings) == ("code", source, ())


def test_well_known_files_without_suffix_are_read(tmp_path: Path) -> None:
    assert load(write(tmp_path / "Makefile", "all:\n\techo hi\n")).kind == "code"
    assert load(write(tmp_path / "README", "Read me.\n")).kind == "text"
    assert load(write(tmp_path / "LICENSE", "Apache\n")).kind == "text"


def test_unsupported_suffix_is_a_deliberate_skip(tmp_path: Path) -> None:
    error = load_error(write(tmp_path / "setup.exe", b"MZ"))
    assert (error.reason, error.failed) == ("unsupported type .exe", False)


# --- Markdown --------------------------------------------------------------------------------

MARKDOWN = """\
---
title: Front matter is not a heading
---
# Title

Intro paragraph.

## Section *one* ##

```python
# a comment in a fence
```

~~~
## still inside a tilde fence
```
~~~

    # indented code

Setext One
==========

Setext
over two lines
--------------

- a list item
---

#hashtag is not a heading
####### seven is too many
### Third
"""


def test_markdown_headings_skip_code_and_front_matter(tmp_path: Path) -> None:
    doc = load(write(tmp_path / "guide.md", MARKDOWN))

    assert doc.kind == "markdown"
    assert doc.text == MARKDOWN  # markup is kept as is
    assert titles(doc) == [
        (1, "Title"),
        (2, "Section *one*"),
        (1, "Setext One"),
        (2, "Setext over two lines"),
        (3, "Third"),
    ]
    assert_headings_at_line_starts(doc)
    assert doc.text[doc.headings[3].start :].startswith("Setext\nover two lines\n---")


def test_markdown_unclosed_fence_runs_to_the_end(tmp_path: Path) -> None:
    doc = load(write(tmp_path / "open.markdown", "# Top\n\n```\n# shell comment\n## more\n"))
    assert titles(doc) == [(1, "Top")]


def test_markdown_heading_offsets_follow_crlf_normalisation(tmp_path: Path) -> None:
    doc = load(write(tmp_path / "crlf.md", b"Intro\r\n\r\n# One\r\n\r\nBody\r\n\r\n## Two\r\n"))
    assert [doc.text[h.start : h.start + 6] for h in doc.headings] == ["# One\n", "## Two"]


# --- reStructuredText ------------------------------------------------------------------------

RST = """\
=======
 Title
=======

Intro.

Section A
=========

Sub a
-----

An example::

    Literal
    -------

Section B
=========

----

Too short an underline
--
"""


def test_rst_headings_levels_follow_first_appearance(tmp_path: Path) -> None:
    doc = load(write(tmp_path / "guide.rst", RST))

    assert doc.kind == "rst"
    assert titles(doc) == [(1, "Title"), (2, "Section A"), (3, "Sub a"), (2, "Section B")]
    assert_headings_at_line_starts(doc)
    assert doc.text[doc.headings[0].start :].startswith("=======\n Title")


def test_rst_levels_are_per_document(tmp_path: Path) -> None:
    text = "First\n-----\n\nSecond\n~~~~~~\n\nThird\n-----\n"
    doc = load(write(tmp_path / "other.rst", text))
    assert titles(doc) == [(1, "First"), (2, "Second"), (1, "Third")]


# --- HTML ------------------------------------------------------------------------------------

HTML = """\
<!DOCTYPE html>
<html><head><title>Page
  title</title>
<style>.secret-style { color: red }</style>
<script>var secretScript = "<p>not text</p>";</script>
<meta name="description" content="secret meta">
</head>
<body>
<h1>Main   heading</h1>
<p>Hello&nbsp;<b>bold</b> &amp; <i>it</i>alic
   text.</p>
<noscript>secret noscript</noscript><template><p>secret template</p></template>
<!-- secret comment -->
<h2 id="s">Second <em>part</em></h2>
<ul><li>one</li><li>two</li></ul>
<pre>
  code
    indented</pre>
<table><tr><th>Day</th><th>Hours</th></tr><tr><td>Mon</td><td>10-19</td></tr></table>
<h3>Last</h3><p>The end.</p>
</body></html>
"""


def test_html_keeps_visible_text_and_records_headings(tmp_path: Path) -> None:
    doc = load(write(tmp_path / "page.html", HTML))

    assert doc.kind == "html"
    assert "secret" not in doc.text
    assert "Hello bold & italic text." in doc.text
    assert "\none\ntwo\n" in doc.text
    assert "  code\n    indented" in doc.text
    assert "Day | Hours\nMon | 10-19" in doc.text
    assert titles(doc) == [(1, "Page title"), (1, "Main heading"), (2, "Second part"), (3, "Last")]
    for heading in doc.headings:
        assert doc.text[heading.start :].startswith(heading.title), heading
    assert_headings_at_line_starts(doc)
    assert doc.text.endswith("The end.")


def test_html_title_is_not_repeated_when_a_heading_says_it(tmp_path: Path) -> None:
    page = "<title>Rides</title><p>Home</p><h1>Rides</h1><p>Thursday 18:30</p>"
    doc = load(write(tmp_path / "rides.htm", page))
    assert doc.text == "Home\n\nRides\n\nThursday 18:30"
    assert doc.headings == (Heading(6, 1, "Rides"),)


def test_html_without_visible_text_is_skipped(tmp_path: Path) -> None:
    error = load_error(write(tmp_path / "app.html", "<script>render()</script>\n<div> </div>"))
    assert (error.reason, error.failed) == ("no visible text", False)


def test_html_declared_charset_is_used_when_bytes_are_not_utf8(tmp_path: Path) -> None:
    page = b'<meta charset="windows-1252"><p>caf\xe9 \x93quoted\x94</p>'
    doc = load(write(tmp_path / "old.html", page))
    assert doc.text == "caf\xe9 \u201cquoted\u201d"
    assert doc.warnings == ("not UTF-8; decoded as declared charset windows-1252",)


# --- PDF -------------------------------------------------------------------------------------


def test_corpus_pdf_has_one_page_span_per_page() -> None:
    doc = load_document(CORPUS_PDF, CORPUS)

    assert (doc.path, doc.kind, doc.warnings) == ("warranty-handbook.pdf", "pdf", ())
    assert [p.number for p in doc.pages] == [1, 2, 3, 4]
    assert doc.pages[0].start == 0 and doc.pages[-1].end == len(doc.text)
    for before, after in zip(doc.pages, doc.pages[1:], strict=False):
        assert doc.text[before.end : after.start] == "\n\n"
    facts = ["500 full charge cycles", "120 kg", "Form W-7", "40 percent off"]
    for page, fact in zip(doc.pages, facts, strict=False):
        assert fact in doc.text[page.start : page.end]
        assert doc.text.count(fact) == 1, fact  # each fact sits on its page only
        # The running footer ("Northwind Bicycle Co-op - Warranty Handbook - page 1 of 4") is on
        # every page, so it is dropped (issue 14.2: it used to end up in answers).
        assert "Warranty Handbook - page" not in doc.text[page.start : page.end]


def test_committed_corpus_pdf_matches_its_generator() -> None:
    assert CORPUS_PDF.read_bytes() == corpus_pdf(), "run: python bench/make_corpus_pdf.py"


def test_generated_pdf_skips_pages_without_text(tmp_path: Path) -> None:
    pdf = build_pdf([["Alpha page"], [], ["Gamma (page) three \\ done"]], title="t")
    doc = load(write(tmp_path / "gen.pdf", pdf))

    assert doc.text == "Alpha page\n\nGamma (page) three \\ done"
    assert [(p.number, p.start, p.end) for p in doc.pages] == [(1, 0, 10), (3, 12, 37)]
    assert doc.sha256 == hashlib.sha256(pdf).hexdigest()


def test_one_broken_page_is_reported_and_the_rest_kept(tmp_path: Path) -> None:
    broken = b"BT /F1 11 Tf 1 0 0 1 72 700 Tm (an unterminated string Tj ET"
    pdf = assemble_pdf([content_stream(["First"]), broken, content_stream(["Third"])])

    doc = load(write(tmp_path / "partly.pdf", pdf))

    assert doc.text == "First\n\nThird"
    assert [p.number for p in doc.pages] == [1, 3]
    assert len(doc.warnings) == 1 and doc.warnings[0].startswith("page 2 failed: ")


def test_pdf_whose_every_page_breaks_is_corrupt(tmp_path: Path) -> None:
    pdf = assemble_pdf([b"BT (open string Tj ET"])
    error = load_error(write(tmp_path / "broken.pdf", pdf))
    assert error.reason.startswith("corrupt PDF: no page could be read (page 1 failed: ")
    assert error.failed


@pytest.mark.parametrize(
    "data",
    [b"this is not a PDF at all", b"%PDF-1.4\n", corpus_pdf()[:3000]],
    ids=["garbage", "header-only", "truncated"],
)
def test_corrupt_pdf_fails(tmp_path: Path, data: bytes) -> None:
    error = load_error(write(tmp_path / "bad.pdf", data))
    assert error.reason.startswith("corrupt PDF: ") and len(error.reason) > len("corrupt PDF: ")
    assert error.failed


def _encrypted(user_password: str) -> bytes:
    writer = PdfWriter(clone_from=io.BytesIO(build_pdf([["Secret text"]])))
    # RC4 needs no optional crypto library, so the test runs wherever pypdf does.
    writer.encrypt(user_password, owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_encrypted_pdf_fails(tmp_path: Path) -> None:
    error = load_error(write(tmp_path / "locked.pdf", _encrypted("secret")))
    assert (error.reason, error.failed) == ("encrypted PDF — decrypt it first", True)


def test_pdf_encrypted_with_an_empty_password_loads(tmp_path: Path) -> None:
    doc = load(write(tmp_path / "permissions-only.pdf", _encrypted("")))
    assert doc.text == "Secret text"


def test_pdf_without_a_text_layer_fails(tmp_path: Path) -> None:
    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    writer.add_blank_page(612, 792)
    out = io.BytesIO()
    writer.write(out)
    error = load_error(write(tmp_path / "scan.pdf", out.getvalue()))
    assert (error.reason, error.failed) == ("no text — scanned? (OCR it first)", True)


def test_pypdf_log_lines_become_warnings_not_console_noise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pdf = corpus_pdf()
    xref = pdf.rindex(b"startxref\n") + len(b"startxref\n")
    damaged = pdf[:xref] + b"9" + pdf[xref:]  # points startxref at the wrong byte

    with caplog.at_level(logging.DEBUG):
        doc = load(write(tmp_path / "damaged.pdf", damaged))

    assert len(doc.pages) == 4
    assert any(w.startswith("pypdf: ") for w in doc.warnings)
    assert not [r for r in caplog.records if r.name.startswith("pypdf")]
    assert not logging.getLogger("pypdf").handlers


def test_importing_documents_does_not_import_pypdf() -> None:
    code = "import sys, ragkit.documents; assert 'pypdf' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --- unreadable files ------------------------------------------------------------------------


def test_dangling_symlink_is_unreadable(tmp_path: Path) -> None:
    link = tmp_path / "gone.md"
    link.symlink_to(tmp_path / "missing.md")
    error = load_error(link)
    assert (error.reason, error.failed) == ("unreadable: No such file or directory", True)


@pytest.mark.skipif(IS_ROOT, reason="root can read a chmod 000 file")
def test_file_without_read_permission_is_unreadable(tmp_path: Path) -> None:
    path = write(tmp_path / "private.txt", "secret")
    path.chmod(0)
    try:
        error = load_error(path)
    finally:
        path.chmod(0o644)
    assert (error.reason, error.failed) == ("unreadable: Permission denied", True)


def test_a_folder_named_like_a_file_is_not_read(tmp_path: Path) -> None:
    folder = tmp_path / "looks-like.txt"
    folder.mkdir()
    error = load_error(folder)
    assert (error.reason, error.failed) == ("not a regular file", False)


def test_odd_file_names_are_found_and_loaded(tmp_path: Path) -> None:
    names = ["with space.md", "ünïcödé.txt", "new\nline.txt", "tab\tand 'quote'.rst"]
    for name in names:
        write(tmp_path / "docs" / name, f"Content of {name}\n")

    files, skipped = discover(tmp_path)

    assert skipped == []
    docs = [load_document(f, tmp_path) for f in files]
    assert sorted(d.path for d in docs) == sorted(f"docs/{n}" for n in names)
    for doc in docs:
        assert doc.text == f"Content of {doc.path.removeprefix('docs/')}\n"


# --- discovery -------------------------------------------------------------------------------


def make_tree(root: Path) -> None:
    for rel in [
        "b.md",
        "a.txt",
        "sub/z.rst",
        "sub/deeper/y.html",
        "sub/c.py",
        "Makefile",
        ".hidden.md",
        ".git/config.txt",
        ".cache/notes.md",
        "sub/.obsidian/workspace.json",
        "node_modules/pkg/readme.md",
        "sub/__pycache__/c.txt",
        "env/pyvenv.cfg",
        "env/lib/site.py",
        "index/store.json",
    ]:
        write(root / rel, f"text of {rel}\n")
    write(root / "photo.PNG", b"\x89PNG")
    write(root / "data", "no suffix")


def test_discover_skips_hidden_tool_and_excluded_folders(tmp_path: Path) -> None:
    make_tree(tmp_path)

    files, skipped = discover(tmp_path, exclude=[tmp_path / "index"])

    assert [relative_path(f, tmp_path) for f in files] == [
        "Makefile",
        "a.txt",
        "b.md",
        "sub/c.py",
        "sub/deeper/y.html",
        "sub/z.rst",
    ]
    # Hidden names are passed over without being walked, and reported (they used to vanish
    # silently: issue 8.7); tool folders, virtualenvs and the index stay silent.
    assert skipped == [
        Skipped(".cache", "hidden", failed=False),
        Skipped(".git", "hidden", failed=False),
        Skipped(".hidden.md", "hidden", failed=False),
        Skipped("data", "unsupported type (no extension)", failed=False),
        Skipped("photo.PNG", "unsupported type .png", failed=False),
        Skipped("sub/.obsidian", "hidden", failed=False),
    ]


def test_discover_is_deterministic(tmp_path: Path) -> None:
    make_tree(tmp_path)
    assert discover(tmp_path) == discover(tmp_path)
    files, _ = discover(tmp_path)
    assert "index/store.json" in [relative_path(f, tmp_path) for f in files]  # not excluded here


def test_exclude_matches_through_a_different_spelling_of_the_path(tmp_path: Path) -> None:
    write(tmp_path / "docs" / "a.md", "A")
    write(tmp_path / "docs" / "index" / "meta.json", "{}")
    files, _ = discover(tmp_path / "docs", exclude=[tmp_path / "docs" / "." / "index"])
    assert files == [tmp_path / "docs" / "a.md"]


def test_size_cap_skips_large_files(tmp_path: Path) -> None:
    write(tmp_path / "small.txt", "x" * 10)
    write(tmp_path / "large.txt", "x" * 11)
    write(tmp_path / "huge.txt", "x" * (1024 * 1024 + 1))

    files, skipped = discover(tmp_path, max_file_bytes=10)
    assert files == [tmp_path / "small.txt"]
    assert Skipped("large.txt", "larger than 10 bytes (--max-file-mb)", False) in skipped

    files, skipped = discover(tmp_path, max_file_bytes=1024 * 1024)
    assert skipped == [Skipped("huge.txt", "larger than 1 MB (--max-file-mb)", failed=False)]
    assert DEFAULT_MAX_FILE_BYTES == 50 * 1024 * 1024


def _linked_tree(tmp_path: Path) -> Path:
    root, outside = tmp_path / "root", tmp_path / "outside"
    write(root / "a" / "doc.md", "# Doc")
    write(outside / "extra.md", "# Extra")
    write(outside / "single.txt", "single")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    (root / "b-linked").symlink_to(outside, target_is_directory=True)
    (root / "c-again").symlink_to(root / "a", target_is_directory=True)
    (root / "file-link.txt").symlink_to(outside / "single.txt")
    (root / "self.md").symlink_to(root / "self.md")
    (root / "dangling.md").symlink_to(root / "nowhere.md")
    return root


def test_discover_follows_symlinks_inside_the_folder_but_never_loops(tmp_path: Path) -> None:
    root = _linked_tree(tmp_path)

    files, skipped = discover(root)

    # Links out of the folder used to be followed (issue 8.1): now they are skipped.
    outside = "points outside the folder (--follow-symlinks reads it)"
    assert [relative_path(f, root) for f in files] == ["a/doc.md"]
    assert skipped == [
        Skipped("a/loop", "symlink loop", failed=False),
        Skipped("b-linked", outside, failed=False),
        Skipped("c-again", "same folder as a", failed=False),
        Skipped("dangling.md", "broken symlink", failed=True),
        Skipped("file-link.txt", outside, failed=False),
        Skipped("self.md", "symlink loop", failed=False),
    ]


def test_follow_symlinks_reads_links_out_of_the_folder(tmp_path: Path) -> None:
    root = _linked_tree(tmp_path)

    files, skipped = discover(root, follow_symlinks=True)

    assert [relative_path(f, root) for f in files] == [
        "a/doc.md",
        "b-linked/extra.md",
        "b-linked/single.txt",
    ]
    assert skipped == [
        Skipped("a/loop", "symlink loop", failed=False),
        Skipped("c-again", "same folder as a", failed=False),
        Skipped("dangling.md", "broken symlink", failed=True),
        Skipped("file-link.txt", "same file as b-linked/single.txt", failed=False),
        Skipped("self.md", "symlink loop", failed=False),
    ]
    assert load_document(files[1], root).path == "b-linked/extra.md"


@pytest.mark.skipif(IS_ROOT, reason="root can list a chmod 000 folder")
def test_unlistable_folder_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "locked" / "a.md", "A")
    (tmp_path / "locked").chmod(0)
    try:
        files, skipped = discover(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert files == []
    assert skipped == [Skipped("locked", "permission denied", failed=True)]


def test_root_may_be_a_single_file(tmp_path: Path) -> None:
    path = write(tmp_path / "only.md", "# Only\n")
    assert discover(path) == ([path], [])
    assert relative_path(path, path) == "only.md"
    assert load_document(path, path).path == "only.md"
    assert discover(write(tmp_path / "tool.exe", b"MZ")) == (
        [],
        [Skipped("tool.exe", "unsupported type .exe", failed=False)],
    )


def test_missing_root_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(RagkitError, match="check the path"):
        discover(tmp_path / "nope")


def test_whole_corpus_loads_cleanly() -> None:
    files, skipped = discover(CORPUS)
    assert skipped == []
    docs = [load_document(f, CORPUS) for f in files]
    assert len(docs) >= 12
    assert {d.kind for d in docs} == {"markdown", "rst", "text", "html", "pdf"}
    assert all(d.warnings == () for d in docs)
    assert all(d.headings for d in docs if d.kind in ("markdown", "rst", "html"))
