"""``ragkit serve`` over real HTTP: a real uvicorn on 127.0.0.1, the real httpx client."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2 as httpx
import pytest

pytest.importorskip("fastapi")

from ragkit.config import Settings  # noqa: E402
from ragkit.server.backend import Backend  # noqa: E402
from ragkit.server.http import create_app  # noqa: E402
from tests.openai_server import OpenAITestServer  # noqa: E402
from tests.serving import (  # noqa: E402
    clean_env,
    free_port,
    live_server,
    ragkit_command,
    ragkit_process,
)

QUESTION = "How long is the warranty on an e-bike battery?"


def _app(demo: dict[str, Any], **overrides: Any) -> Any:
    settings = Settings.load(
        environ={}, index=demo["index"], index_dir=demo["index_dir"], **overrides
    )
    return create_app(Backend(settings))


@pytest.fixture(scope="module")
def url(demo_index: dict[str, Any]) -> Any:
    with live_server(_app(demo_index, llm=False, max_k=20)) as base:
        yield base


def _cli(demo: dict[str, Any], *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        ragkit_command(*args, "--json", "--index", demo["index"], "--index-dir", demo["index_dir"]),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode in (0, 2), proc.stderr
    return dict(json.loads(proc.stdout))


def _events(body: str) -> list[tuple[str, Any]]:
    """Parse an SSE body strictly: every event is 'event: X' then one 'data: JSON' line."""
    assert body.endswith("\n\n")
    events = []
    for block in body[:-2].split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 2, block
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        events.append((lines[0][7:], json.loads(lines[1][6:])))
    return events


def test_search_status_and_ask_match_the_cli(url, demo_index):
    body = {"query": "chain lubrication", "k": 3, "mode": "hybrid"}
    got = httpx.post(f"{url}/v1/search", json=body, timeout=120)
    assert got.status_code == 200
    assert got.json() == _cli(demo_index, "search", "chain lubrication", "-k", "3")

    status = httpx.get(f"{url}/v1/status", timeout=60).json()
    expected = _cli(demo_index, "status")
    assert status["documents"] == expected["documents"] == 14
    assert status["source"] == str(demo_index["source"])

    answer = httpx.post(f"{url}/v1/ask", json={"question": QUESTION}, timeout=120).json()
    assert answer == _cli(demo_index, "ask", QUESTION, "--extractive")
    assert answer["citations"] and answer["abstained"] is False
    assert httpx.get(f"{url}/healthz").json() == {"ok": True}
    assert httpx.get(f"{url}/docs").status_code == 200
    assert "/v1/search" in httpx.get(f"{url}/openapi.json").json()["paths"]


def test_32_concurrent_requests_are_all_answered(url):
    queries = [f"{w} {i}" for i, w in enumerate(["warranty", "brakes", "rental", "hours"] * 8)]
    with httpx.Client(timeout=300) as client:
        expected = {
            q: client.post(f"{url}/v1/search", json={"query": q, "k": 3}).json() for q in queries
        }
        with ThreadPoolExecutor(32) as pool:
            replies = list(
                pool.map(
                    lambda q: client.post(f"{url}/v1/search", json={"query": q, "k": 3}), queries
                )
            )
    assert [r.status_code for r in replies] == [200] * 32
    for q, r in zip(queries, replies, strict=True):
        assert r.json() == expected[q]


def test_ask_streams_well_formed_server_sent_events(demo_index):
    llm = OpenAITestServer().start()
    llm.config.stream_delay = 0.01
    try:
        app = _app(demo_index, llm=True, openai_base_url=llm.base_url, openai_api_key="test")
        with live_server(app) as base:
            with httpx.stream(
                "POST", f"{base}/v1/ask", json={"question": QUESTION, "stream": True}, timeout=120
            ) as reply:
                assert reply.status_code == 200
                assert reply.headers["content-type"].startswith("text/event-stream")
                chunks = list(reply.iter_text())
    finally:
        llm.close()
    events = _events("".join(chunks))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "answer" and set(kinds[:-1]) == {"text"} and len(kinds) > 3
    assert len(chunks) > 1  # the text arrived in pieces, not as one body at the end
    streamed = "".join(d["text"] for k, d in events if k == "text")
    answer = events[-1][1]
    assert answer["mode"] == "llm" and answer["citations"] and not answer["abstained"]
    assert answer["answer"].strip() == streamed.strip()
    assert all(f"[{c['n']}]" in streamed for c in answer["citations"])


def test_a_failed_stream_ends_with_an_error_event(demo_index):
    app = _app(demo_index, llm=True, openai_base_url="http://127.0.0.1:9/v1", openai_api_key="x")
    # Nothing listens on port 9: the chat model fails before writing anything.
    with live_server(app) as base:
        reply = httpx.post(
            f"{base}/v1/ask", json={"question": QUESTION, "stream": True}, timeout=120
        )
    events = _events(reply.text)
    assert [k for k, _ in events] == ["error"]
    assert "\n" not in events[0][1]["error"] and events[0][1]["error"]


def test_documents_spans_and_refusals(url):
    span = httpx.get(
        f"{url}/v1/documents/warranty-handbook.pdf", params={"page": 3, "start_line": 2}
    )
    assert span.status_code == 200
    data = span.json()
    assert data["page"] == 3 and data["start_line"] == 2
    assert data["text"].startswith("Claims must be made within 30 days")
    whole = httpx.get(f"{url}/v1/documents/about/history.md").json()
    assert whole["whole"] is True and whole["start_line"] == 1 and whole["end_line"] > 30

    for path in [
        "secret.txt",
        "..%2F..%2Fpyproject.toml",
        "%2Fetc%2Fpasswd",
        "about/../secret.txt",
    ]:
        reply = httpx.get(f"{url}/v1/documents/{path}")
        assert reply.status_code == 404, path
        assert "no document" in reply.json()["error"] and "4711" not in reply.text
    bad = httpx.get(f"{url}/v1/documents/about/history.md", params={"start_line": 900})
    assert bad.status_code == 400 and "hold no indexed text" in bad.json()["error"]


def test_limits_and_bad_requests(url):
    too_many = httpx.post(f"{url}/v1/search", json={"query": "x", "k": 21})
    assert too_many.status_code == 400 and "at most 20 (max_k)" in too_many.json()["error"]
    huge = httpx.post(f"{url}/v1/search", json={"query": "x" * 70_000})
    assert huge.status_code == 413 and "max_request_bytes" in huge.json()["error"]
    unknown = httpx.post(f"{url}/v1/search", json={"query": "x", "index_dir": "/"})
    assert unknown.status_code == 422
    empty = httpx.post(f"{url}/v1/ask", json={"question": "  ", "stream": True})
    assert empty.status_code == 400 and "query is empty" in empty.json()["error"]
    bad_date = httpx.post(f"{url}/v1/search", json={"query": "x", "modified_after": "soon"})
    assert bad_date.status_code == 400 and "soon" in bad_date.json()["error"]


def test_cors_is_off_unless_asked_for(url, demo_index):
    preflight = {
        "Origin": "https://example.org",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    reply = httpx.options(f"{url}/v1/search", headers=preflight)
    assert "access-control-allow-origin" not in reply.headers
    with live_server(_app(demo_index, cors_origin=("https://example.org",))) as base:
        reply = httpx.options(f"{base}/v1/search", headers=preflight)
        assert reply.headers["access-control-allow-origin"] == "https://example.org"
        other = httpx.options(f"{base}/v1/search", headers={**preflight, "Origin": "https://x.y"})
        assert "access-control-allow-origin" not in other.headers


def test_a_token_guards_the_api_but_not_the_page(demo_index):
    with live_server(_app(demo_index, token="s3cret")) as base:
        body = {"query": "brakes"}
        assert httpx.post(f"{base}/v1/search", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(f"{base}/v1/search", json=body, headers=wrong).status_code == 401
        assert httpx.get(f"{base}/v1/documents/about/history.md").status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        reply = httpx.post(f"{base}/v1/search", json=body, headers=right, timeout=120)
        assert reply.status_code == 200 and reply.json()["hits"]
        assert httpx.get(f"{base}/").status_code == 200
        assert httpx.get(f"{base}/static/app.js").status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_binding_beyond_loopback_without_a_token_is_refused(demo_index, host):
    proc = subprocess.run(
        ragkit_command(
            "serve", "--host", host, "--index", demo_index["index"],
            "--index-dir", demo_index["index_dir"],
        ),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "without a token" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ragkit_serve_end_to_end(demo_index):
    port = free_port()
    args = ["serve", "--port", str(port), "--index", demo_index["index"]]
    with ragkit_process(*args, "--index-dir", demo_index["index_dir"], port=port):
        base = f"http://127.0.0.1:{port}"
        page = httpx.get(f"{base}/", timeout=60)
        assert page.status_code == 200 and "<title>ragkit</title>" in page.text
        reply = httpx.post(f"{base}/v1/search", json={"query": "chain lubrication", "k": 3})
        assert reply.json() == _cli(demo_index, "search", "chain lubrication", "-k", "3")


def test_serve_without_an_index_says_how_to_build_one(tmp_path):
    proc = subprocess.run(
        ragkit_command("serve", "--index-dir", str(tmp_path)),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "ragkit index" in proc.stderr
    assert "Traceback" not in proc.stderr
