"""The CLI: in-process with CliRunner for output shapes, and in a real subprocess end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragkit.cli import app
from tests import fakes  # noqa: F401  (registers the "bow" embedder)
from tests.test_pipeline import PAGES, write

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture
def indexed(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("RAGKIT_INDEX_DIR", str(tmp_path / "indexes"))
    docs = write(tmp_path / "docs", PAGES)
    result = runner.invoke(app, ["index", str(docs), "--embedder", "bow", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_index_json_summary(indexed):
    assert indexed["embedder"] == "bow:hash-256"
    assert sorted(indexed["added"]) == sorted(PAGES)
    assert indexed["ok"] is True and indexed["failed"] == []


def test_search_json_schema(indexed):
    result = runner.invoke(app, ["search", "helmet brakes", "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["query"] == "helmet brakes"
    assert [h["rank"] for h in data["hits"]] == [1, 2]
    for hit in data["hits"]:
        assert set(hit) == {
            "rank",
            "score",
            "dense_score",
            "path",
            "page",
            "page_label",  # added for printed PDF page labels (issue 14.8)
            "start_line",
            "end_line",
            "heading",
            "text",
            "chunk_id",
        }
        assert 0 < hit["score"] <= round(2 / 61, 6)  # hybrid, the default: a fused rank score
        assert isinstance(hit["score"], float) and hit["start_line"] <= hit["end_line"]
    assert data["hits"][0]["path"] == "notes/safety.md" and data["hits"][0]["heading"] == "Safety"


def test_search_modes_and_filters_from_the_cli(indexed):
    result = runner.invoke(app, ["search", "shop closed sundays", "--mode", "keyword", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "keyword" and data["hits"][0]["path"] == "hours.txt"
    # BM25, and no cosine: keyword search does not embed the query unless a floor asks for it.
    assert data["hits"][0]["score"] > 1.0 and data["hits"][0]["dense_score"] is None

    args = [
        "search",
        "shop closed sundays",
        "--mode",
        "hybrid",
        "--file-type",
        "markdown",
        "--heading",
        "refunds",
        "--json",
    ]
    data = json.loads(runner.invoke(app, args).stdout)
    assert {(h["path"], h["heading"]) for h in data["hits"]} == {
        ("returns.md", "Returns > Refunds")
    }

    text = runner.invoke(app, ["search", "shop closed sundays", "--mode", "keyword"]).stdout
    assert text.startswith("1. [bm25 ") and "cosine" not in text.splitlines()[0]
    args = ["search", "shop closed sundays", "--mode", "keyword", "--min-score=-1"]
    text = runner.invoke(app, args).stdout
    assert text.startswith("1. [bm25 ") and ", cosine 0." in text.splitlines()[0]

    result = runner.invoke(app, ["search", "shop", "--modified-after", "2999-01-01", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["hits"] == []
    result = runner.invoke(
        app,
        ["search", "shop", "--mmr", "--mmr-lambda", "0.2", "-k", "3", "--json"],
        env={"RAGKIT_MODE": "hybrid"},
    )
    data = json.loads(result.stdout)
    assert data["mode"] == "hybrid" and len(data["hits"]) == 3


def test_ask_json_schema(indexed):
    result = runner.invoke(
        app,
        ["ask", "how many days can bikes be returned with the receipt", "--json"],
        env={"RAGKIT_ABSTAIN_BELOW": "0.1"},
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) >= {"question", "answer", "mode", "model", "abstained", "citations"}
    assert data["mode"] == "extractive" and data["abstained"] is False
    for c in data["citations"]:
        assert set(c) == {"n", "path", "page", "page_label", "start_line", "end_line", "quote"}
    assert data["citations"][0]["path"] == "returns.md"


def test_ask_abstains_with_exit_code_2(indexed):
    result = runner.invoke(app, ["ask", "quantum chromodynamics lattice", "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["abstained"] is True


def _ragkit(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RAGKIT_"))}
    full_env["PYTHONPATH"] = str(ROOT)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ragkit", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["search", "anything"], "no index at"),
        (["search", "  ", "--index", "x"], "query is empty"),
        (["index", "does-not-exist"], "no such file or folder"),
        (["index", ".", "--embedder", "nonsense"], "unknown embedder"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message):
    proc = _ragkit(*args, cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("ragkit: error:")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["search"], "Missing"),
        (["--bogus"], "No such option"),
        (["search", "x", "-k", "notanumber"], "integer"),
    ],
)
def test_usage_errors_show_usage_without_traceback(tmp_path, args, message):
    proc = _ragkit(*args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # 2 is reserved for "ask abstained"
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_empty_query_is_refused(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("some words about bicycles and their wheels")
    assert _ragkit("index", "docs", cwd=tmp_path).returncode == 0
    proc = _ragkit("search", "   ", cwd=tmp_path)
    assert (
        proc.returncode == 1 and "query is empty" in proc.stderr and "Traceback" not in proc.stderr
    )


def test_end_to_end_offline_with_the_local_model(tmp_path):
    """The README demo: index the bundled corpus offline, search and ask, citations name files."""
    corpus = ROOT / "corpus"
    env = {"RAGKIT_INDEX_DIR": str(tmp_path / "indexes"), "HF_HUB_OFFLINE": "1"}
    proc = _ragkit("index", str(corpus), "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["embedder"] == "local:all-MiniLM-L6-v2" and report["failed"] == []
    assert any(p.endswith(".pdf") for p in report["added"])

    status = json.loads(_ragkit("status", "--json", cwd=tmp_path, env=env).stdout)
    assert status["documents"] == len(report["added"]) and status["faiss_agrees"] is True

    proc = _ragkit("search", "how long is the warranty on frames", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)["hits"]
    assert len(hits) == 5 and hits[0]["dense_score"] > 0.3

    proc = _ragkit("ask", "quantum chromodynamics on a lattice", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and json.loads(proc.stdout)["abstained"] is True


def test_a_bare_folder_name_in_path_means_everything_under_it(indexed):
    for path in ("notes", "notes/", "./notes"):
        result = runner.invoke(app, ["search", "helmet brakes shop", "--path", path, "--json"])
        assert result.exit_code == 0, result.output
        assert [h["path"] for h in json.loads(result.stdout)["hits"]] == ["notes/safety.md"]
    # A bare file name is that file; "note" is not a prefix of "notes/".
    data = json.loads(
        runner.invoke(app, ["search", "shop", "--path", "hours.txt", "--json"]).stdout
    )
    assert {h["path"] for h in data["hits"]} == {"hours.txt"}
    data = json.loads(runner.invoke(app, ["search", "helmet", "--path", "note", "--json"]).stdout)
    assert data["hits"] == []


def test_json_index_is_the_name_and_path_the_folder_in_every_command(indexed, tmp_path):
    folder = str(tmp_path / "indexes" / "default")
    assert indexed["index"] == "default" and indexed["path"] == folder
    for command in ("status", "doctor"):
        data = json.loads(runner.invoke(app, [command, "--json"]).stdout)
        assert data["index"] == "default" and data["path"] == folder, command
