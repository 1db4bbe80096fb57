"""What every command shares: the typer app, exit codes, option types, stderr and logging."""

from __future__ import annotations

import logging
import re
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
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
)


def _version(value: bool) -> None:
    if value:
        from ragkit import __version__

        typer.echo(f"ragkit {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Semantic search and cited answers over your documents, offline by default."""


EXIT_ERROR = 1
EXIT_ABSTAINED = 2
EXIT_FILES_FAILED = 3
EXIT_INCOMPLETE = 4
EXIT_UNHEALTHY = 5
EXIT_UNCITED = 6  # ask: an LLM answer that cites none of the sources it was given
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a process killed by Ctrl-C

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
        "--path",
        envvar="RAGKIT_PATH",
        help="Only documents whose path matches this glob; a folder name means all under it.",
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
ContextTokens = Annotated[
    int | None,
    typer.Option(
        envvar="RAGKIT_CONTEXT_TOKENS",
        help="The chat model's context window in tokens; sources that do not fit are left out"
        " [default: known for OpenAI models, else 4096].",
    ),
]
Stream = Annotated[
    bool, typer.Option("--stream/--no-stream", help="Print the LLM answer as it is generated.")
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log what ragkit is doing.")]


# What a file name, heading, document text or server message must never put on a terminal raw:
# C0 controls (newline and CR forge extra lines, ESC starts escape sequences, BEL), DEL, C1
# controls (U+0080-U+009F; U+009B is a one-character CSI), the Unicode line and paragraph
# separators, bidi embeddings, overrides and isolates (they reorder what is shown: "Trojan
# Source"), and lone surrogates (bytes that were not valid UTF-8, kept by surrogateescape).
_OTHER_UNSAFE = r"\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE = re.compile(rf"[\x00-\x1f{_OTHER_UNSAFE}]")
_UNSAFE_IN_BLOCK = re.compile(rf"[\x00-\x08\x0b-\x1f{_OTHER_UNSAFE}]")  # keeps \t and \n
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the original byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def safe(text: object) -> str:
    """``text`` on one line, its control, bidi and undecodable characters shown as escapes.

    Every path, heading, quote and message printed as text goes through here, so nothing read
    from a file name or a document can forge an extra output line or reach the terminal raw.
    """
    return _UNSAFE.sub(_escape, str(text))


def safe_block(text: str) -> str:
    """Like :func:`safe`, but keeps newlines and tabs: for multi-line answer text."""
    return _UNSAFE_IN_BLOCK.sub(_escape, text)


def out(line: str) -> None:
    """One line on stdout (made safe: see :func:`safe`)."""
    typer.echo(safe(line))


def err(message: str) -> None:
    """One line on stderr (made safe: see :func:`safe`)."""
    typer.echo(safe(message), err=True)


class _SafeFormatter(logging.Formatter):
    """Log records as one safe line each: messages often quote paths."""

    def format(self, record: logging.LogRecord) -> str:
        return safe(super().format(record))


def setup_logging(verbose: bool) -> None:
    """Log to stderr; INFO with --verbose, else warnings only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("ragkit: %(message)s"))
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True
    )
