"""Helpers for the server tests: a copy of the demo corpus indexed once, and a live uvicorn."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_demo(base: Path) -> dict[str, Any]:
    """Copy corpus/ under ``base`` and index it with the local model; the settings that name it."""
    import ragkit

    source = base / "corpus"
    shutil.copytree(ROOT / "corpus", source)
    settings = {"index": "demo", "index_dir": str(base / "indexes")}
    report = ragkit.index(source, embedder="local", **settings)
    assert report.ok and report.documents >= 10
    # On disk in the indexed folder, but not in the index: servers must never show it.
    (source / "secret.txt").write_text("the vault code is 4711\n")
    return {**settings, "source": source}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without OpenAI or ragkit settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RAGKIT_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def ragkit_command(*args: str) -> list[str]:
    """The argv that runs the ragkit CLI in a subprocess."""
    return [sys.executable, "-m", "ragkit", *args]


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn on a free 127.0.0.1 port in a thread; yields its URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def ragkit_process(*args: str, port: int, env: dict[str, str] | None = None) -> Iterator[Any]:
    """``ragkit ARGS`` as a subprocess, once something listens on ``port``; stopped after."""
    import subprocess

    proc = subprocess.Popen(
        ragkit_command(*args),
        env=env or clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"ragkit {args[0]} exited: {proc.stderr.read() if proc.stderr else ''}"
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ragkit {args[0]} did not listen on {port}") from None
                time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
