"""``ragkit search``: ranked passages with their file, page, lines and heading."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

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
    setup_logging,
)

if TYPE_CHECKING:
    from ragkit.retriever import Hit


def _location(page: int | None, start: int, end: int) -> str:
    parts = [f"page {page}"] if page is not None else []
    parts.append(f"line {start}" if start == end else f"lines {start}–{end}")
    return ", ".join(parts)


def _hit_json(hit: Hit) -> dict[str, Any]:
    return {
        "rank": hit.rank,
        "score": round(hit.score, 6),
        "dense_score": None if hit.dense_score is None else round(hit.dense_score, 6),
        "path": hit.path,
        "page": hit.page,
        "start_line": hit.start_line,
        "end_line": hit.end_line,
        "heading": hit.heading,
        "text": hit.text,
    }


def _score(mode: str, hit: Hit) -> str:
    """The mode's score, and the cosine beside it when the mode's score is not the cosine."""
    if mode == "dense" or hit.dense_score is None:
        return f"{hit.score:.3f}"
    label = "bm25" if mode == "keyword" else "fused"
    digits = 2 if mode == "keyword" else 4
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
        data = {"query": query, "mode": settings.mode, "hits": [_hit_json(h) for h in hits]}
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    if not hits:
        err("no passages found")
    for hit in hits:
        heading = f" § {hit.heading}" if hit.heading else ""
        typer.echo(
            f"{hit.rank}. [{_score(settings.mode, hit)}] {hit.path}"
            f" ({_location(hit.page, hit.start_line, hit.end_line)}){heading}"
        )
        typer.echo("   " + " ".join(hit.text.split())[:400])
        typer.echo("")
