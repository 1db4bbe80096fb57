"""Where the int8 local model's time goes, and what this CPU's int8 kernels can give it.

The measurement behind issue 13's figures (``local:all-MiniLM-L6-v2-int8``, see
ragkit/embedders/minilm_int8.py). Everything runs on one thread, interleaved, best of
--repeats CPU times (the machines are shared and noisy):

1. the CPU's SIMD features: int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX) are
   what make int8 several times float32; without them (AVX2 alone) int8 products run on
   pmaddubsw/pmaddwd pairs;
2. one dense-layer product as the model runs it (tokens x 384 x 1536): onnxruntime float32
   MatMul, onnxruntime's dynamic int8 MatMul (weights per channel, as the model's), numpy's
   sgemm, and torch's (what sentence-transformers runs), in GFLOP/s;
3. whole-model chunks per CPU-second: the int8 graph in its shipped forward passes, and
   sentence-transformers float32 (when importable); and the ceiling if every product of the
   model (dense layers and attention) ran at the int8 kernel's rate and nothing else cost
   anything;
4. forward passes of at most PASS_TOKENS padded word pieces (as shipped) against one text a
   pass and 32 texts a pass, on 256-piece chunks and on very short texts;
5. the int8 graph's time per operator group in its shipped passes (onnxruntime's profiler).

    python bench/int8_profile.py [--chunks 32] [--repeats 10]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from local_embedder import cpu_line, synthetic_chunks  # noqa: E402

from ragkit.embedders.local_onnx import (  # noqa: E402
    PASS_TOKENS,
    OnnxLocalEmbedder,
    _passes,
    open_session,
    padded_batch,
    session_options,
)

HIDDEN, FFN, LAYERS = 384, 1536, 6
GROUPS = {
    "DynamicQuantizeMatMul": "int8 dense products (attention output, FFN in, FFN out)",
    "QAttention": "QAttention: int8 Q/K/V product; float32 QK^T, softmax, x V",
    "Attention": "Attention: float32 Q/K/V product, QK^T, softmax, x V",
    "Abs": "row scaling around the int8 products",
    "ReduceMax": "row scaling around the int8 products",
    "Max": "row scaling around the int8 products",
    "Div": "row scaling around the int8 products",
    "Mul": "row scaling around the int8 products",
    "SkipLayerNormalization": "LayerNorms (with residual), GELU, embeddings",
    "LayerNormalization": "LayerNorms (with residual), GELU, embeddings",
    "Add": "LayerNorms (with residual), GELU, embeddings",
    "BiasGelu": "LayerNorms (with residual), GELU, embeddings",
    "FastGelu": "LayerNorms (with residual), GELU, embeddings",
    "EmbedLayerNormalization": "LayerNorms (with residual), GELU, embeddings",
}
# Nodes (by their name's ending) preparing QAttention's input: outlier channels divided down,
# padding rows zeroed, int8 quantization.
QKV_INPUT = (".smoothed", ".unpadded", ".xq")


def group(op: str, node: str) -> str:
    """Which operator group of the report a node of the int8 graph is in."""
    if node.endswith(QKV_INPUT):
        return "QAttention's input: smoothing, padding zeroed, quantized"
    return GROUPS.get(op, f"other ({op})")


def best_cpu_seconds(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best CPU time of each callable, the callables interleaved repeats times."""
    for fn in runs.values():
        fn()
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            started = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - started)
    return best


def session(model: Any, *, profile: bool = False) -> Any:
    """A one-thread onnxruntime session on a path or serialized model, as the embedder opens."""
    options = session_options()
    options.enable_profiling = profile
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "ragkit-int8-profile")
    return open_session(model, options)


