"""all-MiniLM-L6-v2 as a fused ONNX graph built from the bundled safetensors.

The graph is written with the ``onnx`` package's helpers (no torch), mostly in onnxruntime's
fused transformer operators (domain ``com.microsoft``): ``EmbedLayerNormalization``,
``Attention`` and ``BiasGelu``; a padded batch of token ids and its attention mask in,
mean-pooled (not yet normalised) sentence vectors out. In float32 it is the reference model (a
test checks it).

Each residual LayerNorm is two ``Add``s and the standard ``LayerNormalization``, not the fused
``SkipLayerNormalization``: on this project's machines (AVX2) onnxruntime's fused kernel took
~590 us for one 225-token layer's rows where the three plain operators took ~165 us, ~10% of the
int8 model's time (``bench/int8_profile.py``). onnxruntime would fuse them back, so sessions
disable that fusion (``local_onnx.SESSION_UNFUSED``).

``minilm_int8`` calibrates the int8 model and has it written here:

- dense layers named in ``row_scaled`` scale each input row to a largest magnitude of 1 before
  their product and scale the product's rows back (see ROW_SCALED), so that one int8 scale can
  cover a whole call's activations;
- given ``qkv_maxima``, the dense layers are ``DynamicQuantizeMatMul`` (weights int8 per output
  column, activations quantized per call at run time), and each ``Attention`` becomes
  ``QAttention``, its Q/K/V product in int8 (the attention products stay float32). A few
  hidden channels of BERT's LayerNorm outputs carry values 20-30x the others (channel 99 on
  [CLS] most), and one int8 scale covers the whole input: those channels are divided down
  before quantization and their weight rows multiplied up (SmoothQuant's identity,
  x W = (x / s)(s W)); padding rows are zeroed so that they do not widen the scale. Its weights
  use 7 bits (+-63): without AVX-512 VNNI or AMX, int8 products run on ``vpmaddubsw``, whose
  16-bit pair sums saturate with 8-bit weights. GELU becomes its tanh approximation
  (``FastGelu``): ~40% quicker than the exact ``BiasGelu`` alone, ~1.5% of the model, and as
  close to the float32 vectors on the test data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import onnx

__all__ = ["QKV_INPUTS", "ROW_SCALED", "build_graph"]

# all-MiniLM-L6-v2's shape (its config.json).
_HIDDEN = 384
_HEADS = 12
_LAYERS = 6
_LN_EPS = 1e-12
# Opset 20: every standard operator used here; the fused ones come from com.microsoft v1.
_OPSET = 20
_MS = "com.microsoft"
# Dense layers whose input rows are scaled to a largest magnitude of 1 before the int8 product
# (and the product's rows scaled back). One int8 scale covers a whole call's activations, and the
# rows entering these layers differ in magnitude from token to token (the [CLS] and [SEP] rows
# most): measured on tests/data with every product int8 (recipe 1), this lifted the min cosine to
# the float32 vectors from 0.964 to 0.983, for a few percent of the speed.
ROW_SCALED = ("out", "ffn_in", "ffn_out")
# The dense layers' int8 weights use all 8 bits: 7 lost more accuracy (tests/data min cosine
# 0.988) than AVX2's saturation does. QAttention's use 7 bits (see the module's docstring).
_DENSE_WEIGHT_MAX = 127
_QKV_WEIGHT_MAX = 63
# Hidden channels whose largest calibration magnitude is above this quantile of all channels'
# are divided down to it before QAttention quantizes them (see the module's docstring).
_SMOOTH_QUANTILE = 0.97
# Each layer's Q/K/V input (a tensor of the graph): the embeddings' LayerNorm, then the previous
# layer's last one.
QKV_INPUTS = ("embedded", *(f"l{i}.ln2" for i in range(_LAYERS - 1)))


def _weights(path: Path) -> dict[str, NDArray[np.float32]]:
    from safetensors.numpy import load_file

    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in load_file(str(path)).items()}


def build_graph(
    safetensors_path: Path,
    *,
    row_scaled: tuple[str, ...] = (),
    qkv_maxima: Sequence[NDArray[np.float32]] | None = None,
) -> onnx.ModelProto:
    """The BERT forward pass with mean pooling, as an ONNX model of fused operators.

    Dense layers named in ``row_scaled`` ("out", "ffn_in", "ffn_out") get their input rows
    scaled as described at ROW_SCALED; in float32 that changes nothing but rounding. Without
    ``qkv_maxima`` the graph is float32 throughout. With them (each layer's largest Q/K/V input
    magnitude per hidden channel, from ``minilm_int8.qkv_input_maxima``) it is the int8 model:
    dense layers ``DynamicQuantizeMatMul``, each layer's attention ``QAttention`` with int8 Q/K/V
    weights, smoothed as the module's docstring says, and GELU ``FastGelu``. Only onnxruntime
    runs it (the fused operators are its own).
    """
    from onnx import TensorProto, helper, numpy_helper

    w = _weights(safetensors_path)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: NDArray[np.generic]) -> str:
        inits.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def node(op: str, inputs: list[str], output: str, *, ms: bool = False, **attrs: Any) -> str:
        domain = _MS if ms else None
        nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs))
        return output

    def product(x: str, key: str, name: str) -> str:
        """x @ W for the torch Linear ``key`` (stored (out, in); MatMul wants (in, out)), in
        float32 or, in the int8 model, int8."""
        weight = np.ascontiguousarray(w[key + ".weight"].T)
        if qkv_maxima is None:
            return node("MatMul", [x, const(f"{name}.w", weight)], name)
        quantized, scale = _int8_columns(weight, _DENSE_WEIGHT_MAX)
        int8 = [const(f"{name}.w", quantized), const(f"{name}.w.scale", scale)]
        int8.append(const(f"{name}.w.zero", np.zeros_like(scale, dtype=np.int8)))
        return node("DynamicQuantizeMatMul", [x, *int8], name, ms=True)

    def matmul(x: str, key: str, name: str) -> str:
        """The dense layer ``key``'s product, its input rows scaled if it is in row_scaled."""
        if name.split(".")[1] not in row_scaled:
            return product(x, key, f"{name}.mm")
        # Divide each token's row by its largest magnitude, and multiply the product back.
        amax = node("ReduceMax", [node("Abs", [x], f"{name}.abs"), last_axis], f"{name}.amax")
        amax = node("Max", [amax, tiny], f"{name}.amax1")
        mm = product(node("Div", [x, amax], f"{name}.xn"), key, f"{name}.mm")
        return node("Mul", [mm, amax], f"{name}.rows")

    def skip_norm(x: str, skip: str, bias_key: str, norm_key: str, name: str) -> str:
        """LayerNorm(x + bias + skip): the dense bias, the residual, the norm (see the module's
        docstring for why not the fused SkipLayerNormalization)."""
        biased = node("Add", [x, const(f"{name}.bias", w[bias_key + ".bias"])], f"{name}.biased")
        residual = node("Add", [biased, skip], f"{name}.residual")
        gamma, beta = w[norm_key + ".weight"], w[norm_key + ".bias"]
        norm = [residual, const(f"{name}.g", gamma), const(f"{name}.b", beta)]
        return node("LayerNormalization", norm, name, axis=-1, epsilon=_LN_EPS)

    i64 = np.int64
    last_axis = const("last_axis", np.array([-1], dtype=i64))
    tiny = const("tiny", np.array(1e-12, dtype=np.float32))
    # Embeddings: word + position (token type 0's row folded in), then LayerNorm; the op also
    # gives each row's real length (right padding), the mask Attention takes.
    ids32 = node("Cast", ["input_ids"], "ids32", to=TensorProto.INT32)
    mask32 = node("Cast", ["attention_mask"], "mask32", to=TensorProto.INT32)
    position = w["embeddings.position_embeddings.weight"]
    position = position + w["embeddings.token_type_embeddings.weight"][0]
    emb = [
        ids32,
        "",  # no segment ids: token type 0 is folded into the positions
        const("word_embeddings", w["embeddings.word_embeddings.weight"]),
        const("position_embeddings", position),
        "",
        const("emb_ln.g", w["embeddings.LayerNorm.weight"]),
        const("emb_ln.b", w["embeddings.LayerNorm.bias"]),
        mask32,
    ]
    nodes.append(
        helper.make_node(
            "EmbedLayerNormalization",
            emb,
            ["embedded", "mask_index"],
            name="embedded",
            domain=_MS,
            epsilon=_LN_EPS,
        )
    )
    # The mask as (batch, length, 1) floats: 1 for the real tokens, 0 for the padding.
    mask = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    mask3 = node("Unsqueeze", [mask, const("axis_2", np.array([2], dtype=i64))], "mask3")
    x = "embedded"
    for i in range(_LAYERS):
        p, n = f"encoder.layer.{i}.", f"l{i}"
        att = p + "attention.self."
        # Q, K and V in one (in, 3 * hidden) weight, as Attention takes them.
        qkv_w = np.concatenate([w[att + c + ".weight"].T for c in ("query", "key", "value")], 1)
        qkv_b = np.concatenate([w[att + c + ".bias"] for c in ("query", "key", "value")])
        if qkv_maxima is None:
            qkv = [x, const(f"{n}.att.w", qkv_w), const(f"{n}.att.b", qkv_b), "mask_index"]
            ctx = node("Attention", qkv, f"{n}.att", ms=True, num_heads=_HEADS)
        else:
            smooth = _smoothing(qkv_maxima[i])
            xs = node("Mul", [x, const(f"{n}.smooth", 1 / smooth)], f"{n}.smoothed")
            xs = node("Mul", [xs, mask3], f"{n}.unpadded")
            quantized = [f"{n}.xq", f"{n}.xq.scale", f"{n}.xq.zero"]
            nodes.append(helper.make_node("DynamicQuantizeLinear", [xs], quantized, name=f"{n}.xq"))
            weight, scale = _int8_columns(qkv_w * smooth[:, None], _QKV_WEIGHT_MAX)
            qkv = [quantized[0], const(f"{n}.att.w", weight), const(f"{n}.att.b", qkv_b)]
            qkv += [quantized[1], const(f"{n}.att.w.scale", scale), "mask_index", quantized[2]]
            qkv.append(const(f"{n}.att.w.zero", np.zeros_like(scale, dtype=np.int8)))
            ctx = node("QAttention", qkv, f"{n}.att", ms=True, num_heads=_HEADS)
        h = matmul(ctx, p + "attention.output.dense", f"{n}.out")
        h = skip_norm(
            h, x, p + "attention.output.dense", p + "attention.output.LayerNorm", f"{n}.ln1"
        )
        f = matmul(h, p + "intermediate.dense", f"{n}.ffn_in")
        gelu = "BiasGelu" if qkv_maxima is None else "FastGelu"  # exact; tanh approximation
        f_bias = const(f"{n}.gelu.b", w[p + "intermediate.dense.bias"])
        f = node(gelu, [f, f_bias], f"{n}.gelu", ms=True)
        f = matmul(f, p + "output.dense", f"{n}.ffn_out")
        x = skip_norm(f, h, p + "output.dense", p + "output.LayerNorm", f"{n}.ln2")

    # Mean over the real tokens: sum(x * mask) / sum(mask).
    axis1 = const("axis_1", np.array([1], dtype=i64))
    total = node("ReduceSum", [node("Mul", [x, mask3], "masked_x"), axis1], "sum", keepdims=0)
    count = node("ReduceSum", [mask3, axis1], "count", keepdims=0)
    node("Div", [total, count], "pooled")

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"])
    attn = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "length"])
    outs = [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", _HIDDEN])]
    graph = helper.make_graph(nodes, "all-MiniLM-L6-v2", [ids, attn], outs, initializer=inits)
    opsets = [helper.make_opsetid("", _OPSET), helper.make_opsetid(_MS, 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9  # readable by every onnxruntime that has opset 20
    return model


def _smoothing(maxima: NDArray[np.float32]) -> NDArray[np.float32]:
    """Per hidden channel, what to divide a Q/K/V input by: channels whose calibration maximum is
    above _SMOOTH_QUANTILE of all channels' come down to it, the others stay."""
    ceiling = np.float32(max(float(np.quantile(maxima, _SMOOTH_QUANTILE)), 1e-6))
    factors: NDArray[np.float32] = np.maximum(maxima / ceiling, np.float32(1), dtype=np.float32)
    return factors


def _int8_columns(
    weight: NDArray[np.float32], largest: int
) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """Symmetric int8 weights per output column, within +-largest, and each column's scale."""
    scale = (np.maximum(np.abs(weight).max(axis=0), 1e-12) / largest).astype(np.float32)
    quantized = np.clip(np.rint(weight / scale), -largest, largest).astype(np.int8)
    return quantized, scale
