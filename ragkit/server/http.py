"""``ragkit serve``: the index over HTTP (FastAPI + uvicorn) and the web page at ``/``.

``POST /v1/search``, ``POST /v1/ask`` (JSON, or Server-Sent Events with ``"stream": true``),
``GET /v1/documents/{path}`` (a span with ``start_line``, ``end_line``, ``page``, or the whole
indexed text), ``GET /v1/status``, ``GET /healthz``; the OpenAPI page is ``/docs``. Bodies are
the shapes of ``ragkit.shapes``, as the CLI's ``--json`` prints them. A ragkit error is
``{"error": "<one line>"}`` with 400 (404 for a document the index does not hold).

Stream events: ``text`` (``{"text": ...}``, pieces of the LLM answer as they arrive), then one
``answer`` (the answer's JSON, citations checked) or one ``error`` (``{"error": ...}``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from ragkit import __version__, shapes
from ragkit.errors import IndexNotFoundError, RagkitError
from ragkit.reading import DocumentNotFoundError
from ragkit.retriever import check_query
from ragkit.server.guard import ASGIApp, Guard

if TYPE_CHECKING:
    from ragkit.server.backend import Backend

STATIC = Path(__file__).parent / "static"
# Paths that hold no index data: the page fetches with the token, its own load cannot.
_PUBLIC = ("/", "/healthz", "/favicon.ico", "/docs", "/openapi.json")


class _Filters(BaseModel):
    """Per-request retrieval settings; absent ones are the server's."""

    model_config = ConfigDict(extra="forbid")

    k: int | None = Field(None, ge=1, description="Passages to retrieve.")
    mode: Literal["hybrid", "dense", "keyword"] | None = None
    min_score: float | None = Field(None, description="Drop passages whose cosine is below this.")
    mmr: bool | None = Field(None, description="Diversify results.")
    path: str | None = Field(None, description="Only documents whose path matches this glob.")
    file_type: str | None = Field(None, description="Only these kinds or suffixes: pdf,.md")
    modified_after: str | None = Field(None, description="ISO date.")
    modified_before: str | None = Field(None, description="ISO date.")
    heading: str | None = Field(None, description="Heading path contains this.")

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude={"query", "question", "stream"})


class SearchRequest(_Filters):
    """``POST /v1/search``."""

    query: str = Field(description="What to look for.")


class AskRequest(_Filters):
    """``POST /v1/ask``."""

    question: str = Field(description="The question to answer from the index.")
    stream: bool = Field(False, description="Send Server-Sent Events as the answer is written.")


def _error(exc: RagkitError) -> JSONResponse:
    status = 404 if isinstance(exc, DocumentNotFoundError) else 400
    if isinstance(exc, IndexNotFoundError):
        status = 503
    return JSONResponse({"error": str(exc)}, status_code=status)


def _event(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _answer_events(
    backend: Backend, question: str, overrides: dict[str, Any]
) -> AsyncIterator[str]:
    """Streamed text as the model writes it, then the checked answer (or the error)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def put(kind: str, data: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (kind, data))

    def work() -> None:
        try:
            answer = backend.ask(question, on_text=lambda t: put("text", {"text": t}), **overrides)
        except RagkitError as exc:
            put("error", {"error": str(exc)})
            return
        except BaseException:
            put("error", {"error": "internal error: see the server's log"})
            raise
        put("answer", shapes.answer_json(answer))

    done = loop.run_in_executor(None, work)  # not the Index's pool: a stream can be long
    while True:
        kind, data = await queue.get()
        yield _event(kind, data)
        if kind != "text":
            break
    await done


def create_app(backend: Backend) -> ASGIApp:
    """The ASGI app: API routes and the page, behind the token and size guard (and CORS)."""
    settings = backend.settings
    app = FastAPI(
        title="ragkit",
        version=__version__,
        description="Semantic search and cited answers over one ragkit index.",
    )

    @app.exception_handler(RagkitError)
    async def ragkit_error(request: Request, exc: RagkitError) -> JSONResponse:
        return _error(exc)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness: the server answers."""
        return {"ok": True}

    @app.get("/v1/status")
    def status() -> dict[str, Any]:
        """The index's location, embedder, contents and health (``ragkit status --json``)."""
        return shapes.status_json(backend.status())

    @app.post("/v1/search")
    async def search(body: SearchRequest) -> dict[str, Any]:
        """Ranked passages with provenance (``ragkit search --json``)."""
        # On the Index's pool: a few threads busy beat dozens contending for the cores.
        used, hits = await backend.asearch(body.query, **body.overrides())
        return shapes.search_json(body.query, used.mode, hits)

    @app.post("/v1/ask", response_model=None)
    async def ask(body: AskRequest) -> dict[str, Any] | StreamingResponse:
        """An answer with checked citations (``ragkit ask --json``), or its event stream."""
        overrides = body.overrides()
        check_query(body.question)
        backend.request_settings(overrides)  # refuse bad parameters before streaming starts
        if body.stream:
            return StreamingResponse(
                _answer_events(backend, body.question, overrides),
                media_type="text/event-stream",
                headers={"cache-control": "no-store", "x-accel-buffering": "no"},
            )
        return shapes.answer_json(await backend.aask(body.question, **overrides))

    @app.get("/v1/documents/{path:path}")
    def document(
        path: str,
        start_line: int | None = Query(None, ge=1),
        end_line: int | None = Query(None, ge=1),
        page: int | None = Query(None, ge=1),
    ) -> dict[str, Any]:
        """A span of an indexed document, or all of it, from the index alone."""
        passage = backend.read(path, start_line=start_line, end_line=end_line, page=page)
        return shapes.passage_json(passage)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    guarded: ASGIApp = Guard(
        app,
        token=settings.token,
        max_bytes=settings.max_request_bytes,
        public=lambda p: p in _PUBLIC or p.startswith("/static/"),
    )
    if settings.cors_origin:
        guarded = CORSMiddleware(
            guarded,
            allow_origins=list(settings.cors_origin),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )
    return guarded
