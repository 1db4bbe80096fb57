"""Shared pytest fixtures for ragkit's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backends import backend, pg_server, pg_url  # noqa: F401  (fixtures for every test)
from tests.openai_server import OpenAITestServer


@pytest.fixture
def openai_server() -> Iterator[OpenAITestServer]:
    """A started OpenAI-compatible server on 127.0.0.1 (see tests/openai_server.py), closed after."""
    server = OpenAITestServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def demo_index(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The demo corpus copied and indexed once with the local model (tests/serving.py)."""
    from tests.serving import build_demo

    return build_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def pending_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int | None, list[int]]]:
    """Every ``Store.pending`` read of an index folder, as (limit, ids returned), in order."""
    from ragkit.store import Store

    reads: list[tuple[int | None, list[int]]] = []
    pending = Store.pending

    def spy(self: Store, after: int = 0, limit: int | None = None) -> list[tuple[int, str, int]]:
        page = pending(self, after=after, limit=limit)
        reads.append((limit, [i for i, _, _ in page]))
        return page

    monkeypatch.setattr(Store, "pending", spy)
    return reads
