"""Searching during a re-index, a full disk, read-only storage: what a user sees at the edges."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

import ragkit
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
