"""Issue 14.4: --include/--exclude (kept in the index), .ragkitignore, generated assets skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragkit.cli import app
from ragkit.documents import Selection
from tests import fakes  # noqa: F401  (registers the "bow" embedder)

runner = CliRunner()


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "RAGKIT_INCLUDE", "RAGKIT_EXCLUDE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAGKIT_INDEX_DIR", str(tmp_path / "indexes"))


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def index(docs: Path, *args: str) -> dict:
    result = runner.invoke(app, ["index", str(docs), "--embedder", "bow", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def indexed(docs: Path) -> list[str]:
    """The paths the index holds now, as `ragkit status`-independent truth: a no-op run's view."""
    report = index(docs)
    assert not report["added"] and not report["removed"], report
    result = runner.invoke(app, ["search", "the", "--json", "-k", "50", "--mode", "keyword"])
    return sorted({h["path"] for h in json.loads(result.stdout)["hits"]})


SPHINX_BUILD = {
    "index.html": "<html><body><div role='main'><h1>Guide</h1><p>The ferry leaves at nine.</p></div></body></html>",
    "searchindex.js": 'Search.setIndex({"docnames": ["index"], "terms": {"the": 0}})',
    "objects.inv": "# Sphinx inventory version 2",
    "_static/jquery-3.6.0.js": "/*! jQuery v3.6.0 */ (function(){ return the; })();",
    "_static/doctools.js": "const Documentation = { the: 1 };",
    "_sources/index.rst.txt": "Guide\n=====\n\nThe ferry leaves at nine.\n",
    "assets/app.min.js": "var a=1;",
    "assets/bundle.js": "var the=" + "1+" * 800 + "1;\n",
    "assets/helper.js": "// the helper\nfunction helper() { return 1; }\n",
    "notes.md": "# Notes\n\nThe tide table is on the wall.\n",
}


def test_a_sphinx_build_indexes_its_pages_not_its_assets_or_source_copies(tmp_path: Path) -> None:
    docs = write(tmp_path / "html", SPHINX_BUILD)

    report = index(docs)

    assert sorted(report["added"]) == ["assets/helper.js", "index.html", "notes.md"]
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert skipped == {
        "_sources/": "Sphinx copies of the source files (--no-skip-generated indexes it)",
        "_static/": "Sphinx theme assets (--no-skip-generated indexes it)",
        "assets/app.min.js": "minified asset (--no-skip-generated indexes it)",
        "assets/bundle.js": "minified or generated (a line over 1,000 characters;"
        " --no-skip-generated indexes it)",
        "objects.inv": "unsupported type .inv",
        "searchindex.js": "generated search index (--no-skip-generated indexes it)",
    }
    # The text report gives the reasons too.
    result = runner.invoke(app, ["index", str(docs), "--embedder", "bow", "--index", "text"])
    assert "skipped: searchindex.js: generated search index" in result.stderr


def test_no_skip_generated_indexes_them_and_turning_it_back_on_removes_them(
    tmp_path: Path,
) -> None:
    docs = write(tmp_path / "html", SPHINX_BUILD)
    everything = index(docs, "--no-skip-generated")
    assert "searchindex.js" in everything["added"]
    assert "_sources/index.rst.txt" in everything["added"]
    assert "assets/bundle.js" in everything["added"]

    again = index(docs)  # the default again: the generated files leave the index

    assert sorted(again["removed"]) == [
        "_sources/index.rst.txt",
        "_static/doctools.js",
        "_static/jquery-3.6.0.js",
        "assets/app.min.js",
        "assets/bundle.js",
        "searchindex.js",
    ]


