"""The HTTP server's connection handling: a deadline for request headers.

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
from typing import Any


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
