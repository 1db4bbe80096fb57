"""The ``ragkit`` command: parse flags, call one library function, print.

Results go to stdout, progress and messages to stderr. A RagkitError is one line on stderr and
exit code 1; ``ask`` exits 2 when it abstains; ``index`` exits 3 when some file that should have
been indexed failed (the rest of the run is kept); ``doctor`` exits 5 when problems remain.

An answer is never passed off as complete when it is not. When the model stops at its token
limit (finish_reason "length") the partial answer is printed, a note goes to stderr, ``--json``
has ``"complete": false`` and ``ask`` exits 4, so scripts can tell without parsing. When a
streamed answer is cut (connection lost, stream ended early), the text already shown is followed
by ``[answer cut off: ...]`` on stderr and exit code 1. ``chat`` keeps going after a failed turn
and exits 1 at the end if any turn failed.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ragkit.errors import ChatError, RagkitError

if TYPE_CHECKING:
    from ragkit.answerer import Answer
    from ragkit.conversation import Turn
    from ragkit.pipeline import IndexReport
    from ragkit.retriever import Hit
    from ragkit.store import HealthReport

app = typer.Typer(
    name="ragkit",
    help="Semantic search and cited answers over your documents, offline by default.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_ERROR = 1
EXIT_ABSTAINED = 2
EXIT_FILES_FAILED = 3
EXIT_INCOMPLETE = 4
EXIT_UNHEALTHY = 5

# Options shared by every command; each has a RAGKIT_* variable of the same name.
IndexName = Annotated[
    str | None,
    typer.Option("--index", "-i", envvar="RAGKIT_INDEX", help="Index name [default: default]."),
]
IndexDir = Annotated[
    Path | None,
    typer.Option(envvar="RAGKIT_INDEX_DIR", help="Folder holding indexes [default: ./indexes]."),
]
TopK = Annotated[
    int | None,
    typer.Option("-k", "--k", envvar="RAGKIT_K", help="Passages to retrieve [default: 5]."),
]
MinScore = Annotated[
    float | None, typer.Option(envvar="RAGKIT_MIN_SCORE", help="Drop passages scoring below this.")
]
PathGlob = Annotated[
    str | None,
    typer.Option(
        "--path", envvar="RAGKIT_PATH", help="Only documents whose path matches this glob."
    ),
]
Mode = Annotated[
    str | None,
    typer.Option(
        envvar="RAGKIT_MODE",
        help="hybrid (dense + keyword, rank-fused), dense (cosine) or keyword (BM25)"
        " [default: hybrid].",
    ),
]
Mmr = Annotated[
    bool | None,
    typer.Option(
        "--mmr/--no-mmr",
        envvar="RAGKIT_MMR",
        help="Diversify results (maximal marginal relevance).",
    ),
]
MmrLambda = Annotated[
    float | None,
    typer.Option(
        envvar="RAGKIT_MMR_LAMBDA", help="MMR trade-off, 1 = relevance only [default: 0.5]."
    ),
]
FileType = Annotated[
    str | None,
    typer.Option(envvar="RAGKIT_FILE_TYPE", help="Only these kinds or suffixes, e.g. pdf,.md"),
]
ModifiedAfter = Annotated[
    str | None,
    typer.Option(
        envvar="RAGKIT_MODIFIED_AFTER", help="Only documents modified on or after this ISO date."
    ),
]
ModifiedBefore = Annotated[
    str | None,
    typer.Option(
        envvar="RAGKIT_MODIFIED_BEFORE", help="Only documents modified before this ISO date."
    ),
]
Heading = Annotated[
    str | None,
    typer.Option(envvar="RAGKIT_HEADING", help="Only passages whose heading contains this text."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
# Answering options, shared by ask and chat.
Llm = Annotated[
    bool | None,
    typer.Option(
        "--llm/--extractive", envvar="RAGKIT_LLM", help="Force LLM or extractive answers."
    ),
]
ChatModelName = Annotated[
    str | None,
    typer.Option(
        "--model",
        "--chat-model",
        envvar="RAGKIT_CHAT_MODEL",
        help="Chat model [default: gpt-4o-mini].",
    ),
]
Temperature = Annotated[
    float | None,
    typer.Option(
        envvar="RAGKIT_TEMPERATURE",
        help="Sampling temperature, 0-2 [default: 0]; not sent to reasoning models (o1, gpt-5).",
    ),
]
TopP = Annotated[
    float | None,
    typer.Option(
        "--top-p",
        envvar="RAGKIT_TOP_P",
        help="Nucleus sampling, 0-1; not sent to reasoning models.",
    ),
]
MaxTokens = Annotated[
    int | None,
    typer.Option(
        envvar="RAGKIT_MAX_TOKENS",
        help="Most tokens in the answer (sent as max_completion_tokens to reasoning models).",
    ),
]
Seed = Annotated[
    int | None, typer.Option(envvar="RAGKIT_SEED", help="Seed for repeatable sampling.")
]
Stop = Annotated[
    list[str] | None,
    typer.Option(
        "--stop",
        metavar="<str>",
        help="Stop sequence (repeatable, up to 4; RAGKIT_STOP takes a JSON list).",
    ),
]
ReasoningEffort = Annotated[
    str | None,
    typer.Option(
        envvar="RAGKIT_REASONING_EFFORT",
        help="Reasoning models only: minimal, low, medium or high.",
    ),
]
Stream = Annotated[
    bool, typer.Option("--stream/--no-stream", help="Print the LLM answer as it is generated.")
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log what ragkit is doing.")]


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="ragkit: %(message)s",
        stream=sys.stderr,
        force=True,
    )


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
            _err(f"embedding {total} chunks…")
        self.last = done


@app.command()
def index(
    path: Annotated[Path, typer.Argument(help="Folder (or file) to index.")],
    index: IndexName = None,
    index_dir: IndexDir = None,
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

    _setup_logging(verbose)
    report = pipeline.index(
        path,
        progress=None if as_json or dry_run else _ProgressPrinter(),
        wait=wait,
        dry_run=dry_run,
        index=index,
        index_dir=index_dir,
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
        _err(f"failed: {item.path}: {item.reason}")
    _print_skipped(report, "skipped")
    for path, warning in report.warnings:
        _err(f"warning: {path}: {warning}")
    _err(
        f"{report.index} [{report.embedder}]: {len(report.added)} added,"
        f" {len(report.changed)} changed,"
        f" {len(report.removed)} removed, {len(report.moved)} moved, {report.unchanged} unchanged;"
        f" {len(report.skipped)} skipped, {len(report.failed)} failed;"
        f" {report.chunks_embedded} chunks embedded, {report.chunks_reused} reused;"
        f" {report.documents} documents, {report.chunks} chunks in the index;"
        f" {report.seconds:.1f} s"
    )
    if report.tokens_embedded and report.cost_usd:
        _err(
            f"{report.tokens_embedded} tokens embedded, about ${report.cost_usd:.4f} at list price"
        )


def _print_skipped(report: IndexReport, verb: str) -> None:
    """One line per skipped file; hidden ones (often thousands, under .git) as one count."""
    from ragkit.documents import HIDDEN

    for item in report.skipped:
        if item.reason != HIDDEN:
            _err(f"{verb}: {item.path}: {item.reason}")
    hidden = sum(item.reason == HIDDEN for item in report.skipped)
    if hidden:
        _err(f"{verb}: {hidden} hidden (names starting with '.'; not indexed)")


def _print_estimate(report: IndexReport) -> None:
    for item in report.failed:
        _err(f"would fail: {item.path}: {item.reason}")
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


def _location(page: int | None, start: int, end: int, label: str | None = None) -> str:
    parts = [f"page {page}" + (f" ({label})" if label else "")] if page is not None else []
    parts.append(f"line {start}" if start == end else f"lines {start}–{end}")
    return ", ".join(parts)


def _hit_json(hit: Hit) -> dict[str, Any]:
    return {
        "rank": hit.rank,
        "score": round(hit.score, 6),
        "dense_score": None if hit.dense_score is None else round(hit.dense_score, 6),
        "path": hit.path,
        "page": hit.page,
        "page_label": hit.page_label,
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
    as_json: AsJson = False,
    verbose: Verbose = False,
) -> None:
    """Show the passages that best match QUERY, best first.

    The score shown is the mode's: cosine (dense), BM25 (keyword) or fused rank score (hybrid).
    """
    from ragkit import pipeline

    _setup_logging(verbose)
    from ragkit.config import Settings

    settings = Settings.load(
        k=k, min_score=min_score, path=path, mode=mode, mmr=mmr, mmr_lambda=mmr_lambda,
        file_type=file_type, modified_after=modified_after, modified_before=modified_before,
        heading=heading, index=index, index_dir=index_dir,
    )  # fmt: skip
    hits = pipeline.search(query, settings)
    if as_json:
        data = {"query": query, "mode": settings.mode, "hits": [_hit_json(h) for h in hits]}
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    if not hits:
        _err("no passages found")
    for hit in hits:
        heading = f" § {hit.heading}" if hit.heading else ""
        typer.echo(
            f"{hit.rank}. [{_score(settings.mode, hit)}] {hit.path}"
            f" ({_location(hit.page, hit.start_line, hit.end_line, hit.page_label)}){heading}"
        )
        typer.echo("   " + " ".join(hit.text.split())[:400])
        typer.echo("")


def _answer_json(answer: Answer) -> dict[str, Any]:
    return {
        "question": answer.question,
        "answer": answer.text,
        "mode": answer.mode,
        "model": answer.model,
        "abstained": answer.abstained,
        "finish_reason": answer.finish_reason,
        "complete": answer.complete,
        "usage": answer.usage,
        "citations": [
            {
                "n": c.n,
                "path": c.path,
                "page": c.page,
                "page_label": c.page_label,
                "start_line": c.start_line,
                "end_line": c.end_line,
                "quote": c.quote,
            }
            for c in answer.citations
        ],
    }


def _answer_settings(**values: Any) -> dict[str, Any]:
    """The answering flags as Settings overrides (None = not given)."""
    stop = values.pop("stop", None)
    return {**values, "stop": tuple(stop) if stop else None}


class _Printer:
    """Writes streamed answer text to stdout as it arrives and remembers it."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def __call__(self, text: str) -> None:
        self.parts.append(text)
        sys.stdout.write(text)
        sys.stdout.flush()

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def cut_off(self, exc: ChatError) -> None:
        """Mark the text already shown as unfinished."""
        sys.stdout.write("\n")
        sys.stdout.flush()
        _err(f"[answer cut off: {exc}]")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question to answer from the index.")],
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
    llm: Llm = None,
    chat_model: ChatModelName = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    max_tokens: MaxTokens = None,
    seed: Seed = None,
    stop: Stop = None,
    reasoning_effort: ReasoningEffort = None,
    stream: Stream = True,
    as_json: AsJson = False,
    verbose: Verbose = False,
) -> None:
    """Answer QUESTION from the index, citing the passages used as [n]."""
    from ragkit import pipeline

    _setup_logging(verbose)
    printer = _Printer()
    try:
        answer = pipeline.ask(
            question,
            on_text=printer if stream and not as_json else None,
            **_answer_settings(
                k=k,
                min_score=min_score,
                path=path,
                mode=mode,
                mmr=mmr,
                mmr_lambda=mmr_lambda,
                file_type=file_type,
                modified_after=modified_after,
                modified_before=modified_before,
                heading=heading,
                index=index,
                index_dir=index_dir,
                llm=llm,
                chat_model=chat_model,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                seed=seed,
                stop=stop,
                reasoning_effort=reasoning_effort,
            ),
        )
    except ChatError as exc:
        if not printer.parts:
            raise
        printer.cut_off(exc)
        raise typer.Exit(EXIT_ERROR) from None
    if as_json:
        typer.echo(json.dumps(_answer_json(answer), indent=2, ensure_ascii=False))
    else:
        _print_answer(answer, streamed=printer.text)
    if verbose:
        _print_usage(answer)
    if answer.abstained:
        raise typer.Exit(EXIT_ABSTAINED)
    if not answer.complete:
        raise typer.Exit(EXIT_INCOMPLETE)


