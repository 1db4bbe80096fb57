"""Retrieval quality on BEIR-format datasets: the loader, the metrics, and the runner.

A BEIR dataset is a folder with ``corpus.jsonl`` (``_id``, ``title``, ``text``),
``queries.jsonl`` (``_id``, ``text``) and ``qrels/<split>.tsv`` (query id, document id,
relevance). Only those fields are read: other fields (SciFact's query ``metadata`` holds the
gold evidence) never reach the retriever.

Two ways to index a corpus:

- ``document`` (the MTEB protocol): each document is one row, ``title + " " + text``, embedded
  as one vector (the embedder truncates it at its input limit, as sentence-transformers does)
  and keyword-indexed whole. A document's score is its row's score.
- ``chunked`` (ragkit's own path): each document becomes the text ``title`` + blank line +
  ``text``, split by ragkit's chunker with the index settings. Every mode ranks chunks, exactly
  as ``ragkit search`` does, and a document scores as its best chunk. Keyword search is
  therefore BM25 over chunks too, not over whole documents: it measures what users get.

Each protocol's index is an ordinary ragkit index folder kept between runs; a run embeds only
what is missing from it, and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragkit.chunking import Chunk, chunk_document
from ragkit.documents import Document
from ragkit.embedders import Embedder, embed_batches
from ragkit.errors import IndexMismatchError, RagkitError
from ragkit.retriever import CANDIDATES, MODES, Ranking, rank
from ragkit.store.address import Address
from ragkit.store.protocol import IndexStore, pending_pages

log = logging.getLogger(__name__)

PROTOCOLS = ("document", "chunked")
METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
DEPTH = 100  # documents ranked per query: the deepest cut-off any metric looks at

# progress(stage, done, total): stage is "load", "chunk", "embed" or "query"
Progress = Callable[[str, int, int], None]


# -- the dataset -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BeirDataset:
    """A BEIR corpus, the queries of one split that have judgements, and those judgements."""

    name: str
    split: str
    corpus: dict[str, tuple[str, str]]  # doc id -> (title, text)
    queries: dict[str, str]  # query id -> text, only queries with a relevant document
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance > 0}


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RagkitError(f"{path}:{n}: not a JSON line ({exc.msg})") from None
                if not isinstance(row, dict) or "_id" not in row:
                    raise RagkitError(f'{path}:{n}: expected an object with an "_id"')
                yield n, row
    except FileNotFoundError:
        raise RagkitError(
            f"{path} is missing: a BEIR dataset folder holds corpus.jsonl, queries.jsonl"
            " and qrels/<split>.tsv"
        ) from None


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    """Read a BEIR-format folder; only ids, titles and texts are kept (never metadata)."""
    root = Path(folder)
    if not root.is_dir():
        raise RagkitError(f"no dataset folder at {root}: pass a folder holding corpus.jsonl")
    corpus: dict[str, tuple[str, str]] = {}
    for _, row in _jsonl(root / "corpus.jsonl"):
        corpus[str(row["_id"])] = (str(row.get("title") or ""), str(row.get("text") or ""))
    qrels: dict[str, dict[str, int]] = {}
    qrels_file = root / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        raise RagkitError(f"{qrels_file} is missing: choose a split that has qrels with --split")
    with open(qrels_file, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            parts = line.rstrip("\r\n").split("\t")
            if n == 1 and parts[0] == "query-id" or not line.strip():
                continue
            if len(parts) != 3:
                raise RagkitError(f"{qrels_file}:{n}: expected query-id, corpus-id, score")
            try:
                score = int(float(parts[2]))
            except ValueError:
                raise RagkitError(f"{qrels_file}:{n}: score {parts[2]!r} is not a number") from None
            if score > 0:
                qrels.setdefault(parts[0], {})[parts[1]] = score
    texts = {
        str(row["_id"]): str(row.get("text") or "") for _, row in _jsonl(root / "queries.jsonl")
    }
    missing = sorted(q for q in qrels if q not in texts)
    if missing:
        raise RagkitError(
            f"{len(missing)} judged queries are not in queries.jsonl, e.g. {missing[0]}"
        )
    queries = {q: texts[q] for q in qrels}
    return BeirDataset(root.resolve().name, split, corpus, queries, qrels)


# -- metrics (pure functions; ranked lists are document ids, best first) ---------------------


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain: sum of gain / log2(position + 1), positions from 1."""
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains (trec_eval's, as BEIR reports): DCG over the ideal DCG."""
    ideal = dcg(sorted(relevant.values(), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg([relevant.get(d, 0) for d in ranked[:k]]) / ideal


def recall_at(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents found in the top k."""
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & set(relevant)) / len(relevant)


def mrr_at(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """1 / rank of the first relevant document in the top k, or 0."""
    for i, doc in enumerate(ranked[:k], start=1):
        if relevant.get(doc, 0) > 0:
            return 1.0 / i
    return 0.0


def score_run(
    run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, float]:
    """METRICS averaged over every judged query (a query missing from ``run`` scores 0)."""
    totals = dict.fromkeys(METRICS, 0.0)
    for qid, relevant in qrels.items():
        ranked = run.get(qid, ())
        totals["ndcg@10"] += ndcg_at(ranked, relevant, 10)
        totals["recall@10"] += recall_at(ranked, relevant, 10)
        totals["recall@100"] += recall_at(ranked, relevant, 100)
        totals["mrr@10"] += mrr_at(ranked, relevant, 10)
    n = max(len(qrels), 1)
    return {m: v / n for m, v in totals.items()}


# -- indexing a corpus -----------------------------------------------------------------------


def _doc_text(protocol: str, title: str, text: str) -> str:
    if protocol == "document":
        return (title + " " + text).strip()  # exactly the MTEB / BEIR input
    return f"{title}\n\n{text}".strip() if title.strip() else text.strip()


def _whole(text: str, tokens: int) -> list[Chunk]:
    lines = text.count("\n") + 1
    return [Chunk(0, text, 0, len(text), 1, lines, None, "", tokens)]


def sync_corpus(
    store: IndexStore,
    embedder: Embedder,
    dataset: BeirDataset,
    protocol: str,
    *,
    chunk_tokens: int,
    chunk_overlap: int,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> int:
    """Bring the store in line with the corpus under ``protocol``; returns chunks embedded.

    Documents are keyed by a hash of their text and the chunking settings, so a changed corpus
    or setting re-chunks only what it affects; the chunks waiting for vectors are read a page at
    a time, and vectors are committed batch by batch.
    """
    note = progress or (lambda stage, done, total: None)
    max_tokens = min(chunk_tokens, embedder.max_tokens)
    settings_key = "whole" if protocol == "document" else f"{max_tokens}/{chunk_overlap}"
    known = store.documents()
    todo: list[tuple[str, str, str]] = []  # (doc id, text, key)
    for doc_id, (title, text) in dataset.corpus.items():
        body = _doc_text(protocol, title, text)
        key = hashlib.sha256(f"{protocol}:{settings_key}\n{body}".encode()).hexdigest()
        row = known.get(doc_id)
        if row is None or row.sha256 != key:
            todo.append((doc_id, body, key))
    gone = [p for p in known if p not in dataset.corpus]
    if gone:
        store.remove_documents(gone)
    whole_counts = embedder.count_tokens([b for _, b, _ in todo]) if protocol == "document" else []
    with store.bulk():
        for n, (doc_id, body, key) in enumerate(todo):
            note("chunk", n + 1, len(todo))
            if protocol == "document":
                chunks = _whole(body, whole_counts[n])
            else:
                doc = Document(doc_id, body, "text", key, len(body.encode()), 0.0)
                chunks = chunk_document(
                    doc, embedder.count_tokens, max_tokens=max_tokens, overlap=chunk_overlap
                )
            store.put_document(
                path=doc_id,
                sha256=key,
                size=len(body.encode()),
                mtime=0.0,
                kind="text",
                pages=0,
                warnings=(),
                chunks=chunks,
            )
    counts = store.counts()
    total = counts["chunks"] - counts["vectors"]
    done = 0
    note("embed", 0, total)
    for pending in pending_pages(store):
        # Shortest first within the page: batches of similar length waste no time on padding.
        pending.sort(key=lambda p: p[2])
        texts = [t for _, t, _ in pending]
        for positions, vectors, used in embed_batches(embedder, texts, batch_size):
            # The provider's own count when it reports one (what is billed), else ours.
            tokens = used if used is not None else sum(pending[int(p)][2] for p in positions)
            store.set_vectors([pending[int(p)][0] for p in positions], vectors, tokens)
            done += len(positions)
            note("embed", done, total)
            log.info("embedded %d of %d chunks", done, total)
    if done or todo or gone or not store.vectors_agree():
        store.save_vectors()
    return done


# -- running the queries ---------------------------------------------------------------------


@dataclass(frozen=True)
class ModeScores:
    """The metrics of one retrieval mode under one indexing protocol."""

    protocol: str
    mode: str
    ndcg_at_10: float
    recall_at_10: float
    recall_at_100: float
    mrr_at_10: float
    seconds: float  # querying time for all queries (embedding the queries excluded)


@dataclass(frozen=True)
class ProtocolInfo:
    """How one protocol's index was built for this run."""

    protocol: str
    index: str
    documents: int
    chunks: int
    chunks_embedded: int  # in this run; 0 when the cached index was complete
    seconds: float


@dataclass(frozen=True)
class EvalReport:
    """Every protocol and mode measured on one dataset split."""

    dataset: str
    split: str
    embedder: str
    queries: int
    documents: int
    protocols: tuple[ProtocolInfo, ...]
    results: tuple[ModeScores, ...]
    seconds: float


def documents_ranked(ranking: Ranking, doc_of: Mapping[int, str], depth: int) -> list[str]:
    """Chunk ranking -> document ranking: a document scores as its best chunk (its first)."""
    out: dict[str, None] = {}
    for chunk_id, _ in ranking:
        doc = doc_of.get(chunk_id)
        if doc is not None and doc not in out:
            out[doc] = None
            if len(out) == depth:
                break
    return list(out)


def run_queries(
    store: IndexStore,
    embedder: Embedder,
    dataset: BeirDataset,
    protocol: str,
    modes: Sequence[str] = MODES,
    *,
    progress: Progress | None = None,
) -> list[ModeScores]:
    """Rank every judged query in each mode and score the document rankings."""
    note = progress or (lambda stage, done, total: None)
    doc_of = store.chunk_documents()
    per_doc = max(collections.Counter(doc_of.values()).values(), default=1)
    # Deep enough that DEPTH distinct documents are always among the chunks ranked.
    depth = min(DEPTH * int(per_doc), max(len(doc_of), 1))
    qids = list(dataset.queries)
    vectors = embedder.embed([dataset.queries[q] for q in qids]).astype(np.float32)
    results = []
    for mode in modes:
        started = time.perf_counter()
        run: dict[str, list[str]] = {}
        for n, qid in enumerate(qids):
            ranking = rank(store, dataset.queries[qid], vectors[n], mode, max(depth, CANDIDATES))
            run[qid] = documents_ranked(ranking, doc_of, DEPTH)
            note("query", n + 1, len(qids))
        m = score_run(run, dataset.qrels)
        results.append(
            ModeScores(
                protocol=protocol,
                mode=mode,
                ndcg_at_10=m["ndcg@10"],
                recall_at_10=m["recall@10"],
                recall_at_100=m["recall@100"],
                mrr_at_10=m["mrr@10"],
                seconds=time.perf_counter() - started,
            )
        )
    return results


def cache_name(dataset: str, protocol: str, embedder: Embedder) -> str:
    """The index name a dataset's protocol is cached under, e.g. eval-scifact-document-local-…"""
    raw = f"eval-{dataset}-{protocol}-{embedder.name}-{embedder.model}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-.")


def _open_cache(address: Address, embedder: Embedder) -> IndexStore:
    """The cached index at ``path``, rebuilt from nothing when another embedder or schema made it.

    It holds only what the dataset and embedder determine, so dropping it loses nothing.
    """
    if address.exists():
        try:
            store = address.open()
        except IndexMismatchError as exc:
            log.warning("rebuilding the cached eval index %s: %s", address, exc)
        else:
            m = store.manifest
            if (m.embedder, m.model, m.dimension) == (
                embedder.name,
                embedder.model,
                embedder.dimension,
            ):
                return store
            store.close()
            log.warning("rebuilding the cached eval index %s: made by %s", address, m.embedder_spec)
        address.drop()
    return address.create(
        embedder=embedder.name, model=embedder.model, dimension=embedder.dimension
    )


def evaluate(
    dataset: BeirDataset,
    embedder: Embedder,
    index_dir: Path,
    *,
    protocols: Sequence[str] = PROTOCOLS,
    modes: Sequence[str] = MODES,
    chunk_tokens: int = 240,
    chunk_overlap: int = 40,
    batch_size: int = 64,
    progress: Progress | None = None,
    store: str | None = None,
) -> EvalReport:
    """Index the corpus under each protocol (reusing cached indexes) and score every mode.

    The cached indexes live under ``index_dir``, or in the PostgreSQL database ``store``.
    """
    started = time.perf_counter()
    infos: list[ProtocolInfo] = []
    results: list[ModeScores] = []
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise RagkitError(f"unknown protocol {protocol!r}: use {' or '.join(PROTOCOLS)}")
        t0 = time.perf_counter()
        name = cache_name(dataset.name, protocol, embedder)
        address = Address(name, Path(index_dir) / name, store)
        with _open_cache(address, embedder) as cached:
            cached.lock()
            cached.set_source(f"beir:{dataset.name}:{protocol}")
            embedded = sync_corpus(
                cached,
                embedder,
                dataset,
                protocol,
                chunk_tokens=chunk_tokens,
                chunk_overlap=chunk_overlap,
                batch_size=batch_size,
                progress=progress,
            )
            counts = cached.counts()
            infos.append(
                ProtocolInfo(
                    protocol=protocol,
                    index=str(address),
                    documents=counts["documents"],
                    chunks=counts["chunks"],
                    chunks_embedded=embedded,
                    seconds=time.perf_counter() - t0,
                )
            )
            results.extend(
                run_queries(cached, embedder, dataset, protocol, modes, progress=progress)
            )
    return EvalReport(
        dataset=dataset.name,
        split=dataset.split,
        embedder=f"{embedder.name}:{embedder.model}",
        queries=len(dataset.queries),
        documents=len(dataset.corpus),
        protocols=tuple(infos),
        results=tuple(results),
        seconds=time.perf_counter() - started,
    )
