"""The opt-in offline embedder: all-MiniLM-L6-v2 with int8 products, run by onnxruntime.

Chosen with ``--embedder local:all-MiniLM-L6-v2-int8``; needs ``pip install 'ragkit[onnx]'``.

The ONNX graph is built from the bundled safetensors on first use (see ``minilm_onnx``) and
cached under ``$XDG_CACHE_HOME/ragkit/onnx`` (default ``~/.cache/ragkit/onnx``), keyed by the
weights' SHA-256, the onnxruntime version and the graph recipe's version, written atomically,
and rebuilt when it cannot be loaded. If the cache folder cannot be written, the graph is built
in memory for the process (a warning is logged) and nothing else changes.

Its vectors are not the float32 model's (cosine ~0.998 to them), and each recipe of the graph
gives slightly different ones, so its model name carries the recipe:
``all-MiniLM-L6-v2-int8-r4``, which ``all-MiniLM-L6-v2-int8`` names. An index records it, its
embedding cache never mixes vectors of two recipes, and an index built with an older recipe is
refused with the command that rebuilds it (see ``ragkit.embedders.retired_model``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ragkit.embedders.local import LocalEmbedder

__all__ = [
    "PASS_TOKENS",
    "RECIPE_VERSION",
    "SESSION_UNFUSED",
    "OnnxLocalEmbedder",
    "cache_root",
    "open_session",
    "padded_batch",
    "session_options",
]

logger = logging.getLogger(__name__)

# Bump when minilm_onnx / minilm_int8 build a graph that gives other vectors: cached graphs of
# another recipe are ignored, and the model name (what an index and its embedding cache record)
# changes.
# 1: unfused graph, Q/K/V int8. 2: onnxruntime's fused operators, Attention float32.
# 3: QAttention (Q/K/V int8, 7-bit weights, outlier channels smoothed). 4: LayerNorm unfused
# (Add, Add, LayerNormalization), FastGelu.
RECIPE_VERSION = 4
_HIDDEN = 384
# Padded word pieces in one forward pass. Small passes keep a pass's activations in the CPU's
# caches: a 256-piece chunk alone in its pass gave ~20% more chunks per CPU-second than
# 32-chunk passes, while very short texts still share a pass (one each costs them ~30%).
# ``python bench/int8_profile.py`` measures the choice.
PASS_TOKENS = 256
# onnxruntime graph fusions its sessions must not apply: SkipLayerNormFusion would turn the
# graph's Add, Add, LayerNormalization back into SkipLayerNormalization, ~3.5x slower here (see
# minilm_onnx). onnxruntime ignores names it does not know; a test checks the optimized graph.
SESSION_UNFUSED = ("SkipLayerNormFusion",)


def cache_root() -> Path:
    """Folder of the built ONNX graphs: ``$XDG_CACHE_HOME/ragkit/onnx`` or ``~/.cache/...``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ragkit" / "onnx"


def _weights_digest(weights: Path, root: Path) -> str:
    """SHA-256 of the weights file, remembered per (path, size, mtime) so it is read once."""
    stat = weights.stat()
    stamp = f"{weights.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
    memo = root / f"digest-{hashlib.sha256(stamp).hexdigest()[:32]}.txt"
    try:
        known = memo.read_text().strip()
        if len(known) == 64:
            return known
    except OSError:
        pass
    sha = hashlib.sha256()
    with weights.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    digest = sha.hexdigest()
    _write_atomically(memo, digest.encode())
    return digest


def _write_atomically(path: Path, data: bytes) -> bool:
    """Write via a temporary file and rename; False (and a warning) if the folder is read-only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        logger.warning("cannot write %s (%s): the local model's graph is not cached", path, exc)
        return False
    return True


def _build(model_dir: Path, tokenizer: Any) -> bytes:
    """The serialized int8 model, built from the safetensors in model_dir (``tokenizer`` encodes
    the calibration texts)."""
    from ragkit.embedders.minilm_int8 import CALIBRATION_TEXTS, int8_graph

    started = time.perf_counter()
    encodings = tokenizer.encode_batch_fast(list(CALIBRATION_TEXTS))
    calibration = (padded_batch(encodings, [row]) for row in range(len(encodings)))
    data = int8_graph(model_dir, calibration)
    logger.info("built the int8 ONNX graph in %.1fs", time.perf_counter() - started)
    return data


def _require_onnxruntime() -> None:
    from ragkit.errors import ConfigError

    for package in ("onnxruntime", "onnx"):
        if importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"the int8 local model needs {package}: run `pip install 'ragkit[onnx]'`,"
                " or use --embedder local:all-MiniLM-L6-v2"
            )


def session_options() -> Any:
    """onnxruntime options as the embedder runs its graph: one thread a session (embed() runs
    self.threads forward passes at once), every optimization, onnxruntime's own log (stderr)
    at errors only."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def open_session(model: str | bytes, options: Any = None) -> Any:
    """An onnxruntime CPU session on a graph (path or serialized), SESSION_UNFUSED left out;
    ``options`` default to session_options()."""
    import onnxruntime as ort

    return ort.InferenceSession(
        model,
        options if options is not None else session_options(),
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(SESSION_UNFUSED),
    )


