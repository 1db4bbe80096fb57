"""`ragkit eval`: metrics against hand-computed values, the BEIR loader, and a tiny dataset end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ragkit
from ragkit.cli import app
from ragkit.errors import RagkitError
from ragkit.evaluation import (
    documents_ranked,
    load_beir,
    mrr_at,
    ndcg_at,
    recall_at,
    score_run,
    sync_corpus,
)
from ragkit.maintenance import evaluate
from ragkit.store import protocol
from ragkit.store.address import Address
from tests import fakes

ROOT = Path(__file__).resolve().parent.parent
# ../shared/datasets/scifact beside the checkout (one level further up from a git worktree).
SCIFACT = (
    next(
        (
            p
            for p in (ROOT.parent / "shared", ROOT.parent.parent / "shared")
            if (p / "datasets" / "scifact").is_dir()
        ),
        ROOT.parent / "shared",
    )
    / "datasets"
    / "scifact"
)
runner = CliRunner()

# -- metrics -----------------------------------------------------------------------------------


def test_ndcg_by_hand():
    # Relevant at ranks 2 and 4: DCG = 1/log2(3) + 1/log2(5); ideal = 1 + 1/log2(3).
    got = ndcg_at(["x", "a", "y", "b"], {"a": 1, "b": 1}, 10)
    assert got == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert got == pytest.approx(0.650921, abs=1e-6)
    # Graded, best one second: DCG = 1 + 2/log2(3); ideal = 2 + 1/log2(3).
    assert ndcg_at(["b", "a"], {"a": 2, "b": 1}, 10) == pytest.approx(0.859719, abs=1e-6)
    assert ndcg_at(["a", "b"], {"a": 2, "b": 1}, 10) == pytest.approx(1.0)
    # The cut-off: relevant only at rank 3 scores 0 at k=2; the ideal is cut at k too.
    assert ndcg_at(["x", "y", "a"], {"a": 1}, 2) == 0.0
    assert ndcg_at(["a", "x"], {"a": 1, "b": 1, "c": 1}, 1) == pytest.approx(1.0)
    assert ndcg_at([], {"a": 1}, 10) == 0.0 and ndcg_at(["a"], {}, 10) == 0.0


def test_recall_and_mrr_by_hand():
    assert recall_at(["x", "a", "y", "b"], {"a": 1, "b": 1}, 2) == 0.5
    assert recall_at(["x", "a", "y", "b"], {"a": 1, "b": 1}, 4) == 1.0
    assert recall_at(["x"], {"a": 1}, 100) == 0.0
    assert mrr_at(["x", "y", "a", "b"], {"a": 1, "b": 1}, 10) == pytest.approx(1 / 3)
    assert mrr_at(["x", "y", "a"], {"a": 1}, 2) == 0.0
    assert mrr_at(["a"], {"a": 1}, 10) == 1.0


def test_score_run_averages_over_judged_queries():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}, "q3": {"d": 1}}
    run = {"q1": ["a"], "q2": ["x", "c"], "extra": ["a"]}  # q3 missing: scores 0
    m = score_run(run, qrels)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert m["recall@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["ndcg@10"] == pytest.approx((1 + (1 / math.log2(3)) / (1 + 1 / math.log2(3)) + 0) / 3)


def test_documents_ranked_keeps_each_documents_best_chunk():
    ranking = [(5, 0.9), (6, 0.8), (7, 0.7), (8, 0.6)]
    doc_of = {5: "d1", 6: "d1", 7: "d2", 8: "d3"}
    assert documents_ranked(ranking, doc_of, 10) == ["d1", "d2", "d3"]
    assert documents_ranked(ranking, doc_of, 2) == ["d1", "d2"]


# -- the loader --------------------------------------------------------------------------------

# Four topics, each a document and a query sharing distinctive words. The query metadata holds
# "gold evidence" naming a decoy document: if it leaked into retrieval, the decoy would win.
CORPUS = [
    {
        "_id": "d1",
        "title": "Volcanoes",
        "text": "Basalt lava erupts from shield volcanoes in Hawaii.",
        "metadata": {},
    },
    {
        "_id": "d2",
        "title": "Bees",
        "text": "Honey bees dance to tell the hive where nectar is.",
        "metadata": {},
    },
    {
        "_id": "d3",
        "title": "Glaciers",
        "text": "Glaciers carve valleys shaped like the letter U.",
        "metadata": {},
    },
    {
        "_id": "d4",
        "title": "Tides",
        "text": "The moon's gravity raises ocean tides twice a day.",
        "metadata": {},
    },
    {
        "_id": "decoy",
        "title": "Zebra",
        "text": "Zebra stripes zebra zebra quagga zebra.",
        "metadata": {},
    },
]
QUERIES = [
    {
        "_id": "q1",
        "text": "basalt lava volcanoes",
        "metadata": {"decoy": [{"sentences": [0], "label": "zebra quagga"}]},
    },
    {"_id": "q2", "text": "honey bees dance nectar", "metadata": {"decoy": "zebra zebra"}},
    {"_id": "q3", "text": "glaciers carve valleys", "metadata": {}},
    {"_id": "q4", "text": "moon gravity ocean tides", "metadata": {}},
    {"_id": "q5", "text": "unjudged query about zebra", "metadata": {}},
]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t2\nq4\td4\t1\nq4\tdecoy\t0\n"


def make_dataset(root: Path, corpus=CORPUS, queries=QUERIES, qrels=QRELS) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "test.tsv").write_text(qrels)
    return root


def test_loader_keeps_only_ids_titles_texts_and_judged_queries(tmp_path):
    data = load_beir(make_dataset(tmp_path / "tiny"))
    assert data.name == "tiny" and data.split == "test"
    assert data.corpus["d1"] == ("Volcanoes", "Basalt lava erupts from shield volcanoes in Hawaii.")
    assert data.queries == {"q1": "basalt lava volcanoes", "q2": "honey bees dance nectar",
                            "q3": "glaciers carve valleys", "q4": "moon gravity ocean tides"}  # fmt: skip
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 2}, "q4": {"d4": 1}}


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda r: (r / "qrels" / "test.tsv").unlink(), "choose a split"),
        (lambda r: (r / "corpus.jsonl").unlink(), "corpus.jsonl is missing"),
        (
            lambda r: (r / "corpus.jsonl").write_text('{"_id": "a"}\nnot json\n'),
            "corpus.jsonl:2: not a JSON line",
        ),
        (lambda r: (r / "qrels" / "test.tsv").write_text("q1\td1\n"), "expected query-id"),
        (lambda r: (r / "qrels" / "test.tsv").write_text("q9\td1\t1\n"), "not in queries.jsonl"),
    ],
)
def test_loader_errors_say_what_is_wrong(tmp_path, breakage, message):
    root = make_dataset(tmp_path / "tiny")
    breakage(root)
    with pytest.raises(RagkitError, match=message):
        load_beir(root)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(RagkitError, match="no dataset folder"):
        load_beir(tmp_path / "nope")


# -- end to end --------------------------------------------------------------------------------


def test_eval_end_to_end_with_the_cli_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGKIT_INDEX_DIR", str(tmp_path / "indexes"))
    dataset = make_dataset(tmp_path / "tiny")
    result = runner.invoke(app, ["eval", str(dataset), "--embedder", "bow", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"] == "tiny" and report["queries"] == 4 and report["documents"] == 5
    assert [(r["protocol"], r["mode"]) for r in report["results"]] == [
        (p, m) for p in ("document", "chunked") for m in ("dense", "keyword", "hybrid")
    ]
    for r in report["results"]:
        # Every query shares its distinctive words with its one relevant document only.
        assert r["ndcg_at_10"] == pytest.approx(1.0) and r["mrr_at_10"] == pytest.approx(1.0), r
        assert r["recall_at_10"] == r["recall_at_100"] == pytest.approx(1.0)
    assert [p["chunks_embedded"] for p in report["protocols"]] == [5, 5]
    assert all(Path(p["index"]).parent == tmp_path / "indexes" for p in report["protocols"])

    # Second run: both indexes come from the cache; nothing is embedded again.
    fakes.instances.clear()
    again = json.loads(
        runner.invoke(app, ["eval", str(dataset), "--embedder", "bow", "--json"]).stdout
    )
    assert [p["chunks_embedded"] for p in again["protocols"]] == [0, 0]
    assert again["results"] == [
        {**r, "seconds": a["seconds"]}
        for r, a in zip(report["results"], again["results"], strict=True)
    ]

    # A changed corpus: only the new document is embedded.
    extra = {"_id": "d5", "title": "Owls", "text": "Owls hunt mice at night.", "metadata": {}}
    (dataset / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in [*CORPUS, extra]))
    third = json.loads(runner.invoke(app, ["eval", str(dataset), "--embedder", "bow", "--json",
                                           "--protocol", "document", "--mode", "keyword"]).stdout)  # fmt: skip
    assert [p["chunks_embedded"] for p in third["protocols"]] == [1]
    assert [(r["protocol"], r["mode"]) for r in third["results"]] == [("document", "keyword")]


def test_eval_scores_imperfect_rankings(tmp_path):
    # Two documents answer q1 in different words; the keyword ranking must find only one of
    # them in its top 10, so recall@10 is 0.5 and nDCG lies strictly between 0 and 1.
    corpus = [
        *CORPUS,
        {
            "_id": "d6",
            "title": "Magma",
            "text": "Molten rock wells up under Iceland.",
            "metadata": {},
        },
    ]
    qrels = QRELS + "q1\td6\t1\n"
    dataset = make_dataset(tmp_path / "tiny", corpus=corpus, qrels=qrels)
    report = evaluate(
        dataset,
        index_dir=tmp_path / "ix",
        embedder="bow",
        protocols=("document",),
        modes=("keyword",),
    )
    (r,) = report.results
    assert r.recall_at_10 == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    one_of_two = 1 / (1 + 1 / math.log2(3))
    assert r.ndcg_at_10 == pytest.approx((one_of_two + 3) / 4)


def test_eval_table_output(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGKIT_INDEX_DIR", str(tmp_path / "indexes"))
    result = runner.invoke(
        app,
        [
            "eval",
            str(make_dataset(tmp_path / "tiny")),
            "--embedder",
            "bow",
            "--protocol",
            "document",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tiny (test): 4 queries, 5 documents, embedder bow:hash-256")
    header = next(i for i, line in enumerate(lines) if line.startswith("protocol"))
    assert lines[header].split() == ["protocol", "mode", "nDCG@10", "R@10", "R@100", "MRR@10"]
    assert [line.split()[:2] for line in lines[header + 1 :]] == [
        ["document", "dense"], ["document", "keyword"], ["document", "hybrid"]
    ]  # fmt: skip


def test_eval_refuses_unknown_mode_and_protocol(tmp_path):
    dataset = make_dataset(tmp_path / "tiny")
    with pytest.raises(RagkitError, match="unknown search mode"):
        evaluate(dataset, index_dir=tmp_path / "ix", embedder="bow", modes=("fuzzy",))
    with pytest.raises(RagkitError, match="unknown protocol"):
        evaluate(dataset, index_dir=tmp_path / "ix", embedder="bow", protocols=("pages",))


@pytest.mark.skipif(not SCIFACT.is_dir(), reason=f"SciFact not found at {SCIFACT}")
def test_scifact_loads_with_the_published_counts():
    """Cheap integrity check of the real dataset: no embedding pass (that is `ragkit eval`'s job)."""
    data = load_beir(SCIFACT)
    assert data.name == "scifact" and len(data.corpus) == 5183
    assert len(data.queries) == 300 and sum(len(r) for r in data.qrels.values()) == 339
    assert all(d in data.corpus for rel in data.qrels.values() for d in rel)
    assert all(isinstance(t, str) and t for t in data.queries.values())


def test_public_api_has_evaluate():
    assert ragkit.evaluate is evaluate and "evaluate" in ragkit.__all__


def test_a_stale_cache_is_rebuilt(tmp_path):
    import sqlite3

    dataset = make_dataset(tmp_path / "tiny")
    first = evaluate(dataset, index_dir=tmp_path / "ix", embedder="bow", protocols=("document",))
    db = Path(first.protocols[0].index) / "ragkit.db"
    with sqlite3.connect(db) as conn:  # as if an older ragkit had written it
        conn.execute("UPDATE manifest SET value = '1' WHERE key = 'schema_version'")
    again = evaluate(dataset, index_dir=tmp_path / "ix", embedder="bow", protocols=("document",))
    assert again.protocols[0].chunks_embedded == 5
    assert [r.ndcg_at_10 for r in again.results] == [r.ndcg_at_10 for r in first.results]


def test_the_corpus_is_embedded_a_page_of_waiting_chunks_at_a_time(tmp_path, monkeypatch, request):
    corpus = [
        *CORPUS,
        *(
            {"_id": f"x{n}", "title": "", "text": "word " * (12 - n), "metadata": {}}
            for n in range(6)
        ),
    ]
    dataset = load_beir(make_dataset(tmp_path / "tiny", corpus=corpus))

    def embed(index: str) -> tuple[int, fakes.BagOfWordsEmbedder, dict[str, bytes], list]:
        embedder = fakes.BagOfWordsEmbedder()
        notes: list[tuple[int, int]] = []

        def progress(stage: str, n: int, total: int) -> None:
            if stage == "embed":
                notes.append((n, total))

        address = Address(index, tmp_path / index, None)
        with address.create(embedder="bow", model="hash-256", dimension=256) as store:
            store.lock()
            done = sync_corpus(
                store,
                embedder,
                dataset,
                "document",
                chunk_tokens=240,
                chunk_overlap=0,
                batch_size=4,
                progress=progress,
            )
            counts = store.counts()
            assert counts["vectors"] == counts["chunks"] and store.check().ok
            ids = [int(i) for i in store.chunk_ids()]
            rows = store.chunks(ids)
            stored = {
                rows[i].text: v.tobytes() for i, v in zip(ids, store.vectors(ids), strict=True)
            }
        return done, embedder, stored, [notes[0], notes[-1]]

    whole = embed("whole")
    reads = request.getfixturevalue("pending_reads")  # spying from here on, not on "whole"
    monkeypatch.setattr(protocol, "PENDING_PAGE", 3)
    done, embedder, stored, notes = embed("paged")
    assert [limit for limit, _ in reads] == [3] * 5  # 4 pages, then none
    assert (done, stored, notes) == (whole[0], whole[2], whole[3])
    assert done == 11 and notes == [(0, 11), (11, 11)]
    # Shortest first within each page: each batch the embedder sees is one page, by length.
    assert [len(b) for b in embedder.calls] == [3, 3, 3, 2]
    for batch in embedder.calls:
        assert embedder.count_tokens(batch) == sorted(embedder.count_tokens(batch))
