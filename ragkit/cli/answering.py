"""``ragkit ask`` and ``ragkit chat``: answers with numbered, checked citations."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ragkit.cli.common import (
    EXIT_ABSTAINED,
    EXIT_ERROR,
    EXIT_INCOMPLETE,
    EXIT_UNCITED,
    AsJson,
    ChatModelName,
    ContextTokens,
    FileType,
    Heading,
    IndexDir,
    IndexName,
    Llm,
    MaxTokens,
    MinScore,
    Mmr,
    MmrLambda,
    Mode,
    ModifiedAfter,
    ModifiedBefore,
    PathGlob,
    ReasoningEffort,
    Seed,
    Stop,
    StoreUrl,
    Stream,
    Temperature,
    TopK,
    TopP,
    Verbose,
    app,
    err,
    out,
    safe_block,
    setup_logging,
)
from ragkit.errors import ChatError, QueryError
from ragkit.shapes import answer_json as _answer_json

if TYPE_CHECKING:
    from ragkit.answerer import Answer


def _answer_settings(**values: Any) -> dict[str, Any]:
    """The answering flags as Settings overrides (None = not given)."""
    stop = values.pop("stop", None)
    return {**values, "stop": tuple(stop) if stop else None}


class _Printer:
    """Writes streamed answer text (already citation-checked) to stdout as it arrives."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def __call__(self, text: str) -> None:
        self.parts.append(text)
        sys.stdout.write(safe_block(text))
        sys.stdout.flush()

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def cut_off(self, exc: ChatError) -> None:
        """Mark the text already shown as unfinished."""
        sys.stdout.write("\n")
        sys.stdout.flush()
        err(f"[answer cut off: {exc}]")


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
    store: StoreUrl = None,
    llm: Llm = None,
    chat_model: ChatModelName = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    max_tokens: MaxTokens = None,
    seed: Seed = None,
    stop: Stop = None,
    reasoning_effort: ReasoningEffort = None,
    context_tokens: ContextTokens = None,
    stream: Stream = True,
    as_json: AsJson = False,
    verbose: Verbose = False,
) -> None:
    """Answer QUESTION from the index, citing the passages used as [n]."""
    from ragkit import pipeline

    setup_logging(verbose)
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
                store=store,
                llm=llm,
                chat_model=chat_model,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                seed=seed,
                stop=stop,
                reasoning_effort=reasoning_effort,
                context_tokens=context_tokens,
            ),
        )
    except ChatError as exc:
        if not printer.parts:
            raise
        printer.cut_off(exc)
        raise typer.Exit(EXIT_ERROR) from None
    if as_json:
        typer.echo(json.dumps(_answer_json(answer), indent=2, ensure_ascii=False))
        if not answer.cited:
            _note_uncited()
    else:
        _print_answer(answer, streamed=printer.text)
    if verbose:
        _print_usage(answer)
    if answer.abstained:
        raise typer.Exit(EXIT_ABSTAINED)
    if not answer.complete:
        raise typer.Exit(EXIT_INCOMPLETE)
    if not answer.cited:
        raise typer.Exit(EXIT_UNCITED)


def _print_answer(answer: Answer, *, streamed: str) -> None:
    if streamed:
        typer.echo("")  # the answer itself was streamed, already checked
    else:
        if answer.mode == "extractive" and not answer.abstained:
            typer.echo(
                "Extractive answer (sentences quoted from your documents; no LLM configured):"
            )
        typer.echo(safe_block(answer.text))
    if not answer.complete:
        err(
            f"note: the answer is incomplete: the model stopped at its token limit"
            f" (finish_reason={answer.finish_reason}); raise --max-tokens"
        )
    if not answer.cited:
        _note_uncited()
    if answer.sources_dropped:
        err(
            f"note: {answer.sources_dropped} lower-ranked source(s) left out to fit the chat"
            " model's context window (--context-tokens)"
        )
    if answer.citations:
        typer.echo("")
        typer.echo("Sources:")
        for c in answer.citations:
            out(f"[{c.n}] {c.location}")
            out(f"    \u201c{c.quote}\u201d")


def _note_uncited() -> None:
    err(
        "note: the answer cites none of the sources it was given, so nothing shows it comes"
        " from your documents; check it against them, or rephrase the question"
    )


def _print_usage(answer: Answer) -> None:
    u = answer.usage
    if not u:
        return
    reasoning = f" ({u['reasoning_tokens']} reasoning)" if u.get("reasoning_tokens") else ""
    err(
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
    store: StoreUrl = None,
    llm: Llm = None,
    chat_model: ChatModelName = None,
    temperature: Temperature = None,
    top_p: TopP = None,
    max_tokens: MaxTokens = None,
    seed: Seed = None,
    stop: Stop = None,
    reasoning_effort: ReasoningEffort = None,
    context_tokens: ContextTokens = None,
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
    """Ask questions in turn (one per line on stdin; `exit`, Ctrl-D or end of input stops).

    Every turn retrieves afresh and numbers its own sources; earlier turns are kept within a
    token budget, oldest dropped first. A follow-up ("and on Sundays?") is also searched
    together with the previous question: an LLM judges what that finds; offline, only passages
    holding one of the new question's own words are kept.
    """
    from ragkit import maintenance
    from ragkit.config import Settings
    from ragkit.conversation import Turn, fit_history

    setup_logging(verbose)
    settings = Settings.load(
        **_answer_settings(
            k=k,
            min_score=min_score,
            path=path,
            index=index,
            index_dir=index_dir,
            store=store,
            llm=llm,
            chat_model=chat_model,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            stop=stop,
            reasoning_effort=reasoning_effort,
            context_tokens=context_tokens,
            chat_history_tokens=history_tokens,
        )
    )
    info = maintenance.status(settings)  # no index: say so now, not after the first question
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())

        err(
            f"ragkit chat over {info.index} ({info.documents} documents):"
            " ask a question; Ctrl-D or `exit` quits"
        )
    history: list[Turn] = []
    failed = False
    from ragkit.library import Index

    # One open index for the session: the model and tokenizer load once, not per question.
    with Index(settings) as idx:
        for question in _questions(interactive):
            if question is None:  # a line that was not UTF-8 text
                failed = True
                err("ragkit: error: that line is not valid UTF-8 text: type it again in UTF-8")
                continue
            if not interactive and not as_json:
                out(f"> {question}")  # a transcript shows what each answer answers
            printer = _Printer()
            try:
                answer = idx.ask(
                    question,
                    on_text=printer if stream and not as_json else None,
                    history=history,
                )
            except (ChatError, QueryError) as exc:
                failed = True
                if printer.parts and isinstance(exc, ChatError):
                    printer.cut_off(exc)
                else:
                    err(f"ragkit: error: {exc}")
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


def _questions(interactive: bool) -> Iterator[str | None]:
    """Non-empty lines from stdin until end of input or `exit` / `quit`; None for a line that is
    not UTF-8 (so one bad line is reported, not a traceback)."""
    while True:
        try:
            if interactive:
                line = input("ragkit> ")
            else:
                raw = sys.stdin.buffer.readline()
                if not raw:
                    return
                line = raw.decode("utf-8")
        except EOFError:
            typer.echo("")  # Ctrl-D: end the prompt's line so the shell's starts on its own
            return
        except KeyboardInterrupt:
            if interactive:
                typer.echo("")  # Ctrl-C at the prompt: the same, then exit 130
            raise
        except UnicodeDecodeError:
            yield None
            continue
        question = line.strip()
        if question.lower() in ("exit", "quit"):
            return
        if question:
            yield question
