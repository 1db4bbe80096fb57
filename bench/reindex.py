"""What re-indexing costs: an unchanged folder, then one changed file, against the first index.

Reports, all measured in this one run on this machine, in-process through ``ragkit.index``:

1. first index of the folder (every chunk embedded): wall time and embedding calls.
2. re-index with nothing changed, median of --repeat runs: wall time as a ratio of the first
   (goal <= 2 %) and embedding calls (goal 0).
3. one paragraph of the longest file changed, then re-index: the chunks sent to the embedder
   must be exactly that file's chunks whose text is new to the index.

The folder is N SciFact abstracts written out as text files when ../shared/datasets is present,
else synthetic text; --long-file adds one long document (many chunks) to edit in step 3.
The embedder is the local model when it can be loaded, else the test suite's bag-of-words fake
(pick with --embedder local|bow). Exits non-zero when a goal is missed.

    python bench/reindex.py [--docs 300] [--embedder local|bow] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
# ../shared beside a clone (CI), or two levels up from a git worktree.
SCIFACT = next(
    (
        p / "shared" / "datasets" / "scifact" / "corpus.jsonl"
        for p in (ROOT.parent, ROOT.parent.parent)
        if (p / "shared" / "datasets" / "scifact" / "corpus.jsonl").is_file()
    ),
    ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl",
)
sys.path.insert(0, str(ROOT))

import ragkit  # noqa: E402
from ragkit.embedders import Embedder, register_embedder  # noqa: E402
from ragkit.store import Store  # noqa: E402


class CountingEmbedder:
    """Wraps an embedder and counts every call and text that reaches it."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.calls = 0
        self.texts: list[str] = []
        if hasattr(inner, "embed_batches"):  # keep the embedder's own batching, counted
            self.embed_batches = self._embed_batches

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.calls += 1
        self.texts.extend(texts)
        return self.inner.embed(texts)

    def _embed_batches(self, texts: Sequence[str]) -> Iterator[tuple[Any, NDArray[np.float32]]]:
        for positions, vectors in self.inner.embed_batches(texts):  # type: ignore[attr-defined]
            self.calls += 1
            self.texts.extend(texts[int(p)] for p in positions)
            yield positions, vectors


built: list[CountingEmbedder] = []


def use_counting(provider: str) -> None:
    """Make ``--embedder PROVIDER`` build a counted embedder."""
    # Imported before registering: importing tests.fakes registers its own "bow" factory.
    from ragkit.embedders.local import LocalEmbedder
    from tests.fakes import BagOfWordsEmbedder

    def factory(model: str | None, options: Mapping[str, Any]) -> Embedder:
        inner: Embedder
        if provider == "local":
            inner = LocalEmbedder(batch_size=int(options.get("batch_size", 32)))
        else:
            inner = BagOfWordsEmbedder()
        built.append(CountingEmbedder(inner))
        return built[-1]  # type: ignore[return-value]

    register_embedder(provider, factory)


def local_available() -> bool:
    try:
        from ragkit.embedders.local import LocalEmbedder

        LocalEmbedder().embed(["probe"])
    except Exception:  # noqa: BLE001  (any failure to load means: fall back to the fake)
        return False
    return True


def make_folder(target: Path, docs: int, rng: random.Random) -> str:
    target.mkdir(parents=True)
    if SCIFACT.is_file():
        with SCIFACT.open() as fh:
            for _, line in zip(range(docs), fh, strict=False):
                doc = json.loads(line)
                (target / f"{doc['_id']}.txt").write_text(
                    doc["title"] + "\n\n" + doc["text"] + "\n"
                )
        described = f"{docs} SciFact abstracts"
    else:
        for i in range(docs):
            (target / f"doc{i:04d}.txt").write_text(synthetic(rng, rng.randint(2, 5)))
        described = f"{docs} synthetic documents"
    # One long document whose middle paragraph step 3 edits: many chunks, few of them touched.
    (target / "long-report.md").write_text("# Report\n\n" + synthetic(rng, 30))
    return described + " + one 30-paragraph report"


