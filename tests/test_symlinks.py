"""Issue 8.1: symlinks that lead out of the indexed folder are not followed unless asked."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragkit.cli import app
from ragkit.documents import discover, load_document, relative_path
from tests import fakes  # noqa: F401  (registers the "bow" embedder)

runner = CliRunner()
SECRET = "OPENAI_API_KEY=sk-live-0123456789abcdef"
OUTSIDE = "points outside the folder (--follow-symlinks reads it)"


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """docs/ with links out of it: relative, absolute, chained, to a folder, and one inside."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAGKIT_INDEX_DIR", str(tmp_path / "indexes"))
    docs, outside, home = tmp_path / "docs", tmp_path / "outside", tmp_path / "home" / ".config"
    for folder in (docs / "sub", outside / "folder", home):
        folder.mkdir(parents=True)
    (docs / "guide.md").write_text("# Guide\n\nThe ferry leaves at nine.\n")
    (outside / "secret.md").write_text(f"# Secret\n\n{SECRET}\n")
    (outside / "folder" / "more.md").write_text(f"Also secret: {SECRET}\n")
    (home / "openai.env").write_text(SECRET + "\n")
    (docs / "escape.md").symlink_to("../outside/secret.md")  # relative
    (docs / "absolute.md").symlink_to(outside / "secret.md")  # absolute
    (docs / "keys.txt").symlink_to("../home/.config/openai.env")  # named .txt, points at .env
    (docs / "sub" / "hop.md").symlink_to("../escape.md")  # a chain: hop -> escape -> outside
    (docs / "elsewhere").symlink_to(outside / "folder", target_is_directory=True)
    (docs / "alias.md").symlink_to("guide.md")  # inside the folder: fine
    return docs


def index(docs: Path, *args: str) -> dict:
    result = runner.invoke(app, ["index", str(docs), "--embedder", "bow", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_links_out_of_the_folder_are_skipped_and_nothing_of_them_is_stored(
    tree: Path, tmp_path: Path
) -> None:
    report = index(tree)

    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert skipped == {
        "absolute.md": OUTSIDE,
        "elsewhere": OUTSIDE,
        "escape.md": OUTSIDE,
        "guide.md": "same file as alias.md",  # names are walked in order; the first one is kept
        "keys.txt": OUTSIDE,
        "sub/hop.md": OUTSIDE,
    }
    assert report["added"] == ["alias.md"]
    db = tmp_path / "indexes" / "default" / "ragkit.db"
    assert SECRET.encode() not in db.read_bytes()
    conn = sqlite3.connect(db)
    try:
        texts = [t for (t,) in conn.execute("SELECT text FROM chunks")]
    finally:
        conn.close()
    assert texts and not any("sk-live" in t for t in texts)
    found = runner.invoke(app, ["search", "OPENAI_API_KEY sk-live", "--mode", "keyword", "--json"])
    assert "secret" not in found.stdout


def test_follow_symlinks_reads_them_and_a_link_has_its_targets_type(tree: Path) -> None:
    report = index(tree, "--follow-symlinks")

    assert sorted(report["added"]) == ["absolute.md", "alias.md", "elsewhere/more.md"]
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    # keys.txt points at openai.env: its type is its target's, which ragkit does not read.
    assert skipped["keys.txt"] == "unsupported type .env"
    assert skipped["escape.md"] == "same file as absolute.md"
    assert skipped["sub/hop.md"] == "same file as absolute.md"


def test_the_setting_comes_from_the_environment(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGKIT_FOLLOW_SYMLINKS", "true")
    assert "absolute.md" in index(tree)["added"]


def test_a_link_inside_the_folder_is_read_as_its_target(tmp_path: Path) -> None:
    (tmp_path / "zreal.md").write_text("# Title\n\nBody.\n")
    (tmp_path / "notes.txt").symlink_to("zreal.md")

    files, skipped = discover(tmp_path)

    assert [relative_path(f, tmp_path) for f in files] == ["notes.txt"]
    assert skipped[0].reason == "same file as notes.txt"
    doc = load_document(files[0], tmp_path)
    assert (doc.path, doc.kind, [h.title for h in doc.headings]) == (
        "notes.txt",
        "markdown",
        ["Title"],
    )
