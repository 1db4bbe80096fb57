"""``ragkit.open()``: one Index held open, searched from many threads while another process writes."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import ragkit
from ragkit.errors import ConfigError
from tests import fakes  # noqa: F401  (registers the "bow" embedder)
from tests.test_pipeline import write

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "tests" / "ragkit_with_fakes.py"


@pytest.fixture
def settings(tmp_path):
    return ragkit.Settings.load(environ={}, index_dir=tmp_path / "indexes", embedder="bow")


WORDS = (
    "brake pads tyre pressure battery charging saddle height chain grease gears cable"
    " helmet lights bell frame wheel spoke rim valve pump commute route rain"
).split()
PAGES = {
    "brakes.md": "# Brakes\n\nReplace the brake pads when they are thinner than 3 mm.\n",
    "tyres.md": "# Tyres\n\nCheck the tyre pressure every week with a gauge.\n",
    "battery.md": "# Battery\n\nCharging the battery takes four hours from empty.\n",
    "fit.md": "# Fit\n\nSet the saddle height so your leg is almost straight.\n",
    **{
        f"notes/n{i}.md": f"# Note {i}\n\n"
        + " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(40))
        + ".\n"
        for i in range(30)
    },
}


@pytest.fixture
def docs(tmp_path, settings):
    root = write(tmp_path / "docs", PAGES)
    ragkit.index(root, settings)
    return root


def _brief(hits):
    return [(h.path, h.chunk_id, round(h.score, 5)) for h in hits]


def test_open_index_answers_as_the_module_verbs_do(settings, docs):
    query = "how do I check the tyre pressure"
    with ragkit.open(settings) as idx:
        assert isinstance(idx, ragkit.Index)
        for mode in ("dense", "keyword", "hybrid"):
            assert _brief(idx.search(query, mode=mode, k=3)) == _brief(
                ragkit.search(query, settings, mode=mode, k=3)
            )
        answer = idx.ask(query, llm=False)
        assert answer.text == ragkit.ask(query, settings, llm=False).text
        assert idx.status() == ragkit.status(settings)
        # Per-call overrides are validated like keyword arguments.
        with pytest.raises(ConfigError):
            idx.search(query, k=0)
        # The index, its folder and its embedder are fixed for the life of the Index.
        with pytest.raises(ConfigError, match="cannot change per call"):
            idx.search(query, index="other")
    with pytest.raises(ValueError, match="closed"):
        idx.search(query)


def test_open_takes_keyword_settings_and_refuses_a_missing_index(tmp_path, settings, docs):
    with ragkit.open(index_dir=settings.index_dir, index=settings.index, k=2) as idx:
        assert len(idx.search("brake pads")) == 2
    with pytest.raises(ragkit.IndexNotFoundError):
        ragkit.open(index_dir=tmp_path / "nowhere")
    # A Settings object plus overrides is validated like keyword arguments (9.5).
    with pytest.raises(ConfigError, match="k must be at least 1"):
        ragkit.open(settings, k=0)
    with pytest.raises(ConfigError, match="bad index name"):
        ragkit.open(settings, index="../x")


def test_async_calls_run_at_most_max_concurrency_at_once(settings, docs):
    running = peak = 0
    guard = threading.Lock()

    async def main(idx: ragkit.Index) -> list[list[ragkit.Hit]]:
        return await asyncio.gather(*(idx.asearch(f"brake pads {i}") for i in range(12)))

    with ragkit.open(settings, max_concurrency=2) as idx:
        plain = idx.search

        def counted(query: str, **overrides):
            nonlocal running, peak
            with guard:
                running += 1
                peak = max(peak, running)
            try:
                threading.Event().wait(0.02)
                return plain(query, **overrides)
            finally:
                with guard:
                    running -= 1

        idx.search = counted  # type: ignore[method-assign]
        results = asyncio.run(main(idx))
        answer = asyncio.run(idx.aask("brake pads", llm=False))
    assert all(r for r in results) and answer.citations
    assert peak == 2


# One hook for the whole test session (audit hooks cannot be removed): it records while armed.
_EVENTS: list[str] = []
_ARMED = threading.Event()


def _hook(event: str, args: tuple) -> None:
    if _ARMED.is_set() and event in ("open", "sqlite3.connect"):
        _EVENTS.append(f"{event} {args[0]!r}")


sys.addaudithook(_hook)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("embedder", ["bow", "local"])
def test_a_query_on_an_open_index_opens_no_file_and_scans_no_table(tmp_path, embedder):
    # The local model reads its tokenizer and weights from files: once, when the Index opens.
    settings = ragkit.Settings.load(environ={}, index_dir=tmp_path / "indexes", embedder=embedder)
    ragkit.index(write(tmp_path / "docs", PAGES), settings)
    queries = ["brake pads", "tyre pressure", "battery charging", "saddle height"] * 10

    # The one-shot verb opens the database (and more) on every call: the check can fail.
    _EVENTS.clear()
    _ARMED.set()
    try:
        ragkit.search("brake pads", settings)
    finally:
        _ARMED.clear()
    assert any(e.startswith("sqlite3.connect") for e in _EVENTS)

    with ragkit.open(settings) as idx:
        idx.search("warm up")
        idx.search("warm up", mode="keyword")  # the second keyword ranking builds the postings
        assert idx._keywords.wait()  # once, in the background: not part of any query
        conn = idx._store().db.conn
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        before = _fds()
        _EVENTS.clear()
        _ARMED.set()
        try:
            for q in queries:
                for mode in ("hybrid", "dense", "keyword"):
                    assert idx.search(q, mode=mode)
        finally:
            _ARMED.clear()
            conn.set_trace_callback(None)
        assert _EVENTS == []
        assert _fds() == before
        # Every statement a query ran, planned: none reads a whole table (the FTS5 virtual
        # table's own index is searched, not scanned row by row).
        plans = sqlite3.connect(settings.index_path / "ragkit.db")
        try:
            scans = set()
            for sql in set(statements):
                if not sql.lstrip().upper().startswith("SELECT"):
                    continue
                for row in plans.execute("EXPLAIN QUERY PLAN " + sql):
                    detail = row[-1]
                    if detail.startswith("SCAN") and "VIRTUAL TABLE" not in detail:
                        scans.add((detail, sql[:80]))
        finally:
            plans.close()
        assert scans == set()
        # FTS5's own lookups are traced as "-- ..." lines; count the statements ragkit runs.
        ours = [sql for sql in statements if not sql.startswith("--")]
        assert len(ours) / (len(queries) * 3) <= 8, ours[:20]


def _index_subprocess(root: Path, index_dir: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(ENTRY),
            "index",
            str(root),
            "--index-dir",
            str(index_dir),
            "--embedder",
            "bow",
        ],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_threads_search_while_another_process_indexes(tmp_path, settings, docs):
    errors: list[BaseException] = []
    searches = 0
    stop = threading.Event()

    with ragkit.open(settings) as idx:
        assert not [h for h in idx.search("zeppelin", k=20) if "airship" in h.path]

        def reader(n: int) -> None:
            nonlocal searches
            modes = ("dense", "keyword", "hybrid")
            while not stop.is_set():
                try:
                    idx.search("brake pads tyre pressure zeppelin", mode=modes[searches % 3], k=5)
                    searches += 1
                except BaseException as exc:  # reported below, with its traceback
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            # New files, a changed one and a deleted one, committed by another process slowly.
            for n in range(12):
                (docs / "airship" / f"z{n}.md").parent.mkdir(exist_ok=True)
                (docs / "airship" / f"z{n}.md").write_text(
                    f"# Zeppelin {n}\n\nThe zeppelin airship number {n} floats on hydrogen.\n"
                )
            first = sorted(p for p in docs.rglob("*.md") if "airship" not in str(p))
            first[0].write_text("# Changed\n\nEntirely new words about lanterns.\n")
            first[1].unlink()
            proc = _index_subprocess(
                docs,
                settings.index_dir,
                RAGKIT_TEST_LOAD_DELAY="0.05",
                RAGKIT_TEST_EMBED_DELAY="0.05",
            )
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        finally:
            stop.set()
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        assert searches > 0
        # The open Index sees what the other process committed, in every mode.
        for mode in ("dense", "keyword", "hybrid"):
            found = idx.search("zeppelin airship hydrogen", mode=mode, k=12)
            assert {h.path for h in found} == {f"airship/z{n}.md" for n in range(12)}, mode
        assert idx.search("lanterns", mode="keyword")[0].text.startswith("# Changed")
        assert not [
            h
            for h in idx.search("brake", mode="keyword", k=50)
            if h.path == str(first[1].relative_to(docs))
        ]
        assert idx.status().faiss_agrees


# -- a cold search on an OpenAI-embedded index (9.3) --------------------------------------------


@pytest.fixture
def openai_index(tmp_path, openai_server):
    root = write(tmp_path / "docs", PAGES)
    env = {"OPENAI_BASE_URL": openai_server.base_url, "OPENAI_API_KEY": "test"}
    ragkit.index(root, index_dir=tmp_path / "indexes", embedder="openai", **_creds(env))
    return tmp_path / "indexes", env


def _creds(env: dict[str, str]) -> dict[str, str]:
    return {"openai_base_url": env["OPENAI_BASE_URL"], "openai_api_key": env["OPENAI_API_KEY"]}


def test_a_cold_search_does_not_import_the_openai_sdk(openai_index, openai_server):
    index_dir, env = openai_index
    openai_server.reset()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ragkit", "search", "tyre pressure gauge"]
        + ["--index-dir", str(index_dir), "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "numpy" in imported and "openai" not in imported
    assert len(openai_server.requests_for("embeddings")) == 1  # the query, sent once
    cold = [(h["path"], h["score"]) for h in json.loads(done.stdout)["hits"]]

    # The same query through the SDK (an open Index's later queries) gives the same hits.
    with ragkit.open(index_dir=index_dir, **_creds(env)) as idx:
        idx.search("warm up")  # the embedder's first query went the direct way
        warm = [(h.path, round(h.score, 6)) for h in idx.search("tyre pressure gauge")]
    assert "openai" in sys.modules
    assert cold == warm


def test_a_failed_direct_query_is_sent_again_through_the_sdk(openai_index, openai_server):
    from tests.openai_server import Fault

    index_dir, env = openai_index
    openai_server.reset()
    openai_server.config.inject(Fault("server_error", endpoint="embeddings"))
    # A cosine floor: keyword search embeds the query only for a cosine.
    hits = ragkit.search(
        "gauge", index_dir=index_dir, mode="keyword", min_score=-1.0, **_creds(env)
    )
    assert hits[0].path == "tyres.md"
    statuses = [r.status for r in openai_server.requests_for("embeddings")]
    assert statuses == [500, 200]

    # An error that retrying cannot fix reads exactly as the SDK path explains it.
    openai_server.reset()
    openai_server.config.inject(Fault("insufficient_quota", endpoint="embeddings"), times=2)
    with pytest.raises(ragkit.QuotaError):
        ragkit.search("tyre pressure", index_dir=index_dir, **_creds(env))


def test_keyword_search_does_not_load_the_vectors(settings, docs):
    (settings.index_path / "vectors.faiss").unlink()  # a dense query would rebuild and save it
    with ragkit.open(settings) as idx:
        assert idx.search("gauge", mode="keyword")[0].path == "tyres.md"
        assert ragkit.search("gauge", settings, mode="keyword")[0].path == "tyres.md"
        assert not (settings.index_path / "vectors.faiss").exists()
        assert idx.search("gauge", mode="dense")
    assert (settings.index_path / "vectors.faiss").exists()
