"""``ragkit eval``: retrieval quality on a BEIR-format dataset."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from ragkit.cli.common import AsJson, IndexDir, StoreUrl, Verbose, app, err, out, setup_logging


class _StepPrinter:
    """Embedding progress on stderr as a line every tenth of the way (long runs, logs too)."""

    def __init__(self) -> None:
        self.shown = -1

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != "embed" or total == 0:
            return
        tenth = done * 10 // total
        if done == 0:
            err(f"embedding {total} chunks…")
        elif tenth > self.shown:
            err(f"  {done}/{total} chunks embedded")
        self.shown = tenth


@app.command("eval")
def evaluate(
    dataset: Annotated[
        Path, typer.Argument(help="BEIR-format folder: corpus.jsonl, queries.jsonl, qrels/.")
    ],
    protocol: Annotated[
        list[str] | None,
        typer.Option(
            help="document (one vector per document, the MTEB protocol) and/or chunked (ragkit's"
            " own chunks; a document scores as its best chunk). Repeatable [default: both]."
        ),
    ] = None,
    mode: Annotated[
        list[str] | None,
        typer.Option(help="dense, keyword and/or hybrid. Repeatable [default: all three]."),
    ] = None,
    split: Annotated[str, typer.Option(help="Which qrels/<split>.tsv to score against.")] = "test",
    embedder: Annotated[
        str | None,
        typer.Option(envvar="RAGKIT_EMBEDDER", help="local (default) or openai[:MODEL]."),
    ] = None,
    chunk_tokens: Annotated[
        int | None,
        typer.Option(
            envvar="RAGKIT_CHUNK_TOKENS", help="Most tokens per chunk (chunked protocol)."
        ),
    ] = None,
    chunk_overlap: Annotated[
        int | None, typer.Option(envvar="RAGKIT_CHUNK_OVERLAP", help="Tokens shared by neighbours.")
    ] = None,
    index_dir: IndexDir = None,
    store: StoreUrl = None,
    as_json: AsJson = False,
    verbose: Verbose = False,
) -> None:
    """Score retrieval on a BEIR dataset: nDCG@10, Recall@10, Recall@100, MRR@10 per mode.

    The corpus is indexed under INDEX_DIR/eval-<dataset>-<protocol>-… and reused next time; only
    each query's text is given to the retriever.
    """
    from ragkit import maintenance
    from ragkit.evaluation import PROTOCOLS
    from ragkit.retriever import MODES

    setup_logging(verbose)
    report = maintenance.evaluate(
        dataset,
        protocols=tuple(protocol or PROTOCOLS),
        modes=tuple(mode or MODES),
        split=split,
        progress=None if as_json and not verbose else _StepPrinter(),
        embedder=embedder,
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
        index_dir=index_dir,
        store=store,
    )
    if as_json:
        typer.echo(json.dumps(asdict(report), indent=2))
        return
    out(
        f"{report.dataset} ({report.split}): {report.queries} queries,"
        f" {report.documents} documents, embedder {report.embedder}"
    )
    for info in report.protocols:
        out(
            f"  {info.protocol}: {info.chunks} chunks in {info.index}"
            f" ({info.chunks_embedded} embedded this run, {info.seconds:.0f} s)"
        )
    out("")
    out(f"{'protocol':<10}{'mode':<9}{'nDCG@10':>9}{'R@10':>8}{'R@100':>8}{'MRR@10':>8}")
    for r in report.results:
        out(
            f"{r.protocol:<10}{r.mode:<9}{r.ndcg_at_10:>9.4f}{r.recall_at_10:>8.4f}"
            f"{r.recall_at_100:>8.4f}{r.mrr_at_10:>8.4f}"
        )
