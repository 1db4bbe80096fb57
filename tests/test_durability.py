"""Searching during a re-index, a full disk, read-only storage: what a user sees at the edges."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import ragkit
from ragkit.chunking import Chunk
from ragkit.store import Store
from tests import fakes  # noqa: F401  (registers the "bow" embedder)

WORDS = (
    "brake pads tyre pressure battery charging saddle height chain grease gears cable helmet"
    " lights bell frame wheel spoke rim valve pump commute route rain mudguard pannier lock"
).split()


def _text(rng: random.Random, n: int) -> str:
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(30)) + "." for _ in range(n)]
    return "# Notes\n\n" + "\n\n".join(paragraphs) + "\n"


def _corpus(root: Path, rng: random.Random, files: int = 40) -> Path:
    for i in range(files):
        path = root / f"f{i}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_text(rng, rng.randint(2, 6)))
    return root


@pytest.fixture
def settings(tmp_path):
    return ragkit.Settings.load(environ={}, index_dir=tmp_path / "indexes", embedder="bow")


def test_searches_during_a_reindex_never_see_half_a_commit(tmp_path, settings):
    """8 threads search while another re-indexes after rewriting and deleting files (15.1)."""
    rng = random.Random(7)
    root = _corpus(tmp_path / "docs", rng)
    ragkit.index(root, settings)
    errors: list[BaseException] = []
    done = threading.Event()
    searches = 0

    def reindex() -> None:
        try:
            for round_ in range(6):
                files = sorted(root.glob("*.md"))
                for path in rng.sample(files, 10):
                    path.write_text(_text(rng, rng.randint(2, 6)))
                for path in rng.sample(files, 4):
                    path.unlink(missing_ok=True)
                for k in range(4):
                    (root / f"r{round_}-{k}.md").write_text(_text(rng, 3))
                ragkit.index(root, settings)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    with ragkit.open(settings, k=8) as idx:

        def reader(n: int) -> None:
            nonlocal searches
            modes = ("dense", "hybrid", "keyword")
            query = " ".join(WORDS[n : n + 4])
            while not done.is_set():
                try:
                    idx.search(query, mode=modes[n % 3], mmr=n % 2 == 0)
                    searches += 1
                except BaseException as exc:  # re-raised below with its traceback
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
        threads.append(threading.Thread(target=reindex))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    assert searches > 100


# -- a full disk (15.2, 14.5) --------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "tests" / "ragkit_with_fakes.py"


def _mount(target: Path, *options: str) -> None:
    """Mount (as root) or skip the test: the full-disk and read-only tests need a real mount."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small or read-only filesystem")
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount not permitted here: {done.stderr.strip()}")


