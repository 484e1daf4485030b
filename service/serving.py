"""The HTTP server: ``run_server`` (uvicorn configured from the settings), and its connection
handling: a deadline for request headers.

uvicorn reads a request's headers for as long as the client takes to send them, so a client
that opens connections and sends a header line now and then (slowloris) holds each of them
for ever. ``header_deadline_protocol`` wraps uvicorn's HTTP protocol class: from the moment a
connection has no request in progress and receives data (or is opened), its next request's
headers must be complete within ``timeout_s``, else the connection is closed. Requests in
progress, their bodies (``service.bodies`` and ``service.middleware`` bound those) and
connections upgraded to WebSockets are not affected.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.settings import Settings


def _base_protocol() -> type:
    """uvicorn's HTTP protocol that ``http="auto"`` would pick (httptools when installed)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def header_deadline_protocol(timeout_s: float) -> type:
    """A subclass of uvicorn's HTTP protocol that closes connections whose request headers
    take longer than ``timeout_s`` seconds (pass it as ``uvicorn.Config(http=...)``)."""
    base: Any = _base_protocol()

    class HeaderDeadlineProtocol(base):  # type: ignore[misc, valid-type]
        _deadline: asyncio.TimerHandle | None = None
        _armed_cycle: object = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and not self._request_active():
                self._arm()
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _request_active(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is not None and not cycle.response_complete

        def _arm(self) -> None:
            self._armed_cycle = getattr(self, "cycle", None)
            self._deadline = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            transport = self.transport
            if transport.is_closing() or transport.get_protocol() is not self:
                return  # closed already, or upgraded to a WebSocket
            if getattr(self, "cycle", None) is not self._armed_cycle:
                return  # a request's headers arrived in time (the next data re-arms)
            if self._request_active():
                return
            transport.close()

    return HeaderDeadlineProtocol


def run_server(settings: Settings) -> None:
    """Serve ``create_app(settings)`` with uvicorn until SIGTERM / SIGINT.

    uvicorn is configured from the settings: WebSocket messages are bounded by
    ``max_frame_bytes`` (plus 64 KiB so that a frame just over the limit still gets a
    ``frame_too_large`` reply instead of close 1009), in-flight requests get
    ``shutdown_grace_s`` to finish on SIGTERM, request headers must arrive within
    ``header_timeout_s`` and at most ``max_connections`` connections are served at once. On
    SIGTERM / SIGINT live WebSockets are first closed with 1012 and a reconnect hint.
    """
    import uvicorn

    from service.api.ws import close_all_for_restart
    from service.logs import install_redaction
    from service.main import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ws_max_size=settings.max_frame_bytes + 64 * 1024,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        http=header_deadline_protocol(settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
    )
    # uvicorn has configured its loggers in Config(): secrets in URLs never reach a log line
    install_redaction("uvicorn", "uvicorn.error", "uvicorn.access")

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            sockets = app.state.websockets
            if sockets and not self.should_exit:
                loop = asyncio.get_event_loop()
                loop.call_soon_threadsafe(lambda: loop.create_task(close_all_for_restart(sockets)))
            super().handle_exit(sig, frame)

    GracefulServer(config).run()
