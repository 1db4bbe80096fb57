"""The page at ``/`` in a real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from ragkit.config import Settings  # noqa: E402
from ragkit.server.backend import Backend  # noqa: E402
from ragkit.server.http import create_app  # noqa: E402
from tests.openai_server import OpenAITestServer  # noqa: E402
from tests.serving import live_server  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
QUESTION = "How long is the warranty on an e-bike battery?"

# Records every text the answer box shows, to tell a streamed answer from one set at the end.
WATCH = """() => {
  window.__seen = [];
  new MutationObserver(() => window.__seen.push(document.getElementById('answer').textContent))
    .observe(document.getElementById('answer'), {childList: true, characterData: true, subtree: true});
}"""


@pytest.fixture(scope="module")
def site(demo_index: dict[str, Any]) -> Any:
    if not CHROMIUM.exists():
        pytest.skip("no browser: apt-get install -y chromium")
    llm = OpenAITestServer().start()
    llm.config.stream_delay = 0.03
    settings = Settings.load(
        environ={},
        index=demo_index["index"],
        index_dir=demo_index["index_dir"],
        llm=True,
        openai_base_url=llm.base_url,
        openai_api_key="test",
    )
    try:
        with live_server(create_app(Backend(settings))) as base:
            yield base
    finally:
        llm.close()


@pytest.fixture(scope="module")
def browser(site: str) -> Any:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _ask(page: Any, question: str) -> None:
    page.fill("#question", question)
    page.press("#question", "Enter")  # the keyboard submits the form
    page.wait_for_function("!document.getElementById('ask-button').disabled", timeout=120_000)


def test_ask_stream_and_open_a_citation(site, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(site + "/")
    page.wait_for_function("document.getElementById('status').textContent.includes('documents')")
    assert "14 documents" in page.text_content("#status")
    page.evaluate(WATCH)
    _ask(page, QUESTION)
    assert page.is_hidden("#error"), page.text_content("#error")

    seen = page.evaluate("window.__seen")
    partial = {s for s in seen if s not in ("", "…")}
    assert len(partial) > 3  # the answer grew piece by piece
    answer = page.text_content("#answer") or ""
    assert "[1]" in answer and page.is_hidden("#abstained")
    assert page.locator("#results li").count() == 5

    # The first citation, opened with the keyboard, shows its lines highlighted.
    where = page.text_content("#citations li a") or ""
    m = re.match(r"(.+) \((?:page (\d+), )?lines? (\d+)(?:–(\d+))?\)$", where)
    assert m, where
    path, pg, start = m[1], m[2], int(m[3])
    end = int(m[4] or start)
    page.focus("#answer a.cite >> nth=0")
    page.keyboard.press("Enter")
    page.wait_for_selector("#document .line.hit")
    hit_lines = page.eval_on_selector_all(
        "#document .line.hit",
        "ls => ls.map(l => [Number(l.dataset.line), l.children[1].textContent])",
    )
    params: dict[str, Any] = {"start_line": start, "end_line": end}
    if pg:
        params["page"] = int(pg)
    expected = httpx.get(f"{site}/v1/documents/{path}", params=params).json()["text"]
    assert [n for n, _ in hit_lines] == list(range(start, end + 1))
    assert "\n".join(t for _, t in hit_lines) == expected
    assert page.text_content("#document-where") == where
    page.screenshot(path=str(tmp_path / "web.png"), full_page=True)
    assert (tmp_path / "web.png").stat().st_size > 10_000


def test_not_in_the_sources_is_shown_as_such(site, browser):
    page = browser.new_page()
    page.goto(site + "/")
    _ask(page, "quantum chromodynamics on a lattice")
    assert page.is_visible("#abstained")
    assert "Not in the sources" in (page.text_content("#abstained") or "")
    assert page.locator("#citations li").count() == 0


def test_phone_width_has_no_sideways_scrolling(site, browser, tmp_path):
    page = browser.new_page(viewport={"width": 375, "height": 740})
    page.goto(site + "/")
    _ask(page, QUESTION)
    page.click("#citations li a >> nth=0")
    page.wait_for_selector("#document .line.hit")
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1]
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)


def test_document_and_answer_text_is_never_parsed_as_html(site, browser):
    page = browser.new_page()
    evil = '<img src=x onerror="window.__pwned=1"><b>bold</b>'
    passage = {
        "path": "evil.md", "kind": "markdown", "page": None, "start_line": 1, "end_line": 2,
        "whole": True, "text": evil + "\nsecond",
        "sections": [{"page": None, "start_line": 1, "end_line": 2, "text": evil + "\nsecond"}],
    }  # fmt: skip
    answer = {
        "question": "q", "answer": evil + " [1]", "mode": "llm", "model": "m",
        "abstained": False, "finish_reason": "stop", "complete": True, "usage": {},
        "citations": [{"n": 1, "path": "evil.md", "page": None, "start_line": 1, "end_line": 1,
                       "quote": evil}],
    }  # fmt: skip
    events = "event: text\ndata: " + json.dumps({"text": evil}) + "\n\n"
    events += "event: answer\ndata: " + json.dumps(answer) + "\n\n"
    # Only these two routes are replaced, to put hostile text where document text goes.
    page.route("**/v1/documents/**", lambda r: r.fulfill(json=passage))
    page.route(
        "**/v1/ask", lambda r: r.fulfill(body=events, headers={"content-type": "text/event-stream"})
    )
    page.goto(site + "/")
    _ask(page, "anything")
    page.click("#answer a.cite")
    page.wait_for_selector("#document .line.hit")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#answer img, #answer b, #document img, #document b").count() == 0
    assert page.locator("#citations img").count() == 0
    assert evil in (page.text_content("#document .line.hit .t") or "")
    assert (page.text_content("#answer") or "").startswith(evil)
