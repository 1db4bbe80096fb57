"""Bad inputs through `ragkit index`: each reported with its reason, none stops the run, nothing
already indexed is lost, and the exit code says whether a file that should be indexed failed."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import pytest
from pypdf import PdfWriter
from typer.testing import CliRunner

import ragkit
from bench.make_corpus_pdf import assemble_pdf, build_pdf, content_stream
from ragkit.cli import EXIT_FILES_FAILED, app
from ragkit.store import Store
from tests import fakes  # noqa: F401  (registers the "bow" embedder)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
runner = CliRunner()


def encrypted_pdf() -> bytes:
    writer = PdfWriter(clone_from=io.BytesIO(build_pdf([["Secret plans for the regatta"]])))
    writer.encrypt("secret", owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def scanned_pdf() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def partly_broken_pdf() -> bytes:
    broken = b"BT /F1 11 Tf 1 0 0 1 72 700 Tm (an unterminated string Tj ET"
    return assemble_pdf(
        [
            content_stream(["Canoes need two paddles"]),
            broken,
            content_stream(["Rafts float on barrels"]),
        ]
    )


def make_unreadable(path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make ``path`` a file whose read fails; returns the reason ragkit should give."""
    if IS_ROOT:  # root reads any chmod 000 file: make the loader's open() fail with EIO instead
        # (a link to /proc/self/mem would point outside the folder, and is not a .txt file).
        from ragkit.documents import load

        path.write_text("private words")
        real_open = open

        def failing_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
            if Path(file) == path:
                raise OSError(errno.EIO, "Input/output error", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(load, "open", failing_open, raising=False)
        return "unreadable: Input/output error"
    path.write_text("private words")
    path.chmod(0)
    return "unreadable: Permission denied"


def index_json(docs: Path, *args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["index", str(docs), "--embedder", "bow", "--json", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture
def env(tmp_path, monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAGKIT_INDEX_DIR", str(tmp_path / "indexes"))
    return ragkit.Settings.load(environ={}, index_dir=tmp_path / "indexes")


def test_every_bad_input_is_reported_with_its_reason_and_none_stops_the_run(
    tmp_path, env, monkeypatch
):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text("# Kayaks\n\nKayaks are steered with a double-bladed paddle.\n")
    (docs / "corrupt.pdf").write_bytes(b"this is not a PDF at all")
    (docs / "locked.pdf").write_bytes(encrypted_pdf())
    (docs / "scan.pdf").write_bytes(scanned_pdf())
    (docs / "partly.pdf").write_bytes(partly_broken_pdf())
    (docs / "binary.txt").write_bytes(b"\x00\x01\x02\x03 looks like text by name only \x00" * 20)
    (docs / "latin1.txt").write_bytes("Caf\xe9 au lait on the harbour terrace.".encode("latin-1"))
    (docs / "empty.md").write_text("  \n")
    (docs / "big.txt").write_text("huge " * 1000)  # 5000 bytes, over the 0.002 MB cap below
    unreadable = make_unreadable(docs / "unreadable.txt", monkeypatch)
    (docs / "loop").symlink_to(".")
    (docs / "dangling.md").symlink_to(docs / "nowhere.md")
    odd = ["with space.md", "ünïcödé.txt", "new\nline.txt"]
    for name in odd:
        (docs / name).write_text(f"Odd names still index: {name.split()[0]} and sailboats.\n")

    code, report = index_json(docs, "--max-file-mb", "0.002")

    assert code == EXIT_FILES_FAILED and report["ok"] is False
    failed = {f["path"]: f["reason"] for f in report["failed"]}
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert failed.keys() == {
        "corrupt.pdf",
        "locked.pdf",
        "scan.pdf",
        "unreadable.txt",
        "dangling.md",
    }
    assert failed["corrupt.pdf"].startswith("corrupt PDF: ")
    assert failed["locked.pdf"] == "encrypted PDF — decrypt it first"
    assert failed["scan.pdf"] == "no text — scanned? (OCR it first)"
    assert failed["unreadable.txt"] == unreadable
    assert failed["dangling.md"] == "broken symlink"
    assert skipped == {
        "binary.txt": "binary content",
        "empty.md": "empty file",
        "big.txt": "larger than 2097 bytes (--max-file-mb)",
        "loop": "symlink loop",
    }
    warnings = {w["path"]: w["warning"] for w in report["warnings"]}
    assert "latin1.txt" not in warnings  # read as cp1252: was "invalid UTF-8 replaced" (8.4)
    assert warnings["partly.pdf"].startswith("page 2 failed: ")
    assert sorted(report["added"]) == sorted(["good.md", "latin1.txt", "partly.pdf", *odd])

    # What could be read is searchable, down to the good pages of a partly broken PDF.
    hits = ragkit.search("rafts float on barrels", env)
    assert (hits[0].path, hits[0].page) == ("partly.pdf", 3)
    assert ragkit.search("cafe harbour terrace", env)[0].path == "latin1.txt"
    for name in odd:
        assert any(h.path == name for h in ragkit.search(f"odd names {name.split()[0]}", env, k=10))

    # The text summary names every file and its reason too (a fresh index: warnings are reported
    # when a file is read, and an unchanged file is not read again).
    result = runner.invoke(
        app, ["index", str(docs), "--max-file-mb", "0.002", "--index", "text", "--embedder", "bow"]
    )
    assert result.exit_code == EXIT_FILES_FAILED
    assert "failed: scan.pdf: no text — scanned? (OCR it first)" in result.stderr
    assert "skipped: big.txt: larger than 2097 bytes (--max-file-mb)" in result.stderr
    assert "warning: partly.pdf: page 2 failed: " in result.stderr
    assert "0 skipped" not in result.stderr and "5 failed" in result.stderr

    # With only deliberate skips left, the run succeeds.
    for name in ("corrupt.pdf", "locked.pdf", "scan.pdf", "unreadable.txt", "dangling.md"):
        (docs / name).unlink()
    code, report = index_json(docs, "--max-file-mb", "0.002")
    assert (
        code == 0
        and report["ok"] is True
        and report["failed"] == []
        and len(report["skipped"]) == 4
    )


def test_a_file_that_breaks_keeps_its_indexed_version(tmp_path, env, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "boats.pdf").write_bytes(
        build_pdf([["Schooners carry two masts and fore-and-aft sails"]])
    )
    (docs / "tides.txt").write_text("Spring tides follow the new and the full moon.\n")
    (docs / "gulls.md").write_text("Gulls steal chips on the promenade.\n")
    code, first = index_json(docs)
    assert code == 0 and len(first["added"]) == 3

    (docs / "boats.pdf").write_bytes(b"%PDF-1.4\n")  # truncated by a failed copy
    reason = make_unreadable(docs / "tides.txt", monkeypatch)
    (docs / "gulls.md").write_text("")  # emptied on purpose: nothing of it belongs in the index
    code, report = index_json(docs)

    assert code == EXIT_FILES_FAILED
    assert {f["path"]: f["reason"] for f in report["failed"]}.keys() == {"boats.pdf", "tides.txt"}
    assert {f["path"]: f["reason"] for f in report["failed"]}["tides.txt"] == reason
    assert report["skipped"] == [{"path": "gulls.md", "reason": "empty file", "failed": False}]
    assert report["removed"] == ["gulls.md"] and report["documents"] == 2
    # The versions indexed before are still there, whole and searchable.
    assert ragkit.search("schooners masts sails", env)[0].path == "boats.pdf"
    assert ragkit.search("spring tides full moon", env)[0].path == "tides.txt"
    with Store.open(env.index_path) as store:
        assert set(store.documents()) == {"boats.pdf", "tides.txt"}
        assert all(d.status == "indexed" for d in store.documents().values())
        assert store.check().ok


def test_an_unlistable_folder_keeps_what_was_indexed_under_it(tmp_path, env, monkeypatch):
    docs = tmp_path / "docs"
    (docs / "private").mkdir(parents=True)
    (docs / "private" / "diary.txt").write_text("Dear diary, the ferry was late again.\n")
    (docs / "public.txt").write_text("The ferry timetable changes in winter.\n")
    assert index_json(docs)[0] == 0
    if IS_ROOT:  # root lists a chmod 000 folder, so make listing it fail as it would for others
        from ragkit.documents import discovery as documents

        real = documents.os.scandir

        def scandir(path):  # type: ignore[no-untyped-def]
            if Path(path).name == "private":
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(documents.os, "scandir", scandir)
    (docs / "private").chmod(0)
    try:
        code, report = index_json(docs)
    finally:
        (docs / "private").chmod(0o755)
    assert code == EXIT_FILES_FAILED and report["removed"] == []
    assert report["failed"] == [{"path": "private", "reason": "permission denied", "failed": True}]
    assert report["documents"] == 2
    assert ragkit.search("dear diary ferry late", env)[0].path == "private/diary.txt"
