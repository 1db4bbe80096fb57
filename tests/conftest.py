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
