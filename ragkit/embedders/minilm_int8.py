"""The int8 all-MiniLM-L6-v2 (recipe 4): calibrate the graph of ``minilm_onnx``, then write it int8.

1. The float32 graph runs CALIBRATION_TEXTS and records each layer's largest Q/K/V input per
   hidden channel: the factors that bring its outlier channels down before int8.
2. The graph is written again as the int8 model (``minilm_onnx``): ``QAttention`` (Q/K/V int8,
   those factors folded in), the dense layers ``DynamicQuantizeMatMul`` (weights int8 per output
   channel, activations quantized per call at run time) with their input rows scaled.

Measured on tests/data, min cosine to the float32 vectors, one text a pass: dense layers int8
alone 0.993; Q/K/V plain int8 too 0.987; with 7-bit weights 0.986; with the channel smoothing
too 0.991. In embed()'s passes, where short texts share one: 0.990 (0.988 before padding rows
were zeroed). Q/K/V in int8 saves ~10% of the model's time (``python bench/int8_profile.py``).
Recipe 4 (the LayerNorms unfused and GELU's tanh approximation, see ``minilm_onnx``) is ~10%
quicker again at the same closeness: min 0.990, mean 0.997 in embed()'s passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from ragkit.embedders.minilm_onnx import _HIDDEN, QKV_INPUTS, ROW_SCALED, build_graph

if TYPE_CHECKING:
    import onnx

__all__ = ["CALIBRATION_TEXTS", "int8_graph", "qkv_input_maxima"]

# Texts whose Q/K/V inputs set the smoothing factors (minilm_onnx._smoothing): empty ([CLS] and
# [SEP] alone, where the outlier channels are largest relative to the rest), a question, prose,
# science, Markdown and code. Changing them changes the vectors: bump local_onnx.RECIPE_VERSION.
CALIBRATION_TEXTS = (
    "",
    "how do I rotate the signing keys without downtime?",
    "The mitochondrion is the organelle in which cellular respiration produces most of the cell's"
    " ATP. Its inner membrane folds into cristae, which raise the surface available to the"
    " electron transport chain; the proteins there pump protons across the membrane, and ATP"
    " synthase lets them flow back, turning the gradient into chemical energy. Mitochondria carry"
    " their own small circular genome, inherited from the mother, and divide independently of the"
    " cell, which supports the view that they descend from bacteria engulfed long ago.",
    "## Installing\n\nRun `pip install ragkit`, then `ragkit index ./docs` to build an index of a"
    " folder. Files are split into chunks of about 256 tokens that keep their file, page, lines"
    ' and heading; `ragkit search "query"` prints the best chunks with their sources, and'
    " `ragkit ask` answers with numbered citations. Set OPENAI_API_KEY to use OpenAI's models;"
    " without it everything runs offline on the bundled local model.",
    "def merge(intervals):\n    intervals.sort(key=lambda pair: pair[0])\n    merged = []\n"
    "    for start, end in intervals:\n        if merged and start <= merged[-1][1]:\n"
    "            merged[-1][1] = max(merged[-1][1], end)\n        else:\n"
    "            merged.append([start, end])\n    return merged",
    "In 1848 revolutions swept across Europe, from Paris to Vienna, Berlin and Budapest. Students,"
    " workers and middle-class liberals demanded constitutions, a free press and national unity;"
    " within two years most of the old monarchies had restored their power, yet serfdom in the"
    " Habsburg lands was abolished for good and the ideas of the year shaped politics for the rest"
    " of the century. Prices rose 12% in 1847; harvests failed in 1845-1846.",
)


def qkv_input_maxima(
    fp32: onnx.ModelProto, feeds: Iterable[Mapping[str, NDArray[np.int64]]]
) -> list[NDArray[np.float32]]:
    """Each layer's largest Q/K/V input magnitude per hidden channel, running the float32 graph
    (from ``build_graph``) on ``feeds`` (its inputs for one text each)."""
    from onnx import helper

    from ragkit.embedders.local_onnx import open_session

    probed = type(fp32)()
    probed.CopyFrom(fp32)
    probed.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in QKV_INPUTS)
    session = open_session(probed.SerializeToString())
    maxima = [np.zeros(_HIDDEN, dtype=np.float32) for _ in QKV_INPUTS]
    for feed in feeds:
        for layer, values in enumerate(session.run(list(QKV_INPUTS), dict(feed))):
            rows = np.abs(values).reshape(-1, _HIDDEN)
            maxima[layer] = np.maximum(maxima[layer], rows.max(axis=0))
    return maxima


def int8_graph(model_dir: Path, calibration: Iterable[Mapping[str, NDArray[np.int64]]]) -> bytes:
    """The int8 model (recipe 4), serialized; ``calibration`` is the graph's inputs for
    CALIBRATION_TEXTS, one text each (the caller tokenizes)."""
    weights = model_dir / "model.safetensors"
    maxima = qkv_input_maxima(build_graph(weights), calibration)
    graph = build_graph(weights, row_scaled=ROW_SCALED, qkv_maxima=maxima)
    data: bytes = graph.SerializeToString()
    return data
