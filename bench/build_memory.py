"""Peak RSS and wall time of one FAISS build from a filled store: ``Store.save_vectors`` with
``rebuild=True``, each run in a fresh child process, on bench/scale.py's embedding-like vectors.

    python bench/build_memory.py --n 100k --dim 1536 [--repeat 3] [--work DIR]

The store is filled once in ``--work`` (kept between runs, so a second invocation measures
the same rows); each child opens it, takes the lock, builds and writes the FAISS file, and
reports its wall time and its own peak RSS (``VmHWM``), next to its RSS before the build.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import count_of, vectors_for  # noqa: E402


def _status(key: str) -> int:
    """This process's ``key`` from /proc/self/status, in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {key} in /proc/self/status: this needs Linux")


def fill(folder: Path, n: int, dim: int) -> None:
    """A store of ``n`` chunks with vectors (1,000 chunks per document)."""
    from ragkit.chunking import Chunk
    from ragkit.store import Store

    store = Store.create(folder, embedder="synthetic", model=f"d{dim}", dimension=dim)
    store.lock()
    with store.bulk():
        for f in range(0, n, 1_000):
            items = range(f, min(n, f + 1_000))
            chunks = [Chunk(j, f"item{i}", 0, 1, 1, 1, None, "", 1) for j, i in enumerate(items)]
            store.put_document(
                path=f"part{f}", sha256=str(f), size=1, mtime=0.0, kind="text",
                pages=0, warnings=(), chunks=chunks,
            )  # fmt: skip
    pending = [i for i, _, _ in store.pending()]
    for s in range(0, len(pending), 10_000):
        part = pending[s : s + 10_000]
        store.set_vectors(part, vectors_for(np.arange(s, s + len(part)), dim))
    store.close()


def child(folder: Path) -> None:
    from ragkit.store import Store

    store = Store.open(folder)
    store.lock()
    before = _status("VmRSS")
    started = time.perf_counter()
    store.save_vectors("auto", rebuild=True)
    wall = time.perf_counter() - started
    store.close()
    print(f"{wall:.3f} {before} {_status('VmHWM')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="100k")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    n = count_of(args.n)
    work = args.work or Path(tempfile.mkdtemp(prefix="ragkit-build-"))
    folder = work / f"store-{args.n}x{args.dim}"
    if not folder.exists():
        fill(folder, n, args.dim)
    runs = []
    for _ in range(args.repeat):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(folder)],
            check=True, capture_output=True, text=True,
        ).stdout.split()  # fmt: skip
        runs.append((float(out[0]), int(out[1]) / 1024, int(out[2]) / 1024))
        wall, before, peak = runs[-1]
        print(f"  build {wall:.2f} s, RSS {before:.0f} MB before it, peak {peak:.0f} MB")
    print(
        f"{args.n} x {args.dim}: build median {statistics.median(r[0] for r in runs):.2f} s,"
        f" peak RSS median {statistics.median(r[2] for r in runs):.0f} MB"
        f" (RSS before the build {statistics.median(r[1] for r in runs):.0f} MB)"
    )


if __name__ == "__main__":
    main()