def test_include_and_exclude_are_kept_in_the_index_and_a_change_is_applied(
    tmp_path: Path,
) -> None:
    docs = write(
        tmp_path / "docs",
        {
            "guide.md": "# Guide\n\nThe ferry leaves at nine.\n",
            "drafts/idea.md": "# Idea\n\nThe ferry could leave at ten.\n",
            "notes.txt": "The tide table is on the wall.\n",
            "api/ref.html": "<p>The reference of the API.</p>",
        },
    )

    first = index(docs, "--include", "*.md", "--include", "api/**", "--exclude", "drafts/")
    assert sorted(first["added"]) == ["api/ref.html", "guide.md"]
    skipped = {s["path"]: s["reason"] for s in first["skipped"]}
    assert skipped == {
        "drafts/": "excluded by --exclude 'drafts/'",
        "notes.txt": "not matched by --include",
    }

    # A run without the flags uses the stored patterns: nothing changes.
    assert indexed(docs) == ["api/ref.html", "guide.md"]

    # New patterns replace them: newly excluded files leave the index, newly included come in.
    changed = index(docs, "--exclude", "api")
    assert changed["added"] == ["drafts/idea.md"]
    assert changed["removed"] == ["api/ref.html"]
    assert indexed(docs) == ["drafts/idea.md", "guide.md"]

    # An empty pattern clears them.
    cleared = index(docs, "--include", "", "--exclude", "")
    assert sorted(cleared["added"]) == ["api/ref.html", "notes.txt"]


def test_patterns_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = write(
        tmp_path / "docs", {"a.md": "Alpha text.", "b.md": "Beta text.", "c.txt": "Gamma."}
    )
    monkeypatch.setenv("RAGKIT_EXCLUDE", '["a.md", "*.txt"]')
    assert index(docs)["added"] == ["b.md"]


def test_ragkitignore_follows_gitignore_rules(tmp_path: Path) -> None:
    docs = write(
        tmp_path / "docs",
        {
            ".ragkitignore": "\n".join(
                [
                    "# build output and logs",
                    "build/",
                    "*.log.txt",
                    "!keep.log.txt",
                    "/top.md",
                    "**/secret/**",
                    "docs/**/old-*.md",
                    "\\#hash.md",
                ]
            ),
            "build/out.md": "Built.",
            "src/build/deep.md": "Built deep.",
            "build.md": "Not a folder: kept.",
            "run.log.txt": "A log.",
            "keep.log.txt": "A log worth keeping.",
            "top.md": "Anchored: left out.",
            "sub/top.md": "Not at the root: kept.",
            "a/secret/x.md": "Secret.",
            "docs/v1/old-intro.md": "Old.",
            "docs/v1/intro.md": "New.",
            "#hash.md": "Hash.",
            "readme.md": "Read me.",
        },
    )

    report = index(docs)

    assert sorted(report["added"]) == [
        "build.md",
        "docs/v1/intro.md",
        "keep.log.txt",
        "readme.md",
        "sub/top.md",
    ]
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert skipped["build/"] == "excluded by .ragkitignore line 2"
    assert skipped["src/build/"] == "excluded by .ragkitignore line 2"
    assert skipped["run.log.txt"] == "excluded by .ragkitignore line 3"
    assert skipped["top.md"] == "excluded by .ragkitignore line 5"
    assert skipped["a/secret/x.md"] == "excluded by .ragkitignore line 6"
    assert skipped["docs/v1/old-intro.md"] == "excluded by .ragkitignore line 7"
    assert skipped["#hash.md"] == "excluded by .ragkitignore line 8"
    assert skipped[".ragkitignore"] == "hidden"


def test_hidden_files_are_counted_in_the_text_report(tmp_path: Path) -> None:
    docs = write(
        tmp_path / "docs",
        {"a.md": "Alpha.", ".git/config": "x", ".env": "KEY=1", "sub/.cache/x.md": "y"},
    )
    result = runner.invoke(app, ["index", str(docs), "--embedder", "bow"])
    assert result.exit_code == 0, result.output
    assert "skipped: 3 hidden (names starting with '.'; not indexed)" in result.stderr
    assert ".env" not in result.stderr


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "matched"),
    [
        ("*.md", "a/b/c.md", False, True),
        ("/*.md", "a/c.md", False, False),
        ("a/*.md", "a/b/c.md", False, False),
        ("a/**/c.md", "a/c.md", False, True),
        ("a/**/c.md", "a/x/y/c.md", False, True),
        ("**/c.md", "x/c.md", False, True),
        ("logs/", "logs", False, False),
        ("logs/", "x/logs", True, True),
        ("a/**", "a/b/c.md", False, True),
        ("file?.md", "file1.md", False, True),
        ("file[0-9].md", "filex.md", False, False),
        ("file[!0-9].md", "filex.md", False, True),
    ],
)
def test_glob_semantics(pattern: str, path: str, is_dir: bool, matched: bool) -> None:
    reason = Selection(exclude=[pattern], skip_generated=False).reason(path, is_dir=is_dir)
    assert (reason is not None) == matched
