"""``WS /v1/sessions/{id}/stream``: live tracking over a WebSocket.

Client -> server: binary messages are frames (JPEG / PNG / WebP bytes, or raw RGB after a
``{"type": "raw", "height": H, "width": W}`` control message); text messages are JSON
controls: ``{"type": "end"}`` finishes the stream, ``{"type": "encoded"}`` switches back from
raw. Server -> client: one ``FrameResult`` JSON (``"type": "frame"``) per processed frame,
``{"type": "error", "code", "message"}`` for a frame that failed (the stream goes on), and
``{"type": "end", "frames": n, "dropped": d}`` before closing. A bad token or API key closes
with 1008. Backpressure follows the session's policy: ``block`` stops reading while the
per-session queue is full; ``drop_oldest`` discards the oldest queued frame and counts it.
A disconnect keeps the session (until its TTL) so the client can reconnect and continue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from service.auth import api_key_allowed
from service.errors import ApiError
from service.frames import decode_image, decode_raw_rgb
from service.sessions import SessionService

router = APIRouter()
_END = object()
RESTART_CODE = 1012  # "service restart": reconnect (to any replica) and continue
RESTART_REASON = "server restarting; reconnect to continue this session"


async def close_all_for_restart(open_sockets: set[WebSocket]) -> None:
    """Close every live stream with 1012 and a reconnect hint (called on SIGTERM)."""
    for ws in list(open_sockets):
        with contextlib.suppress(Exception):
            await ws.close(code=RESTART_CODE, reason=RESTART_REASON)


@dataclass
class _Queued:
    data: bytes
    raw_shape: tuple[int, int] | None
    received_at: float


async def _send_error(ws: WebSocket, exc: ApiError) -> None:
    await ws.send_json({"type": "error", "code": exc.code, "message": exc.message})


@router.websocket("/v1/sessions/{session_id}/stream")
async def stream(ws: WebSocket, session_id: str) -> None:
    """Live tracking of one session (see the module docstring for the protocol)."""
    sessions: SessionService | None = getattr(ws.app.state, "sessions", None)
    token = ws.query_params.get("token") or ws.headers.get("x-session-token")
    authorization = ws.headers.get("authorization")
    if not authorization and ws.query_params.get("api_key"):
        authorization = "Bearer " + ws.query_params["api_key"]
    if sessions is None or not api_key_allowed(authorization, ws.app.state.api_key_digests):
        await ws.close(code=1008, reason="unauthorized")
        return
    try:
        meta = await sessions.check_access(session_id, token)
    except ApiError as exc:
        await ws.close(code=1008 if exc.status in (401, 404, 409) else 1011, reason=exc.code)
        return
    await ws.accept()
    open_sockets: set[WebSocket] = ws.app.state.websockets
    open_sockets.add(ws)
    try:
        await _serve(ws, sessions, session_id, token, meta)
    finally:
        open_sockets.discard(ws)


async def _serve(
    ws: WebSocket,
    sessions: SessionService,
    session_id: str,
    token: str | None,
    meta: dict[str, Any],
) -> None:
    policy = meta.get("backpressure", "block")
    queue: asyncio.Queue[_Queued | object] = asyncio.Queue(int(meta.get("queue_size", 4)))
    counters = {"frames": 0, "dropped": 0}
    worker = asyncio.create_task(_process(ws, sessions, session_id, token, queue, counters))
    try:
        await _read(ws, queue, policy, counters, sessions)
    except WebSocketDisconnect:
        # Client gone or server shutting down (uvicorn closes with 1012): frames not started
        # are dropped (the client resends from GET /v1/sessions/{id}'s frame_index), the frame
        # in flight finishes and is saved within the grace period.
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(_END)
        try:
            await asyncio.wait_for(worker, sessions.settings.shutdown_grace_s)
        except (TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001
            worker.cancel()
        return
    await worker
    with contextlib.suppress(Exception):
        await ws.send_json({"type": "end", **counters})
        await ws.close(code=1000)


async def _read(
    ws: WebSocket,
    queue: asyncio.Queue[_Queued | object],
    policy: str,
    counters: dict[str, int],
    sessions: SessionService,
) -> None:
    raw_shape: tuple[int, int] | None = None
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        if message.get("bytes") is not None:
            item = _Queued(message["bytes"], raw_shape, time.perf_counter())
            if policy == "drop_oldest" and queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                    counters["dropped"] += 1
                    sessions.metrics.dropped.inc()
            await queue.put(item)
            continue
        try:
            control = json.loads(message.get("text") or "")
            kind = control.get("type")
        except (ValueError, AttributeError):
            await _send_error(ws, ApiError(400, "bad_message", "text messages must be JSON"))
            continue
        if kind == "end":
            await queue.put(_END)
            return
        if kind == "raw":
            try:
                raw_shape = (int(control["height"]), int(control["width"]))
            except (KeyError, TypeError, ValueError):
                await _send_error(ws, ApiError(400, "bad_message", "raw needs height and width"))
        elif kind == "encoded":
            raw_shape = None
        else:
            await _send_error(ws, ApiError(400, "bad_message", f"unknown message type {kind!r}"))


async def _process(
    ws: WebSocket,
    sessions: SessionService,
    session_id: str,
    token: str | None,
    queue: asyncio.Queue[_Queued | object],
    counters: dict[str, int],
) -> None:
    limit = sessions.settings.max_frame_bytes
    while True:
        item = await queue.get()
        if item is _END:
            return
        assert isinstance(item, _Queued)
        try:
            if item.raw_shape is not None:
                frame = decode_raw_rgb(item.data, *item.raw_shape, limit)
            else:
                frame = decode_image(item.data, limit)
            result = await sessions.process_frame(
                session_id,
                token,
                frame,
                item.received_at,
                "ws",
                lag=queue.qsize(),
                dropped=counters["dropped"],
            )
        except ApiError as exc:
            sessions.metrics.errors.labels(exc.code).inc()
            await _send(ws, sessions, _send_error(ws, exc))
            continue
        counters["frames"] += 1
        await _send(ws, sessions, ws.send_text(result.model_dump_json()))


async def _send(ws: WebSocket, sessions: SessionService, send: Any) -> None:
    """Send with a deadline; a stuck or vanished client must not hold the session."""
    # On failure the state is already saved; the client reconnects and reads frame_index.
    with contextlib.suppress(TimeoutError, RuntimeError, WebSocketDisconnect, OSError):
        await asyncio.wait_for(send, sessions.settings.send_timeout_s)
