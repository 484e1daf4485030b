"""ASGI middleware bounding the JSON request bodies of the API.

Routes that take frames or videos read their bodies through ``service.bodies`` with their own
limits. Every other route (session options, ...) takes a small JSON document, which FastAPI
would otherwise buffer whole whatever its size, and wait for however long it takes to arrive.
``JsonBodyLimit`` reads such a body first through the same ``service.bodies.read_body``
(declared ``Content-Length`` over ``MAX_JSON_BODY``: 413 at once; chunked bodies stopped at
the limit; no bytes for ``idle_timeout_s``: 408), then hands the route the bytes it read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse
from starlette.requests import Request

from service.bodies import BodyLimit, read_body
from service.errors import ApiError, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_JSON_BODY = 64 * 1024
"""Largest body of a JSON route (session options are a few hundred bytes)."""


def _streams_its_body(scope: Scope) -> bool:
    """Routes that read (large) bodies themselves, with their own limits."""
    path: str = scope.get("path", "")
    return path.endswith("/frames") or path.rstrip("/") == "/v1/videos"


class JsonBodyLimit:
    """Bound the size and the idle time of the request bodies of JSON routes."""

    def __init__(self, app: ASGIApp, idle_timeout_s: float, limit: int = MAX_JSON_BODY) -> None:
        self.app = app
        self.limit = BodyLimit(limit, idle_timeout_s, "payload_too_large", "body")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _streams_its_body(scope):
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(Request(scope, receive), self.limit)
        except ApiError as exc:
            response = JSONResponse(
                error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers
            )
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body only a disconnect can come

        await self.app(scope, replay, send)