def _umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    _mount(disk, "-t", "tmpfs", "-o", "size=16m", "tmpfs")
    try:
        yield disk
    finally:
        _umount(disk)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` with one file, then give back ``leave`` bytes of it."""
    ballast = disk / "ballast"
    block = b"\0" * 65536
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while os.write(fd, block):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    size = ballast.stat().st_size
    os.truncate(ballast, max(0, size - leave))
    return ballast


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ENTRY), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("ragkit: error:")]
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _big_corpus(root: Path, files: int, start: int = 0) -> Path:
    rng = random.Random(start)
    for i in range(start, start + files):
        (root / f"f{i}.md").parent.mkdir(parents=True, exist_ok=True)
        (root / f"f{i}.md").write_text(_text(rng, 20) + f"\nunique{i} marker.\n")
    return root


@pytest.mark.parametrize("phase", ["documents", "vectors", "faiss"])
def test_a_full_disk_is_one_line_and_a_rerun_finishes(tmp_path, small_disk, phase):
    root = _big_corpus(tmp_path / "docs", 30)
    index_dir = small_disk / "indexes"
    where = ("--index-dir", str(index_dir))
    base = (*where, "--embedder", "bow")
    assert _run("index", str(root), *base).returncode == 0
    index = index_dir / "default"

    if phase == "documents":
        _big_corpus(root, 30, start=30)
        ballast = _fill(small_disk, leave=48 * 1024)
        done = _run("index", str(root), *base)
    elif phase == "vectors":
        _big_corpus(root, 30, start=30)
        phases, gate = tmp_path / "phases", tmp_path / "gate"
        proc = subprocess.Popen(
            [sys.executable, str(ENTRY), "index", str(root), *base],
            env={**os.environ, "RAGKIT_TEST_PHASES": str(phases), "RAGKIT_TEST_GATE": str(gate)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The second batch waits for the gate: the first is embedded and committed by then.
        deadline = time.monotonic() + 120
        while phases.read_text().split().count("embed") < 2 if phases.exists() else True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        ballast = _fill(small_disk, leave=0)
        gate.touch()
        out, err = proc.communicate(timeout=300)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    else:  # the FAISS file: SQLite has room for its small writes, the new file has none
        (index / "vectors.faiss").unlink()
        ballast = _fill(small_disk, leave=64 * 1024)
        done = _run("index", str(root), *base)
        assert not (index / "vectors.faiss").exists()

    _one_line_error(done, "is full", "free some space", "run the same command again")
    assert [p.name for p in index.iterdir() if p.name.endswith(".tmp")] == []
    # Nothing indexed before the failure is lost; searching still works on the full disk.
    found = _run("search", "unique3", "--mode", "keyword", *where)
    assert found.returncode == 0 and "f3.md" in found.stdout, found.stderr

    ballast.unlink()
    again = _run("index", str(root), *base)
    assert again.returncode == 0, again.stderr
    status = _run("status", "--json", *where)
    info = json.loads(status.stdout)
    files = len(list(root.glob("*.md")))
    assert info["documents"] == files and info["pending_documents"] == 0
    assert info["faiss_agrees"] and info["vectors"] == info["chunks"]
    last = _run("search", f"unique{files - 1}", "--mode", "dense", "-k", "1", *where)
    assert f"f{files - 1}.md" in last.stdout


def test_the_real_error_is_not_masked_by_a_failed_rollback(tmp_path, settings):
    """SQLite rolls back by itself when the disk fills during set_vectors: the error must say
    the disk is full, not 'cannot rollback - no transaction is active'."""
    rng = random.Random(3)
    root = _corpus(tmp_path / "docs", rng, files=5)
    ragkit.index(root, settings)
    embedder = fakes.BagOfWordsEmbedder()
    with Store.open(settings.index_path) as store:
        store.lock()
        chunks = [
            Chunk(text=_text(rng, 3), ordinal=i, page=None, start_line=1, end_line=1,
                  start_char=0, end_char=1, heading="", tokens=10)
            for i in range(200)
        ]  # fmt: skip
        store.put_document(
            path="big.md", sha256="0" * 64, size=1, mtime=0.0, kind="markdown",
            pages=0, warnings=(), chunks=chunks,
        )  # fmt: skip
        before = store.counts()
        pending = store.pending()
        conn = store.db.conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL on the next new page
        vectors = embedder.embed([t for _, t, _ in pending])
        with pytest.raises(ragkit.RagkitError, match="is full.*free some space"):
            store.set_vectors([i for i, _, _ in pending], vectors, 100)
        assert not conn.in_transaction
        assert store.counts() == before


# -- read-only storage (14.5) -----------------------------------------------------------------


@pytest.fixture
def read_only_index(tmp_path, settings):
    """An index built normally, then seen through a read-only bind mount of its folder."""
    root = _big_corpus(tmp_path / "docs", 6)
    ragkit.index(root, settings)
    view = tmp_path / "ro"
    _mount(view, "--bind", str(settings.index_dir))
    try:
        done = subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("read-only remount not permitted here")
        yield root, view
    finally:
        _umount(view)


def test_an_index_on_read_only_storage_is_searchable(read_only_index):
    root, view = read_only_index
    where = ("--index-dir", str(view))
    with pytest.raises(OSError):
        (view / "default" / "probe").touch()  # the mount really is read-only, even for root

    found = _run("search", "unique4 marker", "-k", "1", *where)
    assert found.returncode == 0 and "f4.md" in found.stdout, found.stderr
    for mode in ("dense", "keyword"):
        assert "f2.md" in _run("search", "unique2", "--mode", mode, "-k", "1", *where).stdout
    answered = _run("ask", "unique5 marker", *where, RAGKIT_ABSTAIN_BELOW="0")
    assert answered.returncode == 0 and "[1]" in answered.stdout, answered.stderr
    status = _run("status", "--json", *where)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["documents"] == 6
    with ragkit.open(index_dir=view) as idx:
        assert idx.search("unique1", k=1)[0].path == "f1.md"

    (root / "f1.md").write_text("# Changed\n\nNew words.\n")
    for command in (("index", str(root), *where), ("doctor", "--repair", *where)):
        done = _run(*command)
        _one_line_error(done, "read-only storage", "copy the folder to writable storage")