def _print_answer(answer: Answer, *, streamed: str) -> None:
    if streamed:
        typer.echo("")
        if answer.text != streamed.strip():
            # Citations are checked once the whole answer is in: show what survived the check.
            typer.echo("\nChecked answer (citations that name no source removed):")
            typer.echo(answer.text)
    else:
        if answer.mode == "extractive" and not answer.abstained:
            typer.echo(
                "Extractive answer (sentences quoted from your documents; no LLM configured):"
            )
        typer.echo(answer.text)
    if not answer.complete:
        _err(
            f"note: the answer is incomplete: the model stopped at its token limit"
            f" (finish_reason={answer.finish_reason}); raise --max-tokens"
        )
    if answer.citations:
        typer.echo("")
        typer.echo("Sources:")
        for c in answer.citations:
            typer.echo(f"[{c.n}] {c.location}")
            typer.echo(f"    \u201c{c.quote}\u201d")


def _print_usage(answer: Answer) -> None:
    u = answer.usage
    if not u:
        return
    reasoning = f" ({u['reasoning_tokens']} reasoning)" if u.get("reasoning_tokens") else ""
    _err(
        f"usage: {u.get('prompt_tokens', 0)} prompt + {u.get('completion_tokens', 0)} completion"
        f"{reasoning} = {u.get('total_tokens', 0)} tokens ({answer.model})"
    )


