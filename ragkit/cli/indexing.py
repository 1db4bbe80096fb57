"""``ragkit index``, ``status`` and ``doctor``: build an index, describe it, check it."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ragkit.cli.common import (
    EXIT_FILES_FAILED,
    EXIT_UNHEALTHY,
    AsJson,
    IndexDir,
    IndexName,
    StoreUrl,
    Verbose,
    app,
    err,
    setup_logging,
)

if TYPE_CHECKING:
    from ragkit.pipeline import IndexReport
    from ragkit.store import HealthReport


class _ProgressPrinter:
    """Progress on stderr: a bar while embedding when stderr is a terminal, else a few lines."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.last = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != "embed" or total == 0:
            return
        if self.tty:
            import click

            if self.bar is None:
                self.bar = click.progressbar(length=total, label="embedding", file=sys.stderr)
                self.bar.__enter__()
            self.bar.update(done - self.last)
            if done >= total:
                self.bar.__exit__(None, None, None)
        elif done == 0:
            err(f"embedding {total} chunks…")
        self.last = done


@app.command()
def index(
    path: Annotated[Path, typer.Argument(help="Folder (or file) to index.")],
    index: IndexName = None,
    index_dir: IndexDir = None,
    store: StoreUrl = None,
    embedder: Annotated[
        str | None,
        typer.Option(
            envvar="RAGKIT_EMBEDDER",
            help="local (offline default) or openai[:MODEL]; an existing index keeps its own.",
        ),
    ] = None,
    chunk_tokens: Annotated[
        int | None, typer.Option(envvar="RAGKIT_CHUNK_TOKENS", help="Most tokens per chunk.")
    ] = None,
    chunk_overlap: Annotated[
        int | None, typer.Option(envvar="RAGKIT_CHUNK_OVERLAP", help="Tokens shared by neighbours.")
    ] = None,
    max_file_mb: Annotated[
        float | None,
        typer.Option(envvar="RAGKIT_MAX_FILE_MB", help="Skip larger files [default: 50]."),
    ] = None,
    vector_index: Annotated[
        str | None,
        typer.Option(
            envvar="RAGKIT_VECTOR_INDEX",
            help="auto (exact below 50k vectors, IVF above), flat or ivf [default: auto].",
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for another writer instead of failing.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Count files, chunks, tokens and cost; embed and write nothing."
        ),
    ] = False,
    as_json: AsJson = False,
    verbose: Verbose = False,
) -> None:
    """Index a folder: add new files, re-embed changed ones, drop deleted ones."""
    from ragkit import pipeline

    setup_logging(verbose)
    report = pipeline.index(
        path,
        progress=None if as_json or dry_run else _ProgressPrinter(),
        wait=wait,
        dry_run=dry_run,
        index=index,
        index_dir=index_dir,
        store=store,
        embedder=embedder,
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
        max_file_mb=max_file_mb,
        vector_index=vector_index,
    )
    if as_json:
        typer.echo(json.dumps(_report_json(report), indent=2, ensure_ascii=False))
    elif dry_run:
        _print_estimate(report)
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(EXIT_FILES_FAILED)


def _report_json(report: IndexReport) -> dict[str, Any]:
    data = asdict(report)
    data["ok"] = report.ok
    data["moved"] = [{"from": a, "to": b} for a, b in report.moved]
    data["warnings"] = [{"path": p, "warning": w} for p, w in report.warnings]
    return data


def _print_report(report: IndexReport) -> None:
    for item in report.failed:
        err(f"failed: {item.path}: {item.reason}")
    for item in report.skipped:
        err(f"skipped: {item.path}: {item.reason}")
    for path, warning in report.warnings:
        err(f"warning: {path}: {warning}")
    err(
        f"{report.index} [{report.embedder}]: {len(report.added)} added,"
        f" {len(report.changed)} changed,"
        f" {len(report.removed)} removed, {len(report.moved)} moved, {report.unchanged} unchanged;"
        f" {len(report.skipped)} skipped, {len(report.failed)} failed;"
        f" {report.chunks_embedded} chunks embedded, {report.chunks_reused} reused;"
        f" {report.documents} documents, {report.chunks} chunks in the index;"
        f" {report.seconds:.1f} s"
    )
    if report.tokens_embedded and report.cost_usd:
        err(f"{report.tokens_embedded} tokens embedded, about ${report.cost_usd:.4f} at list price")


