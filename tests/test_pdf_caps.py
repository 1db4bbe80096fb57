"""Issue 8.2: decompression and amplification bombs are stopped by caps, and the run carries on."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragkit.cli import EXIT_FILES_FAILED, app
from ragkit.documents import Limits, load_document
from ragkit.errors import ConfigError, LoadError
from tests import fakes  # noqa: F401  (registers the "bow" embedder)
from tests.pdfs import pdf_with_contents, text_run

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAGKIT_INDEX_DIR", str(tmp_path / "indexes"))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("# Notes\n\nThe harbour ferry leaves at nine.\n")
    return docs


def index(docs: Path, *args: str) -> tuple[int, dict, str]:
    result = runner.invoke(app, ["index", str(docs), "--embedder", "bow", "--json", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout), result.stderr


# What a 70 MB inflating stream of text operators is failed for, depending on which cap a
# machine reaches first.
BOMB_REASONS = {
    "took longer than 3 s (--max-seconds-per-file)",
    "page 1 is past pypdf's safety limits (Reached maximum number of tokens per stream.):"
    " a decompression bomb?",
}


def failed(report: dict) -> dict[str, str]:
    return {f["path"]: f["reason"] for f in report["failed"]}


def test_a_stream_that_inflates_to_70_mb_fails_on_the_time_cap_and_the_run_carries_on(
    env: Path,
) -> None:
    # 10 million one-letter text operators: about 100 KB on disk, 70 MB once inflated.
    bomb = pdf_with_contents([text_run(b"A", 10_000_000)], compress=True)
    assert len(bomb) < 200_000
    (env / "bomb.pdf").write_bytes(bomb)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    code, report, _ = index(env, "--max-seconds-per-file", "3")

    assert code == EXIT_FILES_FAILED
    # Whichever cap this machine reaches first: the time cap, or pypdf's own token limit.
    assert set(failed(report)) == {"bomb.pdf"}
    assert failed(report)["bomb.pdf"] in BOMB_REASONS, failed(report)
    assert report["added"] == ["notes.md"]
    # The PDF is read in a worker process: this one did not grow by the 70 MB, let alone more.
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 60, grown_mb


def test_three_hundred_pages_sharing_one_big_stream_fail_on_the_time_cap(env: Path) -> None:
    shared = pdf_with_contents(
        [text_run(b"hello world", 100_000)] * 300, compress=True, shared=True
    )
    assert len(shared) < 100_000
    (env / "shared.pdf").write_bytes(shared)

    code, report, _ = index(env, "--max-seconds-per-file", "3")

    assert code == EXIT_FILES_FAILED
    assert failed(report) == {"shared.pdf": "took longer than 3 s (--max-seconds-per-file)"}


def test_dry_run_is_bounded_by_the_same_caps(env: Path) -> None:
    (env / "bomb.pdf").write_bytes(pdf_with_contents([text_run(b"A", 10_000_000)], compress=True))

    result = runner.invoke(
        app, ["index", str(env), "--embedder", "bow", "--dry-run", "--max-seconds-per-file", "3"]
    )

    assert result.exit_code == EXIT_FILES_FAILED, result.output
    assert any(f"would fail: bomb.pdf: {reason}" in result.stderr for reason in BOMB_REASONS)


def test_the_per_page_character_cap_names_the_page(tmp_path: Path) -> None:
    pdf = pdf_with_contents([text_run(b"fine", 10), text_run(b"abcdefghij", 500)])
    path = tmp_path / "wordy.pdf"
    path.write_bytes(pdf)

    with pytest.raises(LoadError) as caught:
        load_document(path, tmp_path, limits=Limits(max_chars_per_page=2_000))

    assert caught.value.failed
    assert caught.value.reason == (
        "page 2 has more than 2,000 characters of text (--max-chars-per-page)"
    )
    assert load_document(path, tmp_path).pages[1].end > 2_000  # the default cap lets it through


def test_the_per_file_character_cap_counts_every_page(tmp_path: Path) -> None:
    path = tmp_path / "long.pdf"
    path.write_bytes(pdf_with_contents([text_run(b"abcdefghij", 100)] * 5))

    with pytest.raises(LoadError) as caught:
        load_document(path, tmp_path, limits=Limits(max_chars_per_file=3_500))

    assert caught.value.reason == "more than 3,500 characters of text (--max-chars-per-file)"


def test_the_file_cap_applies_to_text_files_too(env: Path) -> None:
    (env / "huge.txt").write_text("word " * 5_000)

    code, report, _ = index(env, "--max-chars-per-file", "10000")

    assert code == EXIT_FILES_FAILED
    assert failed(report) == {
        "huge.txt": "more than 10,000 characters of text (--max-chars-per-file)"
    }


def test_caps_come_from_the_environment_and_must_be_positive(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGKIT_MAX_CHARS_PER_FILE", "10000")
    (env / "huge.txt").write_text("word " * 5_000)
    code, report, _ = index(env)
    assert failed(report) == {
        "huge.txt": "more than 10,000 characters of text (--max-chars-per-file)"
    }

    result = runner.invoke(app, ["index", str(env), "--max-seconds-per-file", "0"])
    # A ConfigError: `ragkit` prints it as one line and exits 1 (see test_cli).
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == "max_seconds_per_file must be positive (got 0.0)"
