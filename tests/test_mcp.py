"""``ragkit mcp``: the SDK's own client, in process and over stdio, against ``ragkit search --json``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("mcp")

from mcp.client import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402

from ragkit.config import Settings  # noqa: E402
from ragkit.server.backend import Backend  # noqa: E402
from ragkit.server.mcp import build_server  # noqa: E402
from tests.serving import clean_env, ragkit_command  # noqa: E402

QUERIES = ["how long is the warranty on e-bike batteries", "chain lubrication", "opening hours"]


def _cli_search(demo: dict[str, Any], query: str, *extra: str) -> dict[str, Any]:
    proc = subprocess.run(
        ragkit_command(
            "search", query, "--json", "--index", demo["index"], "--index-dir",
            demo["index_dir"], *extra,
        ),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def _server(demo: dict[str, Any], **overrides: Any) -> Any:
    settings = Settings.load(
        environ={}, index=demo["index"], index_dir=demo["index_dir"], llm=False, **overrides
    )
    return build_server(Backend(settings))


def _call(server: Any, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    async def run() -> list[Any]:
        async with Client(server) as client:
            return [await client.call_tool(name, args) for name, args in calls]

    return anyio.run(run)


def test_tools_are_read_only_and_say_what_the_index_holds(demo_index):
    server = _server(demo_index)

    async def run() -> Any:
        async with Client(server) as client:
            return await client.list_tools()

    tools = {t.name: t for t in anyio.run(run).tools}
    assert set(tools) == {"search", "ask", "read"}
    for tool in tools.values():
        a = tool.annotations
        assert a is not None and a.read_only_hint is True and a.destructive_hint is False
        assert str(demo_index["source"]) in (tool.description or "")
        assert "14 documents" in (tool.description or "")
    schema = tools["search"].input_schema["properties"]
    assert {"query", "k", "mode", "path", "file_type", "heading"} <= set(schema)


def test_search_in_process_matches_the_cli_json(demo_index):
    server = _server(demo_index)
    results = _call(server, [("search", {"query": q, "k": 4}) for q in QUERIES])
    for query, result in zip(QUERIES, results, strict=True):
        assert not result.is_error
        expected = _cli_search(demo_index, query, "-k", "4")
        assert result.structured_content == expected
        hit = result.structured_content["hits"][0]
        assert {"path", "page", "start_line", "end_line", "heading", "score", "chunk_id"} <= set(
            hit
        )


def test_filters_and_mode_reach_the_search(demo_index):
    server = _server(demo_index)
    (result,) = _call(
        server, [("search", {"query": "warranty", "mode": "keyword", "path": "policies/*"})]
    )
    expected = _cli_search(demo_index, "warranty", "--mode", "keyword", "--path", "policies/*")
    assert result.structured_content == expected
    assert expected["hits"] and all(h["path"].startswith("policies/") for h in expected["hits"])


def test_read_gives_the_cited_lines_from_the_index(demo_index):
    server = _server(demo_index)
    (found,) = _call(server, [("search", {"query": "tire pressure for road bikes", "k": 5})])
    hits = found.structured_content["hits"]
    calls = [
        (
            "read",
            {
                "path": h["path"],
                "start_line": h["start_line"],
                "end_line": h["end_line"],
                **({"page": h["page"]} if h["page"] is not None else {}),
            },
        )
        for h in hits
    ]
    for hit, result in zip(hits, _call(server, calls), strict=True):
        assert not result.is_error, result.content
        passage = result.structured_content
        assert (passage["start_line"], passage["end_line"]) == (hit["start_line"], hit["end_line"])
        # Whole lines: the chunk's text lies within them.
        assert " ".join(hit["text"].split()) in " ".join(passage["text"].split())


def test_read_of_a_whole_document_matches_the_file(demo_index):
    server = _server(demo_index)
    path = "policies/returns-and-exchanges.md"
    (result,) = _call(server, [("read", {"path": path})])
    passage = result.structured_content
    assert passage["whole"] is True and passage["start_line"] == 1
    original = (Path(demo_index["source"]) / path).read_text().splitlines()
    got = passage["text"].split("\n")
    assert [line.rstrip() for line in got] == [line.rstrip() for line in original[: len(got)]]
    assert len(got) >= len(original) - 1  # at most the trailing blank line is not indexed


def test_read_refuses_anything_not_in_the_index(demo_index):
    server = _server(demo_index)
    outside = ["secret.txt", "../corpus/secret.txt", "/etc/passwd", "../../pyproject.toml"]
    results = _call(server, [("read", {"path": p}) for p in outside])
    for result in results:
        assert result.is_error
        text = result.content[0].text
        assert "no document" in text and "4711" not in text


def test_errors_are_tool_errors_and_the_server_keeps_serving(demo_index):
    server = _server(demo_index, max_k=10)
    results = _call(
        server,
        [
            ("search", {"query": "   "}),
            ("search", {"query": "brakes", "k": 11}),
            ("search", {"query": "brakes", "modified_after": "not a date"}),
            ("read", {"path": "warranty-handbook.pdf", "start_line": 1, "end_line": 3}),
            ("search", {"query": "brakes", "k": 2}),
        ],
    )
    messages = [r.content[0].text for r in results[:4]]
    assert all(r.is_error for r in results[:4])
    assert "query is empty" in messages[0]
    assert "at most 10 (max_k)" in messages[1]
    assert "not a date" in messages[2]
    assert "give page" in messages[3]
    assert all("\n" not in m and "Traceback" not in m for m in messages)
    assert not results[4].is_error and len(results[4].structured_content["hits"]) == 2


def test_ask_returns_citations_with_locations_and_abstains(demo_index):
    server = _server(demo_index)
    answered, abstained = _call(
        server,
        [
            ("ask", {"question": "How long is the warranty on an e-bike battery?"}),
            ("ask", {"question": "quantum chromodynamics on a lattice"}),
        ],
    )
    data = answered.structured_content
    assert data["abstained"] is False and data["complete"] is True and data["citations"]
    assert all(c["path"] and c["start_line"] <= c["end_line"] for c in data["citations"])
    assert abstained.structured_content["abstained"] is True
    assert abstained.structured_content["citations"] == []


def test_stdio_subprocess_answers_like_the_cli(demo_index):
    params = StdioServerParameters(
        command=ragkit_command()[0],
        args=[
            *ragkit_command()[1:],
            "mcp",
            "--index",
            demo_index["index"],
            "--index-dir",
            demo_index["index_dir"],
        ],
        env=clean_env(),
    )

    async def run() -> list[Any]:
        async with Client(params) as client:
            tools = await client.list_tools()
            assert {t.name for t in tools.tools} == {"search", "ask", "read"}
            out = [await client.call_tool("search", {"query": q, "k": 3}) for q in QUERIES]
            out.append(await client.call_tool("read", {"path": "nope.md"}))
            out.append(await client.call_tool("read", {"path": "about/history.md"}))
            return out

    results = anyio.run(run)
    for query, result in zip(QUERIES, results, strict=False):
        assert result.structured_content == _cli_search(demo_index, query, "-k", "3")
    assert results[3].is_error and "no document 'nope.md'" in results[3].content[0].text
    assert results[4].structured_content["path"] == "about/history.md"


def test_http_transport_refuses_a_public_bind_without_a_token(demo_index):
    proc = subprocess.run(
        ragkit_command(
            "mcp", "--http", "--host", "0.0.0.0", "--index", demo_index["index"],
            "--index-dir", demo_index["index_dir"],
        ),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "without a token" in proc.stderr and "Traceback" not in proc.stderr


def test_streamable_http_with_a_token(demo_index):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    from tests.serving import free_port, ragkit_process

    port = free_port()
    args = ["mcp", "--http", "--port", str(port), "--token", "s3cret"]
    args += ["--index", demo_index["index"], "--index-dir", demo_index["index_dir"]]
    with ragkit_process(*args, port=port):
        url = f"http://127.0.0.1:{port}/mcp"
        refused = httpx2.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert refused.status_code == 401

        async def run() -> Any:
            headers = {"Authorization": "Bearer s3cret"}
            async with httpx2.AsyncClient(headers=headers, timeout=120) as http:
                async with Client(streamable_http_client(url, http_client=http)) as client:
                    return await client.call_tool("search", {"query": QUERIES[0], "k": 3})

        result = anyio.run(run)
    assert result.structured_content == _cli_search(demo_index, QUERIES[0], "-k", "3")
