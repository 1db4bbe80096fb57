"""``ragkit search``: ranked passages with their file, page, lines and heading."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from ragkit.cli.common import (
    AsJson,
    FileType,
    Heading,
    IndexDir,
    IndexName,
    MinScore,
    Mmr,
    MmrLambda,
    Mode,
    ModifiedAfter,
    ModifiedBefore,
    PathGlob,
    StoreUrl,
    TopK,
    Verbose,
    app,
    err,
    out,
    setup_logging,
)

if TYPE_CHECKING:
    from ragkit.retriever import Hit


def _location(page: int | None, start: int, end: int, label: str | None = None) -> str:
    parts = [f"page {page}" + (f" ({label})" if label else "")] if page is not None else []
    parts.append(f"line {start}" if start == end else f"lines {start}–{end}")
    return ", ".join(parts)


def _score(mode: str, hit: Hit) -> str:
    """The mode's score, and the cosine beside it when the mode's score is not the cosine."""
    if mode == "dense":
        return f"{hit.score:.3f}"
    label = "bm25" if mode == "keyword" else "fused"
    digits = 2 if mode == "keyword" else 4
    if hit.dense_score is None:  # keyword search embeds the query only for a --min-score
        return f"{label} {hit.score:.{digits}f}"
    return f"{label} {hit.score:.{digits}f}, cosine {hit.dense_score:.3f}"


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: TopK = None,
    min_score: MinScore = None,
    path: PathGlob = None,
    mode: Mode = None,
    mmr: Mmr = None,
    mmr_lambda: MmrLambda = None,
    file_type: FileType = None,
    modified_after: ModifiedAfter = None,
    modified_before: ModifiedBefore = None,
    heading: Heading = None,
    index: IndexName = None,
    index_dir: IndexDir = None,
    store: StoreUrl = None,
    as_json: AsJson = False,
    verbose: Verbose = False,
) -> None:
    """Show the passages that best match QUERY, best first.

    The score shown is the mode's: cosine (dense), BM25 (keyword) or fused rank score (hybrid).
    """
    from ragkit import pipeline

    setup_logging(verbose)
    from ragkit.config import Settings

    settings = Settings.load(
        k=k, min_score=min_score, path=path, mode=mode, mmr=mmr, mmr_lambda=mmr_lambda,
        file_type=file_type, modified_after=modified_after, modified_before=modified_before,
        heading=heading, index=index, index_dir=index_dir, store=store,
    )  # fmt: skip
    hits = pipeline.search(query, settings)
    if as_json:
        from ragkit.shapes import search_json

        data = search_json(query, settings.mode, hits)
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    if not hits:
        err("no passages found")
    for hit in hits:
        heading = f" § {hit.heading}" if hit.heading else ""
        out(
            f"{hit.rank}. [{_score(settings.mode, hit)}] {hit.path}"
            f" ({_location(hit.page, hit.start_line, hit.end_line, hit.page_label)}){heading}"
        )
        out("   " + " ".join(hit.text.split())[:400])
        out("")