def synthetic(rng: random.Random, paragraphs: int) -> str:
    words = "cell protein gene expression tissue sample cohort trial dose response signal".split()
    return (
        "\n\n".join(
            " ".join(
                f"{rng.choice(words)}{rng.randint(0, 500)}" for _ in range(rng.randint(40, 70))
            )
            + "."
            for _ in range(paragraphs)
        )
        + "\n"
    )


def calls() -> tuple[int, list[str]]:
    """Embedding calls and texts since the last reset, across every embedder built."""
    total = sum(e.calls for e in built)
    texts = [t for e in built for t in e.texts]
    built.clear()
    return total, texts


def chunk_texts(store_path: Path, path: str | None = None) -> list[str]:
    with Store.open(store_path) as store:
        sql = "SELECT c.text FROM chunks c JOIN documents d ON d.id = c.document_id"
        args: tuple[str, ...] = ()
        if path is not None:
            sql, args = sql + " WHERE d.path = ? ORDER BY c.ordinal", (path,)
        return [r[0] for r in store.db.conn.execute(sql, args)]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=300, help="documents in the folder")
    parser.add_argument("--embedder", choices=["local", "bow"], default=None)
    parser.add_argument("--repeat", type=int, default=5, help="unchanged re-index runs (median)")
    args = parser.parse_args()
    provider = args.embedder or ("local" if local_available() else "bow")
    use_counting(provider)
    rng = random.Random(4)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        described = make_folder(folder, args.docs, rng)
        settings = ragkit.Settings.load(index_dir=Path(tmp) / "indexes", embedder=provider)
        print(f"folder: {described}; embedder: {provider}")

        started = time.perf_counter()
        first = ragkit.index(folder, settings)
        t_first = time.perf_counter() - started
        first_calls, _ = calls()
        print(
            f"1. first index: {t_first:.2f} s, {first.documents} documents,"
            f" {first.chunks_embedded} chunks embedded in {first_calls} calls"
        )

        times, unchanged_calls = [], 0
        for _ in range(args.repeat):
            started = time.perf_counter()
            again = ragkit.index(folder, settings)
            times.append(time.perf_counter() - started)
            n, _ = calls()
            unchanged_calls += n
            assert again.unchanged == first.documents and again.chunks_embedded == 0
        t_again = statistics.median(times)
        ratio = t_again / t_first
        print(
            f"2. unchanged re-index: {t_again * 1000:.0f} ms median of {args.repeat}"
            f" (min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})"
            f" = {ratio:.2%} of the first index; {unchanged_calls} embedding calls"
        )

        long_file = "long-report.md"
        before_all = set(chunk_texts(settings.index_path))
        before_file = chunk_texts(settings.index_path, long_file)
        text = (folder / long_file).read_text()
        paragraphs = text.split("\n\n")
        middle = len(paragraphs) // 2
        paragraphs[middle] = synthetic(random.Random(99), 1).strip()
        (folder / long_file).write_text("\n\n".join(paragraphs))
        started = time.perf_counter()
        changed = ragkit.index(folder, settings)
        t_changed = time.perf_counter() - started
        n_calls, embedded = calls()
        after_file = chunk_texts(settings.index_path, long_file)
        new_chunks = [t for t in after_file if t not in before_all]
        exact = sorted(embedded) == sorted(new_chunks) and changed.changed == (long_file,)
        print(
            f"3. one paragraph of {long_file} changed: {changed.chunks_embedded} chunks re-embedded"
            f" in {n_calls} calls, {changed.chunks_reused} reused; the file has {len(after_file)}"
            f" chunks ({len(before_file)} before), {len(new_chunks)} with text new to the index;"
            f" embedded exactly those: {'yes' if exact else 'NO'}; {t_changed:.2f} s"
            f" = {t_changed / t_first:.2%} of the first index"
        )

    failures = []
    if ratio > 0.02:
        failures.append(f"unchanged re-index took {ratio:.2%} of the first index (goal <= 2 %)")
    if unchanged_calls:
        failures.append(f"unchanged re-index made {unchanged_calls} embedding calls (goal 0)")
    if not exact:
        failures.append("the changed file's re-embedded chunks were not exactly its new chunks")
    for failure in failures:
        print("MISSED:", failure)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