@app.command()
def chat(
    k: TopK = None,
    min_score: MinScore = None,
    path: PathGlob = None,
    index: IndexName = None,
    index_dir: IndexDir = None,
    llm: Llm = None,
    chat_model: ChatModelName = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    max_tokens: MaxTokens = None,
    seed: Seed = None,
    stop: Stop = None,
    reasoning_effort: ReasoningEffort = None,
    history_tokens: Annotated[
        int | None,
        typer.Option(
            "--chat-history-tokens",
            envvar="RAGKIT_CHAT_HISTORY_TOKENS",
            help="Tokens of earlier turns sent with each question [default: 2000].",
        ),
    ] = None,
    stream: Stream = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per turn.")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Ask questions in turn (one per line on stdin; `exit` or end of input stops).

    Every turn retrieves afresh and numbers its own sources; earlier turns are kept within a
    token budget, oldest dropped first.
    """
    from ragkit import pipeline
    from ragkit.config import Settings
    from ragkit.conversation import Turn, fit_history

    _setup_logging(verbose)
    settings = Settings.load(
        **_answer_settings(
            k=k,
            min_score=min_score,
            path=path,
            index=index,
            index_dir=index_dir,
            llm=llm,
            chat_model=chat_model,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            stop=stop,
            reasoning_effort=reasoning_effort,
            chat_history_tokens=history_tokens,
        )
    )
    pipeline.status(settings)  # no index: say so now, not after the first question
    interactive = sys.stdin.isatty()
    history: list[Turn] = []
    failed = False
    for question in _questions(interactive):
        if not interactive and not as_json:
            typer.echo(f"> {question}")  # a transcript shows what each answer answers
        printer = _Printer()
        try:
            answer = pipeline.ask(
                question,
                settings,
                on_text=printer if stream and not as_json else None,
                history=history,
            )
        except ChatError as exc:
            failed = True
            if printer.parts:
                printer.cut_off(exc)
            else:
                _err(f"ragkit: error: {exc}")
            continue
        if as_json:
            typer.echo(json.dumps(_answer_json(answer), ensure_ascii=False))
        else:
            _print_answer(answer, streamed=printer.text)
            typer.echo("")
        if verbose:
            _print_usage(answer)
        history = list(
            fit_history([*history, Turn(question, answer.text)], settings.chat_history_tokens)
        )
    if failed:
        raise typer.Exit(EXIT_ERROR)


def _questions(interactive: bool) -> Iterator[str]:
    """Non-empty lines from stdin until end of input or `exit` / `quit`."""
    while True:
        try:
            line = input("ragkit> ") if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not interactive and not line:
            return
        question = line.strip()
        if question.lower() in ("exit", "quit"):
            return
        if question:
            yield question


class _StepPrinter:
    """Embedding progress on stderr as a line every tenth of the way (long runs, logs too)."""

    def __init__(self) -> None:
        self.shown = -1

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != "embed" or total == 0:
            return
        tenth = done * 10 // total
        if done == 0:
            _err(f"embedding {total} chunks…")
        elif tenth > self.shown:
            _err(f"  {done}/{total} chunks embedded")
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
    as_json: AsJson = False,
    verbose: Verbose = False,
) -> None:
    """Score retrieval on a BEIR dataset: nDCG@10, Recall@10, Recall@100, MRR@10 per mode.

    The corpus is indexed under INDEX_DIR/eval-<dataset>-<protocol>-… and reused next time; only
    each query's text is given to the retriever.
    """
    from ragkit import pipeline
    from ragkit.evaluation import PROTOCOLS
    from ragkit.retriever import MODES

    _setup_logging(verbose)
    report = pipeline.evaluate(
        dataset,
        protocols=tuple(protocol or PROTOCOLS),
        modes=tuple(mode or MODES),
        split=split,
        progress=None if as_json and not verbose else _StepPrinter(),
        embedder=embedder,
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
        index_dir=index_dir,
    )
    if as_json:
        typer.echo(json.dumps(asdict(report), indent=2))
        return
    typer.echo(
        f"{report.dataset} ({report.split}): {report.queries} queries,"
        f" {report.documents} documents, embedder {report.embedder}"
    )
    for info in report.protocols:
        typer.echo(
            f"  {info.protocol}: {info.chunks} chunks in {info.index}"
            f" ({info.chunks_embedded} embedded this run, {info.seconds:.0f} s)"
        )
    typer.echo("")
    typer.echo(f"{'protocol':<10}{'mode':<9}{'nDCG@10':>9}{'R@10':>8}{'R@100':>8}{'MRR@10':>8}")
    for r in report.results:
        typer.echo(
            f"{r.protocol:<10}{r.mode:<9}{r.ndcg_at_10:>9.4f}{r.recall_at_10:>8.4f}"
            f"{r.recall_at_100:>8.4f}{r.mrr_at_10:>8.4f}"
        )


@app.command()
def status(
    index: IndexName = None,
    index_dir: IndexDir = None,
    as_json: AsJson = False,
) -> None:
    """Show where an index is, what built it, and what it holds."""
    from ragkit import pipeline

    info = pipeline.status(index=index, index_dir=index_dir)
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
            "FAISS agrees with SQLite"
            if info.faiss_agrees
            else "FAISS out of date (rebuilt on next use)",
        ),
    ]
    for key, value in rows:
        typer.echo(f"{key:>16}: {value}")


@app.command()
def doctor(
    index: IndexName = None,
    index_dir: IndexDir = None,
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

    _setup_logging(verbose)
    report = pipeline.doctor(index=index, index_dir=index_dir, repair=repair, wait=wait)
    if as_json:
        data = asdict(report)
        data["ok"] = report.ok
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        _print_health(report, repair=repair)
    if not report.ok:
        raise typer.Exit(EXIT_UNHEALTHY)


def _print_health(report: HealthReport, *, repair: bool) -> None:
    faiss = "no readable" if report.faiss_vectors is None else f"{report.faiss_vectors} in the"
    typer.echo(
        f"{report.index}: {report.documents} documents, {report.chunks} chunks,"
        f" {report.vectors} vectors in SQLite, {faiss} FAISS file"
    )
    for action in report.repaired:
        typer.echo(f"repaired: {action}")
    for problem in report.problems:
        typer.echo(f"problem [{problem.code}]: {problem.detail}")
        hint = "--repair will" if problem.repairable and not repair else "to fix"
        typer.echo(f"    {hint}: {problem.fix}")
    if report.ok:
        typer.echo("healthy: FAISS agrees with SQLite; manifest, rows and keyword index are sound")


def main() -> None:
    """Entry point: run the app, turning RagkitError into one line and a non-zero exit."""
    try:
        code = app(standalone_mode=False)
    except RagkitError as exc:
        _err(f"ragkit: error: {exc}")
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        _err("ragkit: interrupted; work committed so far is kept")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # Usage errors (missing argument, unknown option, bad value) come from click, or from
        # the copy of click that newer typer versions vendor: recognised by what they offer.
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            # click exits 2 on usage errors; here 2 means "ask abstained", so they exit 1.
            sys.exit(EXIT_ERROR if exit_code == EXIT_ABSTAINED else exit_code)
        if type(exc).__name__ == "Abort":  # click's Ctrl-C / EOF at a prompt
            sys.exit(1)
        raise
    sys.exit(code if isinstance(code, int) else 0)
