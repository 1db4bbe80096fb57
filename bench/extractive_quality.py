"""Do extractive answers quote the sentence that answers? Old and new answerer, same run.

On SciFact (BEIR), each test claim with gold evidence in ``queries.jsonl`` metadata (the
abstract and the indexes of its evidence sentences) is retrieved exactly as ``ragkit ask`` does
(hybrid, k=5) from the ``ragkit eval`` document-protocol index, then answered offline by

- ``old``: the answerer before issue 14 (cosine to the question, plus source rank), kept here
  verbatim for comparison;
- ``new``: ``ragkit.extractive.extractive_answer`` (headings, adornments and questions are not
  answer sentences; the question's content terms count).

The figure: the share of those claims whose quoted sentences include a gold evidence sentence
(a quote "is" a gold sentence when their spans in the abstract overlap by at least half of the
shorter). Also shown: the share whose evidence abstract was retrieved at all (the ceiling).
Only the evaluation reads the metadata; the retriever and answerers get the claim's text alone.
Abstention is off (threshold -1): this measures which sentences are chosen, not when to answer.

The corpus is indexed under --index-dir as ``ragkit eval`` does (5,183 abstracts: minutes; an
index already built by ``ragkit eval --protocol document`` is reused).

    python bench/extractive_quality.py [--dataset ../shared/datasets/scifact] [--index-dir indexes]

One run (2-core shared machine, 9 min with the index already built): 188 claims, evidence
abstract retrieved for 93.1 %; a gold evidence sentence quoted by the old answerer for 60.6 %,
by the new one for 66.5 %.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ragkit.answerer import Answer, Citation, abstention, should_abstain  # noqa: E402
from ragkit.embedders import Embedder, make_embedder  # noqa: E402
from ragkit.evaluation import cache_name, load_beir, sync_corpus  # noqa: E402
from ragkit.extractive import extractive_answer  # noqa: E402
from ragkit.retriever import Hit, search  # noqa: E402
from ragkit.store import Store  # noqa: E402

DEFAULT_DATASET = next(
    (
        p / "shared" / "datasets" / "scifact"
        for p in (ROOT.parent, ROOT.parent.parent)
        if (p / "shared" / "datasets" / "scifact").is_dir()
    ),
    ROOT.parent / "shared" / "datasets" / "scifact",
)

# -- the answerer as it was before issue 14, for comparison ----------------------------------

_OLD_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_OLD_UNIT_START = re.compile(r"\n(?=[ \t]*(?:[-*+•|#]|\d+[.)])\s)|\n[ \t]*\n")


def _old_sentences(text: str) -> list[str]:
    out = []
    for unit in _OLD_UNIT_START.split(text):
        for part in _OLD_SENTENCE_END.split(" ".join(unit.split())):
            sentence = re.sub(r"^(?:[-*+•|#>]+|\d+[.)])\s*", "", part.strip()).strip(" |")
            if len(sentence.split()) >= 4:
                out.append(sentence)
    return out


def old_extractive_answer(
    question: str,
    hits: Sequence[Hit],
    embedder: Embedder,
    *,
    abstain_below: float,
    max_sentences: int = 3,
) -> Answer:
    """The extractive answerer of commit dd579c2, unchanged."""
    model = f"{embedder.name}:{embedder.model}"
    if should_abstain(hits, abstain_below):
        return abstention(question, "extractive", model, hits)
    candidates: list[tuple[int, int, str]] = []
    for n, hit in enumerate(hits, start=1):
        for pos, sentence in enumerate(_old_sentences(hit.text)):
            candidates.append((n, pos, sentence))
    if not candidates:
        candidates = [(n, 0, " ".join(h.text.split())) for n, h in enumerate(hits, start=1)]
    vectors = embedder.embed([question] + [s for _, _, s in candidates])
    scores = vectors[1:] @ vectors[0]
    rank_bonus = np.array([0.02 * (len(hits) - n) for n, _, _ in candidates], dtype=np.float32)
    order = np.argsort(-(scores + rank_bonus), kind="stable")
    chosen: list[tuple[int, int, str]] = []
    seen: set[str] = set()
    for i in order:
        n, pos, sentence = candidates[int(i)]
        if sentence.lower() in seen:
            continue
        seen.add(sentence.lower())
        chosen.append((n, pos, sentence))
        if len(chosen) == max_sentences:
            break
    by_source: dict[int, list[str]] = {}
    for n, _, s in chosen:
        by_source.setdefault(n, []).append(s)
    citations = tuple(
        Citation(n, hits[n - 1].path, None, 0, 0, " … ".join(q), hits[n - 1].chunk_id)
        for n, q in sorted(by_source.items())
    )
    text = " ".join(f"{s} [{n}]" for n, _, s in chosen)
    return Answer(question, text, "extractive", model, False, citations, tuple(hits))


# -- scoring ---------------------------------------------------------------------------------


class CachedEmbedder:
    """The embedder, remembering each text's vector: both answerers embed the same sentences."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name, self.model = inner.name, inner.model
        self.dimension, self.max_tokens = inner.dimension, inner.max_tokens
        self.cache: dict[str, NDArray[np.float32]] = {}

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if todo:
            for t, v in zip(todo, self.inner.embed(todo), strict=True):
                self.cache[t] = v
        return np.stack([self.cache[t] for t in texts])