def dense_products(tokens: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of one (tokens x 384) @ (384 x 1536) product, one thread, per runtime."""
    from onnx import TensorProto, helper, numpy_helper
    from threadpoolctl import threadpool_limits

    from ragkit.embedders.minilm_onnx import _DENSE_WEIGHT_MAX, _int8_columns

    rng = np.random.default_rng(0)
    a = rng.standard_normal((tokens, HIDDEN), dtype=np.float32)
    w = (rng.standard_normal((HIDDEN, FFN), dtype=np.float32) / 20).astype(np.float32)
    quantized, scale = _int8_columns(w, _DENSE_WEIGHT_MAX)  # as the model's dense layers

    def graph(op: str, weights: dict[str, np.ndarray], domain: str | None = None) -> bytes:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", HIDDEN])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", FFN])
        node = helper.make_node(op, ["x", *weights], ["y"], domain=domain)
        inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        model = helper.make_model(
            helper.make_graph([node], "dense", [x], [y], inits), opset_imports=opsets
        )
        model.ir_version = 9
        data: bytes = model.SerializeToString()
        return data

    int8 = {"w": quantized, "w.scale": scale, "w.zero": np.zeros_like(scale, dtype=np.int8)}
    sessions = {
        "onnxruntime float32": session(graph("MatMul", {"w": w})),
        "onnxruntime int8": session(graph("DynamicQuantizeMatMul", int8, "com.microsoft")),
    }
    runs: dict[str, Callable[[], object]] = {
        name: (lambda s=s: s.run(None, {"x": a})) for name, s in sessions.items()
    }
    limits = threadpool_limits(1)
    runs["numpy float32 (BLAS, 1 thread)"] = lambda: a @ w
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(1)
        ta, tw = torch.from_numpy(a), torch.from_numpy(w)
        runs["torch float32 (sentence-transformers' kernel)"] = lambda: ta @ tw
    try:
        seconds = best_cpu_seconds(runs, repeats)
    finally:
        limits.unregister()
    return {name: 2 * tokens * HIDDEN * FFN / s / 1e9 for name, s in seconds.items()}


def feeds(embedder: OnnxLocalEmbedder, texts: list[str]) -> dict[str, np.ndarray]:
    """The padded batch the int8 graph takes, as OnnxLocalEmbedder.embed builds it."""
    encodings = embedder._encoding_tokenizer().encode_batch_fast(texts)
    return padded_batch(encodings, range(len(texts)))


def model_gflop(mask: np.ndarray) -> float:
    """GFLOP of the model's products for this batch: dense layers and attention's two."""
    lengths = mask.sum(axis=1).astype(np.float64)
    dense = 4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN  # Q, K, V, output; FFN in and out
    attention = 2 * HIDDEN * (lengths**2).sum()  # QK^T and x V, all heads
    return 2 * LAYERS * (dense * lengths.sum() + attention) / 1e9


def op_times(graph: Path, passes: list[dict[str, np.ndarray]], runs: int) -> dict[str, float]:
    """Seconds of each operator group over all passes, from onnxruntime's profiler."""
    profiled = session(str(graph), profile=True)
    for _ in range(runs + 1):  # the first round grows the session's buffers
        for batch in passes:
            profiled.run(None, batch)
    trace = Path(profiled.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    windows = [
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e["name"] == "model_run"
    ][-runs * len(passes) :]
    totals: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        if any(begin <= event["ts"] <= end for begin, end in windows):
            node = event["name"].removesuffix("_kernel_time")
            totals[group(event["args"]["op_name"], node)] += event["dur"]
    return {group: us / 1e6 / runs for group, us in totals.items()}


def pass_sizes(embedder: OnnxLocalEmbedder, graph: Path, repeats: int) -> None:
    """Texts per CPU-second of the int8 graph, one thread, by how texts share forward passes."""
    run = session(str(graph)).run
    sets = {
        "256-piece chunks": synthetic_chunks(64),
        "~15-piece texts": [c[:60] for c in synthetic_chunks(256, seed=2)],
    }
    tokenizer = embedder._encoding_tokenizer()
    for name, texts in sets.items():
        lengths = np.array([len(e) for e in tokenizer.encode_batch_fast(texts)], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        plans = {
            "one text a pass": [order[i : i + 1] for i in range(len(order))],
            f"<= {PASS_TOKENS} word pieces a pass (as shipped)": _passes(lengths, len(texts)),
            "32 texts a pass (before)": [order[i : i + 32] for i in range(0, len(order), 32)],
        }
        batches = {
            plan: [feeds(embedder, [texts[i] for i in rows]) for rows in passes]
            for plan, passes in plans.items()
        }
        seconds = best_cpu_seconds(
            {plan: (lambda b=b: [run(None, f) for f in b]) for plan, b in batches.items()},
            max(2, repeats // 2),
        )
        print(f"{name}, texts per CPU-second:")
        for plan, s in seconds.items():
            print(f"  {plan:48s} {len(texts) / s:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=32, help="bench chunks in the batch")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    print(cpu_line())
    chunks = synthetic_chunks(args.chunks)
    embedder = OnnxLocalEmbedder()
    embedder.embed(["warm up"])  # builds and caches the graph on the very first run
    graph = embedder.graph_path()
    batch = feeds(embedder, chunks)
    tokens = int(batch["attention_mask"].sum())
    print(f"{len(chunks)} chunks, {tokens} word pieces, one thread throughout\n")

    rates = dense_products(tokens, args.repeats)
    print(f"one dense-layer product ({tokens} x {HIDDEN} x {FFN}), GFLOP/s:")
    for name, rate in rates.items():
        print(f"  {name:48s} {rate:7.1f}")
    int8_rate = rates["onnxruntime int8"]
    print(
        f"  int8 / onnxruntime float32: {int8_rate / rates['onnxruntime float32']:.2f};"
        f" int8 / numpy float32: {int8_rate / rates['numpy float32 (BLAS, 1 thread)']:.2f}"
    )

    whole: dict[str, Callable[[], object]] = {}
    run = session(str(graph)).run
    lengths = batch["attention_mask"].sum(axis=1)
    shipped = [feeds(embedder, [chunks[i] for i in rows]) for rows in _passes(lengths, 32)]
    whole["int8 graph (onnxruntime, 1 thread)"] = lambda: [run(None, f) for f in shipped]
    if importlib.util.find_spec("sentence_transformers") is not None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(1)
        st = SentenceTransformer(str(embedder.model_dir), device="cpu")
        whole["sentence-transformers float32, torch 1 thread"] = lambda: st.encode(
            chunks, batch_size=len(chunks)
        )
    seconds = best_cpu_seconds(whole, max(2, args.repeats // 3))
    gflop = model_gflop(batch["attention_mask"])
    print(f"\nwhole model, {gflop / len(chunks):.2f} GFLOP of products per chunk:")
    for name, s in seconds.items():
        print(f"  {name:48s} {len(chunks) / s:6.2f} chunks/CPU-s  ({gflop / s:5.1f} GFLOP/s)")
    ceiling = int8_rate / gflop * len(chunks)
    print(f"  {'ceiling: every product at the int8 kernel rate':48s} {ceiling:6.2f} chunks/CPU-s")
    st_name = "sentence-transformers float32, torch 1 thread"
    if st_name in seconds:
        ours = seconds["int8 graph (onnxruntime, 1 thread)"]
        print(f"  int8 graph / sentence-transformers: {seconds[st_name] / ours:.2f}")
        bound = ceiling * seconds[st_name] / len(chunks)
        print(f"  ceiling / sentence-transformers:    {bound:.2f}")

    print()
    pass_sizes(embedder, graph, args.repeats)

    shares = op_times(graph, shipped, max(2, args.repeats // 3))
    total = sum(shares.values())
    print(
        f"\nint8 graph, time per operator group ({total * 1000:.0f} ms for the chunks, profiled):"
    )
    for group, s in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {group:58s} {s * 1000:7.1f} ms {100 * s / total:5.1f}%")


if __name__ == "__main__":
    main()
