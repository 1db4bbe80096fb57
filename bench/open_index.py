"""Per-query cost: ``ragkit.search`` (opens the index each call) vs an open ``ragkit.open()`` Index.

Indexes N SciFact abstracts (or the bundled corpus/ when ../shared/datasets is absent) with the
local model, then runs the same queries (SciFact's own, or the corpus titles) both ways in this
one run and reports p50/p95 per query and the ratio of the p50s, in each mode.

    python bench/open_index.py [--docs 500] [--queries 40]
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact"
sys.path.insert(0, str(ROOT))

import ragkit  # noqa: E402


def make_folder(target: Path, docs: int) -> list[str]:
    """Write the documents; returns queries to ask of them."""
    target.mkdir(parents=True)
    if (SCIFACT / "corpus.jsonl").is_file():
        with (SCIFACT / "corpus.jsonl").open() as fh:
            for _i, line in zip(range(docs), fh, strict=False):
                doc = json.loads(line)
                (target / f"{doc['_id']}.txt").write_text(f"{doc['title']}\n\n{doc['text']}\n")
        with (SCIFACT / "queries.jsonl").open() as fh:
            return [json.loads(line)["text"] for line in fh]
    shutil.rmtree(target)
    shutil.copytree(ROOT / "corpus", target)
    return [p.stem.replace("-", " ").replace("_", " ") for p in sorted(target.rglob("*.*"))]


def times(call: Callable[[str], object], queries: list[str]) -> list[float]:
    out = []
    for q in queries:
        started = time.perf_counter()
        call(q)
        out.append(time.perf_counter() - started)
    return out


def p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--queries", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        queries = make_folder(Path(tmp) / "docs", args.docs)[: args.queries]
        settings = ragkit.Settings.load(index_dir=Path(tmp) / "indexes", embedder="local")
        report = ragkit.index(Path(tmp) / "docs", settings)
        print(f"{report.documents} documents, {report.chunks} chunks; {len(queries)} queries")
        with ragkit.open(settings) as idx:
            idx.search(queries[0])  # the first query also loads the model's files
            for mode in ("dense", "keyword", "hybrid"):
                one_shot = times(
                    functools.partial(ragkit.search, settings=settings, mode=mode), queries
                )
                held = times(functools.partial(idx.search, mode=mode), queries)
                ratio = statistics.median(one_shot) / statistics.median(held)
                print(
                    f"  {mode:<8} ragkit.search p50 {p(one_shot, 0.5):7.1f} ms"
                    f" p95 {p(one_shot, 0.95):7.1f} | Index.search p50 {p(held, 0.5):6.1f} ms"
                    f" p95 {p(held, 0.95):6.1f} | {ratio:.1f}x"
                )


if __name__ == "__main__":
    main()
