"""What a user meets at the terminal, through real processes: safe text output, --version and -h,
closed pipes, bytes that are not UTF-8, the interactive chat, Ctrl-C during ``index``."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragkit.cli import app
from ragkit.cli.common import safe, safe_block
from tests.test_pipeline import PAGES, write

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

FORGED_NAME = "x\nfailed: ledger.pdf: encrypted PDF"  # a file name that forges a report line
TITLE_ESCAPE = "\x1b]0;pwned\x07"  # sets the terminal's title: must never reach it raw
CONTROL_BYTES = ("\x1b", "\x07", "\x9b", "\r", "\u202e")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RAGKIT_"))}
    env.update({"PYTHONPATH": str(ROOT), "RAGKIT_INDEX_DIR": str(tmp_path / "indexes")}, **extra)
    return env


def _run(
    tmp_path: Path, *args: str | bytes, stdin: bytes | None = None, **env: str
) -> subprocess.CompletedProcess[bytes]:
    """``ragkit ARGS`` (with the test fakes registered) in a real process."""
    return subprocess.run(
        [sys.executable, "-m", "tests.ragkit_with_fakes", *args],
        cwd=tmp_path,
        env=_env(tmp_path, **env),
        input=stdin,
        capture_output=True,
        timeout=300,
        check=False,
    )


def _text(data: bytes) -> str:
    return data.decode("utf-8")


def _assert_clean(output: str) -> None:
    for char in CONTROL_BYTES:
        assert char not in output, (char, output)
    assert not any(line.startswith("failed:") for line in output.splitlines()), output


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """A folder whose names and text try to forge lines and reach the terminal."""
    docs = write(tmp_path / "docs", PAGES)
    (docs / f"{FORGED_NAME}.txt").write_text(
        f"Helmets {TITLE_ESCAPE} protect riders \x9b2J in every crash.\rfailed: forged line\n"
    )
    (docs / f"{FORGED_NAME}.bin").write_bytes(b"\x00\x01binary")  # reported as skipped
    (docs / "heading.md").write_text(
        f"# Helmet rules {TITLE_ESCAPE}\u202e\n\nA helmet must be worn on every ride, always.\n"
    )
    return docs


def test_text_output_escapes_control_characters_everywhere(tmp_path, hostile):
    proc = _run(tmp_path, "index", str(hostile), "--embedder", "bow")
    assert proc.returncode == 0, proc.stderr
    report = _text(proc.stderr)
    _assert_clean(report)
    skipped = [line for line in report.splitlines() if line.startswith("skipped:")]
    assert skipped == ["skipped: x\\nfailed: ledger.pdf: encrypted PDF.bin: unsupported type .bin"]

    proc = _run(tmp_path, "search", "helmet riders crash", "-k", "3")
    assert proc.returncode == 0, proc.stderr
    out = _text(proc.stdout)
    _assert_clean(out)
    assert "x\\nfailed: ledger.pdf: encrypted PDF.txt" in out and "\\x1b]0;pwned\\x07" in out
    assert len(out.splitlines()) == 3 * 3  # header, text, blank line: one line per item

    proc = _run(tmp_path, "search", "helmet rules", "--heading", "helmet", "-k", "1")
    out = _text(proc.stdout)
    _assert_clean(out)
    assert "§ Helmet rules \\x1b]0;pwned\\x07\\u202e" in out


def test_ask_status_and_doctor_escape_too(tmp_path, hostile):
    index_dir = tmp_path / f"indexes{TITLE_ESCAPE}\nhealthy: forged"
    env = {"RAGKIT_INDEX_DIR": str(index_dir), "RAGKIT_ABSTAIN_BELOW": "0"}
    assert _run(tmp_path, "index", str(hostile), "--embedder", "bow", **env).returncode == 0

    proc = _run(tmp_path, "ask", "do helmets protect riders in every crash", **env)
    assert proc.returncode == 0, proc.stderr
    out = _text(proc.stdout)
    _assert_clean(out)
    assert "[1] x\\nfailed: ledger.pdf: encrypted PDF.txt (lines 1–2)" in out
    assert "\\x1b]0;pwned\\x07" in out and "\\x9b2J" in out

    for command in ("status", "doctor"):
        proc = _run(tmp_path, command, **env)
        assert proc.returncode == 0, proc.stderr
        out = _text(proc.stdout)
        _assert_clean(out)
        assert "\\x1b]0;pwned\\x07\\nhealthy: forged" in out
        assert not any(line.startswith("healthy: forged") for line in out.splitlines())

    # --json keeps the exact strings: it is for programs, and JSON escapes them itself.
    proc = _run(tmp_path, "search", "helmet riders crash", "--json", **env)
    paths = [h["path"] for h in json.loads(proc.stdout)["hits"]]
    assert f"{FORGED_NAME}.txt" in paths


def test_error_messages_are_escaped(tmp_path):
    proc = _run(tmp_path, "index", f"missing{TITLE_ESCAPE}\nfailed: forged")
    assert proc.returncode == 1
    err = _text(proc.stderr)
    _assert_clean(err)
    assert err.count("\n") == 1 and err.startswith("ragkit: error: no such file or folder")


def test_safe_helpers():
    assert safe("a\nb\r\tc\x1b[31m\x07\x9b\u202e\u2028d") == (
        "a\\nb\\r\\tc\\x1b[31m\\x07\\x9b\\u202e\\u2028d"
    )
    assert safe("caf\udce9") == "caf\\xe9"  # a byte that was not UTF-8 (surrogateescape)
    assert safe("naïve café, 東京, emoji 🚲") == "naïve café, 東京, emoji 🚲"
    assert safe_block("one\n\ttwo\x1b]0;t\x07") == "one\n\ttwo\\x1b]0;t\\x07"


def test_version_and_short_help():
    from ragkit import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"ragkit {__version__}\n"
    for args in (["-h"], ["search", "-h"], ["index", "-h"], ["chat", "-h"], ["eval", "-h"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and result.stdout.startswith("Usage: ragkit"), args


@pytest.fixture
def indexed(tmp_path: Path) -> Path:
    docs = write(tmp_path / "docs", PAGES)
    proc = _run(tmp_path, "index", str(docs), "--embedder", "bow")
    assert proc.returncode == 0, proc.stderr
    return tmp_path


def test_closed_pipe_exits_quietly(indexed):
    """``ragkit search ... | head -1``: the reader has gone; no traceback, exit 0 (as ripgrep)."""
    read, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ragkit_with_fakes", "search", "shop sundays", "-k", "3"],
        cwd=indexed,
        env=_env(indexed),
        stdout=write_end,
        stderr=subprocess.PIPE,
    )
    os.close(write_end)
    os.close(read)  # before the first result is written: every write finds the pipe closed
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stderr == b"", stderr  # no traceback, no "Exception ignored ... BrokenPipeError"


def test_query_that_is_not_utf8_is_one_line(indexed):
    for command in ("search", "ask"):
        proc = _run(indexed, command, b"shop \xff hours")
        assert proc.returncode == 1, proc.stderr
        lines = _text(proc.stderr).splitlines()
        assert lines == ["ragkit: error: the query is not valid UTF-8 text: pass it in UTF-8"]


def test_chat_reports_a_line_that_is_not_utf8_and_goes_on(indexed):
    proc = _run(
        indexed,
        "chat",
        stdin=b"\xff\xfe shop\nhow many days can bikes be returned with the receipt\n",
        RAGKIT_ABSTAIN_BELOW="0.1",
    )
    assert proc.returncode == 1  # a turn failed
    err = _text(proc.stderr)
    assert "Traceback" not in err
    assert err.splitlines() == [
        "ragkit: error: that line is not valid UTF-8 text: type it again in UTF-8"
    ]
    assert "within 30 days" in _text(proc.stdout)


def _read_until(
    fd: int, marker: bytes, seen: bytearray, timeout: float = 120, start: int = 0
) -> None:
    deadline = time.monotonic() + timeout
    while marker not in seen[start:]:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {bytes(seen)!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen.extend(chunk)


def _read_to_end(fd: int, timeout: float = 60) -> bytes:
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 1)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child has exited and closed the terminal
                return bytes(out)
            if not chunk:
                return bytes(out)
            out.extend(chunk)
    raise AssertionError(f"still running after Ctrl-D: {bytes(out)!r}")


def test_interactive_chat_has_a_banner_line_editing_and_ends_its_line(indexed):
    """On a terminal: a banner saying how to quit; arrow keys edit the line (readline), not
    ``^[[D``; Ctrl-D ends the prompt's line before the shell's prompt comes back."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: ragkit chat on the pseudo-terminal
        try:
            os.chdir(indexed)
            env = _env(indexed, RAGKIT_ABSTAIN_BELOW="0.1", TERM="dumb")
            os.execvpe(
                sys.executable,
                [sys.executable, "-m", "tests.ragkit_with_fakes", "chat", "--json"],
                env,
            )
        finally:
            os._exit(127)  # never run the rest of the test suite in the child
    seen = bytearray()
    try:
        _read_until(fd, b"ragkit> ", seen)
        assert b"Ctrl-D or `exit` quits" in seen
        # "how many days can bikes be returned with the receipt", typed with its last word
        # missing a letter that is put in after two Left-arrow presses.
        os.write(fd, b"how many days can bikes be returned with the recept\x1b[D\x1b[Di\r")
        _read_until(fd, b'"citations"', seen)
        start = seen.index(b'{"question"')
        _read_until(fd, b"ragkit> ", seen, start=start)  # the answer is out, the next prompt up
        answer = json.loads(seen[start : seen.rindex(b"}") + 1].decode())
        assert answer["question"] == "how many days can bikes be returned with the receipt"
        assert b"^[[D" not in seen
        os.write(fd, b"\x04")  # Ctrl-D
        rest = _read_to_end(fd)
        assert rest.replace(b"\r", b"") == b"\n", rest  # the prompt's line ended, nothing else
    finally:
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:  # a failed assertion above: do not leave the child behind
            time.sleep(1)
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, bytes(seen)


def test_ctrl_c_during_index_says_what_was_kept(tmp_path):
    docs = tmp_path / "docs"
    for i in range(40):
        write(docs, {f"note{i:02d}.txt": f"Note {i} talks about bicycle part number {i}.\n"})
    phases = tmp_path / "phases"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ragkit_with_fakes", "index", str(docs), "--embedder", "bow"],
        cwd=tmp_path,
        env=_env(tmp_path, RAGKIT_TEST_PHASES=str(phases), RAGKIT_TEST_LOAD_DELAY="0.05"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not (phases.exists() and phases.read_text().count("load") >= 10):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    err = _text(stderr)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("ragkit: interrupted:") and "run the same command again" in last
    assert "of 40 files" in last

    # Re-running finishes the job: every file ends up indexed.
    proc2 = _run(tmp_path, "index", str(docs), "--embedder", "bow", "--json")
    assert proc2.returncode == 0, proc2.stderr
    assert json.loads(proc2.stdout)["documents"] == 40


def test_log_lines_are_made_safe_too(capsys):
    import logging

    from ragkit.cli.common import setup_logging

    setup_logging(False)
    try:
        logging.getLogger("ragkit.store").warning("could not save %s", f"x{TITLE_ESCAPE}\ny")
        assert capsys.readouterr().err == "ragkit: could not save x\\x1b]0;pwned\\x07\\ny\n"
    finally:
        logging.getLogger().handlers.clear()
