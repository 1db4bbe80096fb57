"""What stands in front of both HTTP servers: loopback-or-token binding, Bearer auth, body size.

Plain ASGI middleware, so ``ragkit serve`` (FastAPI) and ``ragkit mcp --http`` (the MCP SDK's
Starlette app) share it.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ragkit.errors import ConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to listen on {host} without a token: anyone who can reach it could read"
            " the index; pass --token SECRET (or set RAGKIT_TOKEN), or bind to 127.0.0.1"
        )


async def _reply(send: Send, status: int, error: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": error}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: Bearer token on every path not in ``public``; bodies up to ``max_bytes``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        max_bytes: int,
        public: Callable[[str], bool] = lambda path: False,
    ) -> None:
        self.app = app
        self.token = token
        self.max_bytes = max_bytes
        self.public = public

    def _authorized(self, scope: Scope) -> bool:
        if not self.token or self.public(scope.get("path", "")):
            return True
        if scope.get("method") == "OPTIONS":
            return True  # CORS preflight carries no credentials
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, given = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(
                    given.strip().encode(), self.token.encode()
                )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            await _reply(
                send,
                401,
                "missing or wrong token: send the header 'Authorization: Bearer TOKEN'",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        length = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if length is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            # The server checks a body against its declared length; a chunked one has none.
            await _reply(send, 411, "send the request body with a Content-Length header", [])
            return
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _reply(send, 413, self._too_large(), [])
            return
        await self.app(scope, receive, send)

    def _too_large(self) -> str:
        return f"request body over {self.max_bytes} bytes (max_request_bytes)"
