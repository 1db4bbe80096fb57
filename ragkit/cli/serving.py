"""``ragkit mcp`` and ``ragkit serve``: the index for agents (MCP), apps and browsers (HTTP)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from ragkit.cli.common import (
    ChatModelName,
    IndexDir,
    IndexName,
    Llm,
    Mode,
    TopK,
    Verbose,
    app,
    err,
    setup_logging,
)
from ragkit.errors import ConfigError

if TYPE_CHECKING:
    from ragkit.config import Settings

Host = Annotated[
    str | None,
    typer.Option(
        envvar="RAGKIT_HOST",
        help="Address to listen on [default: 127.0.0.1]; any other needs --token.",
    ),
]
Port = Annotated[
    int | None, typer.Option(envvar="RAGKIT_PORT", help="Port to listen on [default: 8000].")
]
Token = Annotated[
    str | None,
    typer.Option(
        envvar="RAGKIT_TOKEN",
        help="Require 'Authorization: Bearer TOKEN' on every request.",
        show_envvar=True,
    ),
]
MaxK = Annotated[
    int | None,
    typer.Option(envvar="RAGKIT_MAX_K", help="Most passages a request may ask for [default: 50]."),
]
MaxRequestBytes = Annotated[
    int | None,
    typer.Option(
        envvar="RAGKIT_MAX_REQUEST_BYTES", help="Largest request body accepted [default: 65536]."
    ),
]


def _settings(**values: Any) -> Settings:
    from ragkit.config import Settings

    return Settings.load(**values)


def _need_extra(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"this command needs the {module!r} package: pip install 'ragkit[serve]'")


def _listen(asgi: Any, settings: Settings, what: str) -> None:
    """Serve ``asgi`` with uvicorn on the settings' host and port until interrupted."""
    import uvicorn

    host = settings.host
    shown = f"[{host}]" if ":" in host else host
    err(f"ragkit: {what} at http://{shown}:{settings.port}/ (Ctrl-C stops)")
    uvicorn.run(asgi, host=host, port=settings.port, log_level="warning", lifespan="auto")


@app.command()
def mcp(
    http: Annotated[
        bool,
        typer.Option("--http", help="Serve streamable HTTP at /mcp instead of stdio."),
    ] = False,
    index: IndexName = None,
    index_dir: IndexDir = None,
    k: TopK = None,
    mode: Mode = None,
    llm: Llm = None,
    chat_model: ChatModelName = None,
    host: Host = None,
    port: Port = None,
    token: Token = None,
    max_k: MaxK = None,
    max_request_bytes: MaxRequestBytes = None,
    verbose: Verbose = False,
) -> None:
    """Serve the index to MCP clients (tools: search, ask, read), over stdio by default."""
    _need_extra("mcp")
    setup_logging(verbose)
    from ragkit.server.backend import Backend
    from ragkit.server.mcp import build_server

    settings = _settings(
        index=index, index_dir=index_dir, k=k, mode=mode, llm=llm, chat_model=chat_model,
        host=host, port=port, token=token, max_k=max_k, max_request_bytes=max_request_bytes,
    )  # fmt: skip
    if http:
        from ragkit.server.guard import check_bind

        check_bind(settings.host, settings.token)
    backend = Backend(settings)
    server = build_server(backend)
    try:
        if not http:
            server.run("stdio")
            return
        from ragkit.server.guard import Guard

        asgi = Guard(
            server.streamable_http_app(host=settings.host),
            token=settings.token,
            max_bytes=settings.max_request_bytes,
        )
        _listen(asgi, settings, f"MCP for index {settings.index} (endpoint /mcp)")
    finally:
        backend.close()


@app.command()
def serve(
    index: IndexName = None,
    index_dir: IndexDir = None,
    k: TopK = None,
    mode: Mode = None,
    llm: Llm = None,
    chat_model: ChatModelName = None,
    host: Host = None,
    port: Port = None,
    token: Token = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            metavar="ORIGIN",
            help="Let pages from this origin call the API (repeatable; RAGKIT_CORS_ORIGIN"
            " takes a JSON list). Off by default.",
        ),
    ] = None,
    max_k: MaxK = None,
    max_request_bytes: MaxRequestBytes = None,
    verbose: Verbose = False,
) -> None:
    """Serve the HTTP API (/v1/search, /v1/ask, /v1/documents, /v1/status; docs at /docs) and
    the web page at /."""
    _need_extra("fastapi")
    setup_logging(verbose)
    from ragkit.server.backend import Backend
    from ragkit.server.guard import check_bind
    from ragkit.server.http import create_app

    settings = _settings(
        index=index, index_dir=index_dir, k=k, mode=mode, llm=llm, chat_model=chat_model,
        host=host, port=port, token=token, max_k=max_k, max_request_bytes=max_request_bytes,
        cors_origin=tuple(cors_origin) if cors_origin else None,
    )  # fmt: skip
    check_bind(settings.host, settings.token)
    backend = Backend(settings)
    try:
        _listen(create_app(backend), settings, f"index {settings.index}")
    finally:
        backend.close()
