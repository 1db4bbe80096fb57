"""The ``ragkit`` command: parse flags, call one library function, print.

Results go to stdout, progress and messages to stderr. A RagkitError is one line on stderr and
exit code 1; ``ask`` exits 2 when it abstains; ``index`` exits 3 when some file that should have
been indexed failed (the rest of the run is kept); ``doctor`` exits 5 when problems remain;
Ctrl-C exits 130. A closed stdout pipe (``ragkit search ... | head -1``) ends the run quietly
with exit 0. Text output is made safe (control characters escaped, one line per item); ``--json``
is JSON.

An answer is never passed off as complete when it is not. When the model stops at its token
limit (finish_reason "length") the partial answer is printed, a note goes to stderr, ``--json``
has ``"complete": false`` and ``ask`` exits 4, so scripts can tell without parsing. When a
streamed answer is cut (connection lost, stream ended early), the text already shown is followed
by ``[answer cut off: ...]`` on stderr and exit code 1. An LLM answer that cites none of the
sources it was given gets a note on stderr, ``"cited": false`` and exit code 6. ``chat`` keeps
going after a failed turn and exits 1 at the end if any turn failed.
"""

from __future__ import annotations

import os
import sys

import typer
import typer.main

# isort: off
# Imported for their commands, in the order `ragkit --help` lists them.
from ragkit.cli import indexing, searching, answering, evaluation, serving  # noqa: F401

# isort: on
from ragkit.cli.common import (
    EXIT_ABSTAINED,
    EXIT_ERROR,
    EXIT_FILES_FAILED,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_UNCITED,
    EXIT_UNHEALTHY,
    app,
    err,
    safe,
)
from ragkit.errors import RagkitError

__all__ = [
    "EXIT_ABSTAINED",
    "EXIT_ERROR",
    "EXIT_FILES_FAILED",
    "EXIT_INCOMPLETE",
    "EXIT_UNCITED",
    "EXIT_INTERRUPTED",
    "EXIT_UNHEALTHY",
    "app",
    "main",
]


def main() -> None:
    """Entry point: run the app; a RagkitError is one line and exit 1, Ctrl-C exit 130."""
    # Run the click command directly rather than through typer's main(): that one turns Ctrl-C
    # into a silent exit 130 and a closed stdout pipe into exit 1, both before ragkit could
    # say or decide anything.
    command = typer.main.get_command(app)
    try:
        with command.make_context("ragkit", sys.argv[1:]) as ctx:
            code = command.invoke(ctx)
    except RagkitError as exc:
        err(f"ragkit: error: {exc}")
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        err("ragkit: interrupted; work committed so far is kept")
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (`ragkit search ... | head -1`): stop quietly with exit 0, as
        # ripgrep does, rather than die of SIGPIPE as git does (exit 141 in a shell), so scripts
        # with `set -o pipefail` do not fail on a reader that had seen enough.
        _discard_stdout()
        sys.exit(0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # Usage errors (missing argument, unknown option, bad value) come from click, or from
        # the copy of click that newer typer versions vendor: recognised by what they offer.
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            if isinstance(getattr(exc, "message", None), str):
                exc.message = safe(exc.message)  # type: ignore[attr-defined]  # it quotes argv
            show()
            # click exits 2 on usage errors; here 2 means "ask abstained", so they exit 1.
            sys.exit(EXIT_ERROR if exit_code == EXIT_ABSTAINED else exit_code)
        if type(exc).__name__ == "Abort":  # click's Ctrl-C / EOF at a prompt
            sys.exit(1)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