def padded_batch(encodings: Sequence[Any], rows: Sequence[int]) -> dict[str, NDArray[np.int64]]:
    """The graph's inputs for these rows of ``encodings``: their token ids, right-padded to the
    longest, and the attention mask marking the real tokens."""
    width = max(len(encodings[row]) for row in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        n = len(encodings[row])
        ids[i, :n] = encodings[row].ids
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _passes(lengths: NDArray[np.int64], batch_size: int) -> list[NDArray[np.intp]]:
    """Text indices grouped into forward passes: similar lengths, at most PASS_TOKENS padded
    word pieces (and batch_size texts) a pass, longest first so the last passes the workers
    pick up are the quick ones. Stable: ties keep input order."""
    order = np.argsort(-lengths, kind="stable")
    passes: list[NDArray[np.intp]] = []
    start = 0
    while start < len(order):
        width = max(int(lengths[order[start]]), 1)  # the widest row of the pass is its first
        rows = max(1, min(batch_size, PASS_TOKENS // width))
        passes.append(order[start : start + rows])
        start += rows
    return passes


class OnnxLocalEmbedder(LocalEmbedder):
    """all-MiniLM-L6-v2 with int8 products on onnxruntime (cosine ~0.998 to float32)."""

    # What users name it (``local:all-MiniLM-L6-v2-int8``), and what an index records.
    alias = "all-MiniLM-L6-v2-int8"
    model = f"{alias}-r{RECIPE_VERSION}"

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        batch_size: int = 32,
        threads: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        # cache_dir: where built graphs are kept (default: cache_root()).
        super().__init__(model_dir, batch_size=batch_size, threads=threads)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
        self._session: Any = None
        self._session_lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed texts as (n, 384) float32 unit rows; inputs past 254 word pieces are truncated."""
        out = np.empty((len(texts), _HIDDEN), dtype=np.float32)
        if not texts:
            return out
        tokenizer, session = self._encoding_tokenizer(), self._loaded_session()
        encodings = tokenizer.encode_batch_fast(list(texts))
        lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
        passes = _passes(lengths, self.batch_size)
        workers = min(self.threads, len(passes))

        def forward(rows: NDArray[np.intp]) -> NDArray[np.float32]:
            (pooled,) = session.run(None, padded_batch(encodings, rows.tolist()))
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            return np.asarray(pooled / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)

        # Each worker runs whole forward passes on one thread (the session's own pool has one):
        # measured ~20% more chunks per CPU-second than one pass at a time on two threads, whose
        # small per-operator jobs (attention heads, LayerNorm rows) keep threads waiting. One
        # pass (a query) runs on the calling thread.
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(forward, passes) if workers > 1 else map(forward, passes)
            for rows, vectors in zip(passes, results, strict=True):
                out[rows] = vectors
        return out

    def graph_path(self) -> Path:
        """Where this model's built graph is (or will be) cached."""
        _require_onnxruntime()
        import onnxruntime

        weights = self._model_file("model.safetensors")
        digest = _weights_digest(weights, self.cache_dir)
        name = f"{self.model}-{digest[:16]}-ort{onnxruntime.__version__}.onnx"
        return self.cache_dir / name

    def _loaded_session(self) -> Any:
        if self._session is None:
            with self._session_lock:
                if self._session is None:
                    self._session = self._open_session()
        return self._session

    def _open_session(self) -> Any:
        _require_onnxruntime()
        from onnxruntime.capi.onnxruntime_pybind11_state import (  # type: ignore[import-untyped]
            Fail,
            InvalidGraph,
            InvalidProtobuf,
        )

        path = self.graph_path()
        if path.is_file():
            try:
                return open_session(str(path))
            except (Fail, InvalidGraph, InvalidProtobuf) as exc:  # a truncated or garbled file
                logger.warning("cached graph %s is unreadable (%s): rebuilding it", path, exc)
        data = _build(self.model_dir, self._encoding_tokenizer())
        _write_atomically(path, data)
        return open_session(data)