_GOLD_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def gold_spans(title: str, abstract: str, indexes: Sequence[int]) -> list[tuple[int, int]]:
    """Character spans of the evidence sentences in the indexed text (``title + " " + text``)."""
    flat = " ".join(abstract.split())
    offset = len(" ".join(f"{title} ".split())) + 1 if title else 0
    spans, start = [], 0
    for sentence in _GOLD_SPLIT.split(flat):
        at = flat.index(sentence, start)
        spans.append((offset + at, offset + at + len(sentence)))
        start = at + len(sentence)
    return [spans[i] for i in indexes if i < len(spans)]


def quoted_spans(doc_text: str, quote: str) -> list[tuple[int, int]]:
    """Where each sentence of a citation's quote lies in the document's flattened text."""
    flat = " ".join(doc_text.split())
    out = []
    for sentence in quote.split(" … "):
        at = flat.find(sentence)
        if at >= 0:
            out.append((at, at + len(sentence)))
    return out


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """At least half of the shorter span is shared."""
    shared = min(a[1], b[1]) - max(a[0], b[0])
    return shared > 0 and shared >= 0.5 * min(a[1] - a[0], b[1] - b[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--index-dir", type=Path, default=ROOT / "indexes")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if not (args.dataset / "queries.jsonl").is_file():
        sys.exit(f"no SciFact at {args.dataset}: pass --dataset")

    data = load_beir(args.dataset, "test")
    evidence: dict[str, dict[str, list[int]]] = {}
    with open(args.dataset / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            qid = str(row["_id"])
            if qid in data.queries and row.get("metadata"):
                evidence[qid] = {
                    doc: sorted({i for e in items for i in e["sentences"]})
                    for doc, items in row["metadata"].items()
                }
    embedder = CachedEmbedder(make_embedder("local"))
    path = args.index_dir / cache_name(data.name, "document", embedder)
    store = Store.open(path) if Store.exists(path) else None
    if store is None:
        print(f"building {path} (5,183 abstracts: minutes)…", file=sys.stderr)
        store = Store.create(
            path, embedder=embedder.name, model=embedder.model, dimension=embedder.dimension
        )
    started = time.perf_counter()
    with store:
        store.lock()
        sync_corpus(store, embedder, data, "document", chunk_tokens=240, chunk_overlap=40)
        store.save_vectors()
        answerers = {"old": old_extractive_answer, "new": extractive_answer}
        found = {name: 0 for name in answerers}
        retrieved = 0
        for qid, gold in evidence.items():
            claim = data.queries[qid]
            hits = search(store, embedder, claim, k=args.k, mode="hybrid")
            spans = {doc: gold_spans(*data.corpus[doc], idx) for doc, idx in gold.items()}
            retrieved += any(h.path in spans for h in hits)
            for name, answer_fn in answerers.items():
                answer = answer_fn(claim, hits, embedder, abstain_below=-1.0)
                found[name] += any(
                    overlaps(q, g)
                    for c in answer.citations
                    if c.path in spans
                    for q in quoted_spans(hits[c.n - 1].text, c.quote)
                    for g in spans[c.path]
                )
    n = len(evidence)
    figures = {
        "claims_with_evidence": n,
        "evidence_abstract_retrieved": round(retrieved / n, 4),
        "old_quotes_gold_sentence": round(found["old"] / n, 4),
        "new_quotes_gold_sentence": round(found["new"] / n, 4),
        "new_over_old": round(found["new"] / found["old"], 3) if found["old"] else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"SciFact test claims with gold evidence sentences: {n}")
    print(f"  evidence abstract among the top {args.k} (hybrid): {retrieved / n:.1%}")
    print(f"  quotes include a gold evidence sentence, old answerer: {found['old'] / n:.1%}")
    print(f"  quotes include a gold evidence sentence, new answerer: {found['new'] / n:.1%}")


if __name__ == "__main__":
    main()
