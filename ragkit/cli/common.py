"""What every command shares: the typer app, exit codes, option types, stderr and logging."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

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
StoreUrl = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="RAGKIT_STORE",
        help="A postgresql:// URL: keep indexes in that database [default: the index folder].",
    ),
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


def err(message: str) -> None:
    """One line on stderr."""
    typer.echo(message, err=True)


def setup_logging(verbose: bool) -> None:
    """Log to stderr; INFO with --verbose, else warnings only."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="ragkit: %(message)s",
        stream=sys.stderr,
        force=True,
    )
