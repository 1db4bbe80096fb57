"""``ragkit index``, ``status`` and ``doctor``: build an index, describe it, check it."""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ragkit.cli.common import (
    EXIT_FILES_FAILED,
    EXIT_INTERRUPTED,
    EXIT_UNHEALTHY,
    AsJson,
    IndexDir,
    IndexName,
    StoreUrl,
    Verbose,
    app,
    err,
    out,
    safe,
    setup_logging,
)
from ragkit.shapes import health_json, status_json
from ragkit.shapes import report_json as _report_json

if TYPE_CHECKING:
    from ragkit.pipeline import IndexReport
    from ragkit.store import HealthReport


class _ProgressPrinter:
    """Progress on stderr while scanning, loading and embedding.

    On a terminal one line is rewritten in place (files, bytes, the current file), then a bar
    while embedding; elsewhere (logs, CI) a few plain lines. ``finish`` ends a line left open.
    """

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.last = 0
        self.stage = ""
        self.files = self.files_total = 0
        self.bytes = 0
        self.chunks = self.chunks_total = 0
        self.shown = 0  # width of the line now on screen (terminal only)
        self.drawn_at = 0.0
        self.quarter = -1

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.stage = stage
        if stage == "scan":
            self._line("scanning for files…")
        elif stage == "load":
            self.files, self.files_total = done, total
            if not self.tty and done == 1:
                err(f"checking {total} files…")
            self._load_line(force=done == total)
        elif stage == "embed" and total:
            self.chunks, self.chunks_total = done, total
            self._embed(done, total)

    def file(self, path: str, size: int) -> None:
        """A file is being read: show it (terminal) and count its bytes."""
        self.bytes += size
        self._load_line(current=path)

    def _load_line(self, current: str = "", *, force: bool = False) -> None:
        text = f"loading: {self.files}/{self.files_total} files, {_size(self.bytes)}"
        if self.tty:
            self._line(f"{text}: {current}" if current else text, force=force)
        elif self.files_total:
            quarter = self.files * 4 // self.files_total
            if quarter > self.quarter and self.files > 1 and self.files_total >= 100:
                err(f"  {self.files}/{self.files_total} files checked, {_size(self.bytes)} read")
            self.quarter = quarter

    def _line(self, text: str, *, force: bool = False) -> None:
        """Rewrite the terminal's progress line, at most ten times a second."""
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self.drawn_at < 0.1:
            return
        self.drawn_at = now
        width = shutil.get_terminal_size().columns - 1
        line = safe(text)[:width]
        sys.stderr.write("\r" + line + " " * max(0, self.shown - len(line)))
        sys.stderr.flush()
        self.shown = len(line)

    def finish(self) -> None:
        """End the progress line or bar, so what follows starts on its own line."""
        if self.bar is not None:
            self.bar.render_finish()
            self.bar = None
        elif self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
        self.shown = 0

    def _embed(self, done: int, total: int) -> None:
        if self.tty:
            if self.bar is None:
                self.finish()
                self.bar = typer.progressbar(length=total, label="embedding", file=sys.stderr)
                self.bar.__enter__()
            self.bar.update(done - self.last)
            if done >= total:
                self.bar.__exit__(None, None, None)
                self.bar = None
        elif done == 0:
            err(f"embedding {total} chunks…")
        self.last = done

    def kept(self) -> str:
        """What an interrupted run leaves in the index, in words."""
        if self.stage == "embed":
            return (
                f"all {self.files_total} files are loaded and {self.chunks} of"
                f" {self.chunks_total} new chunks embedded"
            )
        if self.stage == "load":
            return f"{max(self.files - 1, 0)} of {self.files_total} files checked and kept"
        if self.stage == "scan":
            return "nothing had changed yet"
        return "what was committed before the interrupt is kept"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"


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
    include: Annotated[
        list[str] | None,
        typer.Option(help="Index only files matching this glob (repeatable; kept in the index)."),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="Leave out files/folders matching this glob (repeatable; kept)."),
    ] = None,
    skip_generated: Annotated[
        bool | None,
        typer.Option(
            "--skip-generated/--no-skip-generated",
            help="Leave out minified/generated assets and Sphinx _sources/ [default: skip].",
        ),
    ] = None,
    follow_symlinks: Annotated[
        bool | None,
        typer.Option("--follow-symlinks", help="Read links that point outside the folder."),
    ] = None,
    max_chars_per_file: Annotated[
        int | None, typer.Option(help="Fail a file past this much text [default: 10,000,000].")
    ] = None,
    max_chars_per_page: Annotated[
        int | None, typer.Option(help="Fail a PDF with a page past this much text [200,000].")
    ] = None,
    max_seconds_per_file: Annotated[
        float | None, typer.Option(help="Fail a PDF that takes longer to read [default: 120].")
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
    printer = _ProgressPrinter()
    try:
        report = pipeline.index(
            path,
            progress=None if as_json or dry_run else printer,
            on_file=None if as_json or dry_run else printer.file,
            wait=wait,
            dry_run=dry_run,
            index=index,
            index_dir=index_dir,
            store=store,
            embedder=embedder,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
            max_file_mb=max_file_mb,
            include=None if include is None else tuple(include),
            exclude=None if exclude is None else tuple(exclude),
            skip_generated=skip_generated,
            follow_symlinks=follow_symlinks,
            max_chars_per_file=max_chars_per_file,
            max_chars_per_page=max_chars_per_page,
            max_seconds_per_file=max_seconds_per_file,
            vector_index=vector_index,
        )
    except KeyboardInterrupt:
        printer.finish()
        err(
            f"ragkit: interrupted: {printer.kept()};"
            " run the same command again to finish (nothing kept is redone)"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    printer.finish()
    if as_json:
        typer.echo(json.dumps(_report_json(report), indent=2, ensure_ascii=False))
    elif dry_run:
        _print_estimate(report)
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(EXIT_FILES_FAILED)


def _print_report(report: IndexReport) -> None:
    for item in report.failed:
        err(f"failed: {item.path}: {item.reason}")
    _print_skipped(report, "skipped")
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


def _print_skipped(report: IndexReport, verb: str) -> None:
    """One line per skipped file; hidden ones (often thousands, under .git) as one count."""
    from ragkit.documents import HIDDEN

    for item in report.skipped:
        if item.reason != HIDDEN:
            err(f"{verb}: {item.path}: {item.reason}")
    hidden = sum(item.reason == HIDDEN for item in report.skipped)
    if hidden:
        err(f"{verb}: {hidden} hidden (names starting with '.'; not indexed)")


def _print_estimate(report: IndexReport) -> None:
    for item in report.failed:
        err(f"would fail: {item.path}: {item.reason}")
    files = len(report.added) + len(report.changed)
    cost = f"${report.cost_usd:.4f}" if report.cost_usd is not None else "unknown (no price known)"
    out(
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
    from ragkit import maintenance

    info = maintenance.status(index=index, index_dir=index_dir, store=store)
    if as_json:
        typer.echo(json.dumps(status_json(info), indent=2))
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
        out(f"{key:>16}: {value}")


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
    from ragkit import maintenance

    setup_logging(verbose)
    report = maintenance.doctor(
        index=index, index_dir=index_dir, store=store, repair=repair, wait=wait
    )
    if as_json:
        typer.echo(json.dumps(health_json(report), indent=2, ensure_ascii=False))
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
    from ragkit import maintenance

    setup_logging(verbose)
    report = maintenance.copy(to, to_index=to_index, index=index, index_dir=index_dir, store=store)
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
    out(
        f"{report.index}: {report.documents} documents, {report.chunks} chunks,"
        + (
            f" {report.vectors} vectors in PostgreSQL (HNSW-indexed)"
            if postgres
            else f" {report.vectors} vectors in SQLite, {faiss} FAISS file"
        )
    )
    for action in report.repaired:
        out(f"repaired: {action}")
    for problem in report.problems:
        out(f"problem [{problem.code}]: {problem.detail}")
        hint = "--repair will" if problem.repairable and not repair else "to fix"
        out(f"    {hint}: {problem.fix}")
    if report.ok and postgres:
        out("healthy: manifest, rows, vector and keyword indexes are sound")
    elif report.ok:
        out("healthy: FAISS agrees with SQLite; manifest, rows and keyword index are sound")
