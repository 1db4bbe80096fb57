"""One writer, many readers: real processes against one index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ragkit
from ragkit.store import Store
from tests import fakes

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "tests" / "ragkit_with_fakes.py"


def ragkit_process(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ENTRY), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_second_writer_is_refused_or_waits_and_readers_see_the_last_commit(tmp_path):
    docs, index_dir = tmp_path / "docs", tmp_path / "indexes"
    docs.mkdir()
    (docs / "old.txt").write_text("The lighthouse keeper polishes the great lens every evening.\n")
    settings = ragkit.Settings.load(environ={}, index_dir=index_dir, embedder="bow")
    ragkit.index(docs, settings)
    # 100 one-chunk files: two embedded batches of 64, so the writer can be paused between them.
    for i in range(100):
        (docs / "new").mkdir(exist_ok=True)
        (docs / "new" / f"n{i:03d}.txt").write_text(
            f"Unique item{i} words: quartz{i} meadow{i} harbour{i}.\n"
        )

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RAGKIT_"))}
    env["RAGKIT_INDEX_DIR"] = str(index_dir)
    env["RAGKIT_BATCH_SIZE"] = "8"  # 64 texts per embedded batch
    gate, phases = tmp_path / "gate", tmp_path / "phases"
    writer = ragkit_process(
        "index",
        str(docs),
        "--json",
        env={**env, "RAGKIT_TEST_GATE": str(gate), "RAGKIT_TEST_PHASES": str(phases)},
    )
    try:
        deadline = time.monotonic() + 60
        # The first batch is committed once the second has started (and waits at the gate).
        while (phases.read_text().split() if phases.exists() else []).count("embed") < 2:
            assert writer.poll() is None, writer.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        faiss_file = index_dir / "default" / "vectors.faiss"
        faiss_before = faiss_file.stat().st_mtime_ns
        with Store.open(index_dir / "default") as store:
            committed = {
                r[0]
                for r in store.db.conn.execute("SELECT text FROM chunks WHERE vector IS NOT NULL")
            }
            waiting = {
                r[0] for r in store.db.conn.execute("SELECT text FROM chunks WHERE vector IS NULL")
            }
        assert len(waiting) == 100 - 64 and len(committed) == 1 + 64

        # Readers work meanwhile, against what is committed.
        code, out, err = finish(
            ragkit_process("search", "lighthouse keeper lens", "--json", env=env)
        )
        assert code == 0, err
        assert json.loads(out)["hits"][0]["path"] == "old.txt"
        one_committed = sorted(
            committed - {"The lighthouse keeper polishes the great lens every evening."}
        )[0]
        one_waiting = sorted(waiting)[0]
        code, out, err = finish(
            ragkit_process("search", one_committed, "-k", "3", "--json", env=env)
        )
        hits = json.loads(out)["hits"]
        assert (
            code == 0
            and hits[0]["text"].strip() == one_committed
            and hits[0]["dense_score"] == pytest.approx(1.0, abs=1e-4)
        )
        code, out, err = finish(
            ragkit_process("search", one_waiting, "-k", "100", "--json", env=env)
        )
        assert code == 0 and one_waiting not in {h["text"].strip() for h in json.loads(out)["hits"]}
        code, out, err = finish(
            ragkit_process(
                "ask",
                "what does the lighthouse keeper polish",
                "--json",
                env={**env, "RAGKIT_ABSTAIN_BELOW": "0.1"},
            )
        )
        assert code == 0, err
        assert json.loads(out)["citations"][0]["path"] == "old.txt"
        # The readers rebuilt vectors in memory and left the writer's files alone.
        assert faiss_file.stat().st_mtime_ns == faiss_before

        # A second writer is refused, with the way out in one line.
        code, out, err = finish(ragkit_process("index", str(docs), env=env))
        assert code == 1 and "Traceback" not in err
        assert err.strip() == (
            f"ragkit: error: index default is being written by another process (pid {writer.pid}):"
            " wait for it to finish, or pass --wait"
        )
        # ... or waits for its turn with --wait.
        waiter = ragkit_process("index", str(docs), "--wait", "--json", env=env)
        time.sleep(1.0)
        assert waiter.poll() is None  # still waiting: the first writer holds the lock
    finally:
        gate.touch()
    code, out, err = finish(writer)
    assert code == 0, err
    first = json.loads(out)
    assert len(first["added"]) == 100 and first["chunks_embedded"] == 100

    code, out, err = finish(waiter)
    assert code == 0, err
    second = json.loads(out)
    assert second["unchanged"] == 101 and second["chunks_embedded"] == 0 and second["added"] == []
    with Store.open(index_dir / "default") as store:
        assert store.check().ok
        assert store.counts() == {
            "documents": 101,
            "chunks": 101,
            "vectors": 101,
            "pending_documents": 0,
        }


def test_a_reader_saves_the_rebuilt_faiss_file_when_no_writer_is_at_work(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Kites fly high over the windy beach.\n")
    settings = ragkit.Settings.load(environ={}, index_dir=tmp_path / "indexes", embedder="bow")
    ragkit.index(docs, settings)
    faiss_file = settings.index_path / "vectors.faiss"
    faiss_file.unlink()  # as if lost, or never written by a run that was killed
    fakes.instances.clear()
    assert ragkit.search("kites beach", settings)[0].path == "a.txt"
    assert faiss_file.exists()
    with Store.open(settings.index_path) as store:
        assert store.vectors_agree() and store.manifest.faiss_count == 1