def _print_estimate(report: IndexReport) -> None:
    for item in report.failed:
        err(f"would fail: {item.path}: {item.reason}")
    files = len(report.added) + len(report.changed)
    cost = f"${report.cost_usd:.4f}" if report.cost_usd is not None else "unknown (no price known)"
    typer.echo(
        f"dry run for {report.index} [{report.embedder}]: {files} files to embed"
        f" ({len(report.added)} new, {len(report.changed)} changed),"
        f" {len(report.removed)} to remove, {len(report.moved)} moved,"
        f" {report.unchanged} unchanged, {len(report.skipped)} skipped"
    )
    typer.echo(
        f"{report.chunks_embedded} chunks to embed ({report.chunks_reused} already embedded),"
        f" {report.tokens_embedded} tokens; estimated cost {cost}"
    )
    typer.echo("nothing was embedded or written")


@app.command()
def status(
    index: IndexName = None,
    index_dir: IndexDir = None,
    store: StoreUrl = None,
    as_json: AsJson = False,
) -> None:
    """Show where an index is, what built it, and what it holds."""
    from ragkit import pipeline

    info = pipeline.status(index=index, index_dir=index_dir, store=store)
    if as_json:
        typer.echo(json.dumps(asdict(info), indent=2))
        return
    rows = [
        ("index", f"{info.index} ({info.path})"),
        ("source", info.source or "-"),
        ("embedder", f"{info.embedder} ({info.dimension} dims)"),
        (
            "documents",
            f"{info.documents}"
            + (f" ({info.pending_documents} pending)" if info.pending_documents else ""),
        ),
        ("chunks", f"{info.chunks} ({info.vectors} with vectors)"),
        ("size", f"{info.size_bytes / 1e6:.1f} MB"),
        ("tokens embedded", str(info.tokens_embedded)),
        ("updated", info.updated),
        (
            "vectors",
            "in PostgreSQL, HNSW-indexed with the rows"
            if info.path.startswith("postgres")
            else "FAISS agrees with SQLite"
            if info.faiss_agrees
            else "FAISS out of date (rebuilt on next use)",
        ),
        ("vector index", info.vector_index),
    ]
    for key, value in rows:
        typer.echo(f"{key:>16}: {value}")


@app.command()
def doctor(
    index: IndexName = None,
    index_dir: IndexDir = None,
    store: StoreUrl = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Fix what can be fixed without the source files.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for a writer instead of failing.")
    ] = False,
    as_json: AsJson = False,
    verbose: Verbose = False,
) -> None:
    """Check that an index's FAISS file, SQLite rows, keyword index and manifest agree."""
    from ragkit import pipeline

    setup_logging(verbose)
    report = pipeline.doctor(
        index=index, index_dir=index_dir, store=store, repair=repair, wait=wait
    )
    if as_json:
        data = asdict(report)
        data["ok"] = report.ok
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        _print_health(report, repair=repair)
    if not report.ok:
        raise typer.Exit(EXIT_UNHEALTHY)


@app.command()
def copy(
    to: Annotated[
        str,
        typer.Option(
            "--to", help="Where to copy: a postgresql:// URL, or a folder of indexes (SQLite)."
        ),
    ],
    to_index: Annotated[
        str | None, typer.Option(help="Name of the copy [default: the index's own name].")
    ] = None,
    index: IndexName = None,
    index_dir: IndexDir = None,
    store: StoreUrl = None,
    as_json: AsJson = False,
    verbose: Verbose = False,
) -> None:
    """Copy an index to another store (folder <-> PostgreSQL) with its vectors: no re-embedding."""
    from ragkit import pipeline

    setup_logging(verbose)
    report = pipeline.copy(to, to_index=to_index, index=index, index_dir=index_dir, store=store)
    if as_json:
        typer.echo(json.dumps(asdict(report), indent=2))
        return
    typer.echo(
        f"copied {report.source} to {report.target}: {report.documents} documents,"
        f" {report.chunks} chunks, {report.vectors} vectors (none embedded again)"
    )


def _print_health(report: HealthReport, *, repair: bool) -> None:
    faiss = "no readable" if report.faiss_vectors is None else f"{report.faiss_vectors} in the"
    postgres = report.index.startswith("postgres")
    typer.echo(
        f"{report.index}: {report.documents} documents, {report.chunks} chunks,"
        + (
            f" {report.vectors} vectors in PostgreSQL (HNSW-indexed)"
            if postgres
            else f" {report.vectors} vectors in SQLite, {faiss} FAISS file"
        )
    )
    for action in report.repaired:
        typer.echo(f"repaired: {action}")
    for problem in report.problems:
        typer.echo(f"problem [{problem.code}]: {problem.detail}")
        hint = "--repair will" if problem.repairable and not repair else "to fix"
        typer.echo(f"    {hint}: {problem.fix}")
    if report.ok and postgres:
        typer.echo("healthy: manifest, rows, vector and keyword indexes are sound")
    elif report.ok:
        typer.echo("healthy: FAISS agrees with SQLite; manifest, rows and keyword index are sound")
