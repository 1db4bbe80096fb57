"""How much ragkit adds on top of the model, and how fast the CLI starts.

Reports, all measured in this one run on this machine:

1. index overhead: wall time of ``ragkit.index`` over a folder vs the local model's own encode
   time for exactly the chunks that run produced (same texts, same batch size), model loaded
   beforehand for both. Goal: overhead <= 10 %.
2. ``ragkit --help`` wall time (goal <= 0.3 s), next to bare ``python -c pass`` as a baseline.
3. cold ``ragkit search`` wall time with the local model, a new process each time
   (goal <= 1.5 s), next to the same baseline.

The folder indexed is N SciFact abstracts written out as text files when ../shared/datasets is
present (distinct texts, so the embedding cache cannot help), else the bundled corpus/.

    python bench/overhead.py [--docs 400] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl"
sys.path.insert(0, str(ROOT))


def make_folder(target: Path, docs: int) -> str:
    """Write the documents to index; returns a description of them."""
    if SCIFACT.is_file():
        target.mkdir(parents=True)
        with SCIFACT.open() as fh:
            for _i, line in zip(range(docs), fh, strict=False):
                doc = json.loads(line)
                (target / f"{doc['_id']}.txt").write_text(
                    doc["title"] + "\n\n" + doc["text"] + "\n"
                )
        return f"{docs} SciFact abstracts"
    shutil.copytree(ROOT / "corpus", target)
    return "the bundled corpus/"


def chunk_texts(folder: Path, settings: object) -> list[str]:
    """The chunk texts an index run over ``folder`` embeds, made the way the pipeline makes them."""
    from ragkit.chunking import chunk_document
    from ragkit.documents import discover, load_document
    from ragkit.embedders.local import LocalEmbedder

    counter = LocalEmbedder()
    limit = min(settings.chunk_tokens, counter.max_tokens)  # type: ignore[attr-defined]
    files, _ = discover(folder)
    texts: list[str] = []
    for file in files:
        doc = load_document(file, folder)
        chunks = chunk_document(
            doc,
            counter.count_tokens,
            max_tokens=limit,
            overlap=settings.chunk_overlap,  # type: ignore[attr-defined]
        )
        texts.extend(c.text for c in chunks)
    return texts


def wall(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 2):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=400, help="SciFact abstracts to index")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each CLI timing")
    args = parser.parse_args()

    import numpy as np

    import ragkit
    from ragkit.embedders import make_embedder
    from ragkit.store import Store

    work = Path(tempfile.mkdtemp(prefix="ragkit-bench-"))
    try:
        what = make_folder(work / "docs", args.docs)
        settings = ragkit.Settings.load(environ={}, index_dir=work / "indexes", embedder="local")

        # 1. Index overhead. The model is loaded once up front and shared by both measurements;
        # the encode is timed before and after the index run, so drift in machine load shows.
        embedder = make_embedder("local")  # the model ragkit.index uses for a new index
        embedder.embed(["warm up the model"])
        texts = chunk_texts(work / "docs", settings)
        batch = max(settings.batch_size * 4, 64)  # what the pipeline hands the embedder

        def encode() -> float:
            started = time.perf_counter()
            for start in range(0, len(texts), batch):
                vectors = embedder.embed(texts[start : start + batch])
                assert vectors.dtype == np.float32
            return time.perf_counter() - started

        t_before = encode()
        started = time.perf_counter()
        report = ragkit.index(work / "docs", settings)
        t_index = time.perf_counter() - started
        t_after = encode()
        t_encode = (t_before + t_after) / 2
        with Store.open(settings.index_path) as store:
            stored = [t for (t,) in store.db.conn.execute("SELECT text FROM chunks")]
        assert sorted(stored) == sorted(texts), "the pipeline embedded other chunks than were timed"
        overhead = t_index / t_encode - 1

        # 2 and 3. CLI wall times in fresh processes.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RAGKIT_"))}
        env["PYTHONPATH"] = str(ROOT)
        env["RAGKIT_INDEX_DIR"] = str(work / "indexes")
        py = [sys.executable]
        base = [wall(py + ["-c", "pass"], env, work) for _ in range(args.repeat)]
        helps = [wall(py + ["-m", "ragkit", "--help"], env, work) for _ in range(args.repeat)]
        query = ["-m", "ragkit", "search", "how do cells respond to oxidative stress"]
        searches = [wall(py + query, env, work) for _ in range(args.repeat)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    print(f"indexed {what}: {report.documents} documents, {len(texts)} chunks")
    print(f"  ragkit index wall time     {t_index:8.2f} s")
    print(
        f"  model encode, same chunks  {t_encode:8.2f} s"
        f"  (before {t_before:.2f} s, after {t_after:.2f} s)"
    )
    print(f"  overhead                   {overhead:+8.1%}   (goal <= +10 %)")
    print(f"python -c pass (baseline)    {med(base):8.3f} s  median of {args.repeat}")
    print(
        f"ragkit --help                {med(helps):8.3f} s  = baseline x"
        f" {med(helps) / med(base):.1f}   (goal <= 0.3 s)"
    )
    print(
        f"cold ragkit search (local)   {med(searches):8.3f} s  = baseline x"
        f" {med(searches) / med(base):.1f}   (goal <= 1.5 s)"
    )


if __name__ == "__main__":
    main()
