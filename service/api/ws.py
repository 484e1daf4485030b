"""``WS /v1/sessions/{id}/stream``: live tracking over a WebSocket.

Client -> server: binary messages are frames (JPEG / PNG / WebP bytes, or raw RGB after a
``{"type": "raw", "height": H, "width": W}`` control message); text messages are JSON
controls: ``{"type": "end"}`` finishes the stream, ``{"type": "encoded"}`` switches back from
raw. Server -> client: one ``FrameResult`` JSON (``"type": "frame"``) per processed frame,
``{"type": "error", "code", "message"}`` for a frame or control message that failed (the
stream goes on), and ``{"type": "end", "frames": n, "dropped": d}`` before closing. Replies to
frames come in frame order; a bad control message is answered as soon as it is read, possibly
before the replies of frames sent earlier.

Control messages are validated before anything acts on them: text longer than
``MAX_CONTROL_BYTES`` is not parsed, the JSON must be an object with a known ``type``, and
``raw`` needs integer ``height`` / ``width`` in 1..``MAX_RAW_SIDE`` (booleans, floats,
strings, NaN and infinities are refused) whose product is at most ``MAX_PIXELS``. Anything
else is answered with ``{"type": "error", "code": "bad_message"}`` and the stream continues.

Limits (each process enforces its own):

- Frames waiting for the model are bounded by the session's ``queue_size`` and by
  ``ws_queue_bytes`` bytes (``CTVIS_WS_QUEUE_BYTES``; one frame is always admitted when none
  waits, so a frame larger than the bound still goes through). Past either bound ``block``
  stops reading the socket (TCP backpressure reaches the client) and ``drop_oldest`` discards
  the oldest waiting frames and counts them. A binary message over ``max_frame_bytes`` is not
  kept: it is answered, in order, with ``frame_too_large``. ``ctvis serve`` sets uvicorn's
  ``ws_max_size`` to ``max_frame_bytes`` + 64 KiB, so a bigger message is refused by the
  server itself with close 1009 before it is buffered.
- One live stream per session: a second stream on the same session takes over, and the older
  socket is closed with 4001. Its frame in flight still finishes and is saved; frames it had
  waiting are dropped (the new client resends from ``GET /v1/sessions/{id}``'s
  ``frame_index``). The takeover is per replica: two streams of one session on two API
  replicas behind a load balancer both stay open, and the session's per-frame lease still
  applies each frame exactly once, in arrival order.
- At most ``max_websockets`` streams (``CTVIS_MAX_WEBSOCKETS``); a takeover of a session that
  already streams here is always admitted.

Every refusal happens after the handshake is accepted, so clients see a close code and a
reason, never a failed HTTP handshake. Close codes, when they are sent, and what a client
should do:

- 1000: after ``{"type": "end"}``, once every frame was answered and the ``end`` summary
  sent. The stream is done.
- 1008, reason ``unauthorized`` (missing or wrong API key), ``invalid_token``,
  ``session_not_found`` (unknown or expired session) or ``model_mismatch`` (the session was
  started with a model this replica does not serve). Do not retry as is: fix the key or
  token, or create a new session.
- 1009, sent by uvicorn: a message over ``max_frame_bytes`` + 64 KiB. Send smaller frames
  (resize or re-encode), then reconnect.
- 1011, reason ``state_store_unavailable`` (the session store is unreachable at the
  handshake) or ``internal_error: ...`` (an unexpected server error, logged). Reconnect with
  backoff and resume from ``GET /v1/sessions/{id}``'s ``frame_index``: the state is saved
  after every frame.
- 1012, on shutdown (SIGTERM), with a reconnect hint in the reason. Reconnect, to any
  replica, and continue.
- 1013, reason ``too_many_streams: try again later`` (this process has ``max_websockets``
  streams) or ``not_ready: try again later`` (still starting). Retry after a few seconds,
  possibly on another replica.
- 4001, reason ``superseded: another stream took over this session``. Another client now
  streams this session; do not reconnect automatically (that would take it back).

A disconnect keeps the session (until its TTL) so the client can reconnect and continue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from service.api.ws_streams import FrameBuffer, LiveStream, Queued, stream_registry
from service.auth import api_key_allowed
from service.errors import ApiError
from service.frames import MAX_PIXELS, decode_image, decode_raw_rgb
from service.sessions import SessionService

router = APIRouter()
log = logging.getLogger("ctvis.service")

MAX_CONTROL_BYTES = 4096  # text messages are small JSON controls; longer text is not parsed
MAX_RAW_SIDE = 4096  # largest height / width a raw frame may declare
WS_SIZE_MARGIN = 64 * 1024  # uvicorn's ws_max_size is max_frame_bytes plus this

NORMAL_CODE = 1000
POLICY_CODE = 1008
INTERNAL_CODE = 1011
RESTART_CODE = 1012  # "service restart": reconnect (to any replica) and continue
RESTART_REASON = "server restarting; reconnect to continue this session"
TRY_LATER_CODE = 1013
SUPERSEDED_CODE = 4001
SUPERSEDED_REASON = "superseded: another stream took over this session"
TOO_MANY_REASON = "too_many_streams: try again later"
NOT_READY_REASON = "not_ready: try again later"
INTERNAL_REASON = "internal_error: unexpected server error; reconnect to continue"


async def close_all_for_restart(open_sockets: set[WebSocket]) -> None:
    """Close every live stream with 1012 and a reconnect hint (called on SIGTERM)."""
    for ws in list(open_sockets):
        with contextlib.suppress(Exception):
            await ws.close(code=RESTART_CODE, reason=RESTART_REASON)


def parse_control(text: str | None) -> tuple[str, tuple[int, int] | None]:
    """Validate one text message: returns ``(type, raw shape)`` (the shape only for ``raw``).

    Raises:
        ApiError: 400 ``bad_message`` for text over ``MAX_CONTROL_BYTES``, text that is not a
            JSON object (deep nesting included), an unknown ``type``, or a ``raw`` shape that
            is not two integers in 1..``MAX_RAW_SIDE`` within ``MAX_PIXELS``.
    """
    text = text or ""
    if len(text) > MAX_CONTROL_BYTES or len(text.encode("utf-8", "replace")) > MAX_CONTROL_BYTES:
        raise ApiError(
            400,
            "bad_message",
            f"text messages are JSON controls of at most {MAX_CONTROL_BYTES} bytes",
        )
    try:
        control = json.loads(text)
    except (ValueError, RecursionError):
        raise ApiError(400, "bad_message", "text messages must be JSON objects") from None
    if not isinstance(control, dict):
        raise ApiError(400, "bad_message", "text messages must be JSON objects")
    kind = control.get("type")
    if kind in ("end", "encoded"):
        return kind, None
    if kind != "raw":
        shown = repr(kind) if isinstance(kind, str | int | float | bool | None) else "non-string"
        raise ApiError(
            400,
            "bad_message",
            f"unknown message type {shown[:64]}; expected 'raw', 'encoded' or 'end'",
        )
    height, width = control.get("height"), control.get("width")
    sides_ok = all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_RAW_SIDE
        for v in (height, width)
    )
    if not sides_ok:
        raise ApiError(
            400, "bad_message", f"raw needs integer height and width in 1..{MAX_RAW_SIDE}"
        )
    assert isinstance(height, int) and isinstance(width, int)
    if height * width > MAX_PIXELS:
        raise ApiError(400, "bad_message", f"raw frames may have at most {MAX_PIXELS} pixels")
    return kind, (height, width)


async def _send_error(ws: WebSocket, exc: ApiError) -> None:
    await ws.send_json({"type": "error", "code": exc.code, "message": exc.message})


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    """Close ``ws``; a socket that is already gone or closed is left as it is."""
    with contextlib.suppress(Exception):
        await ws.close(code=code, reason=reason)


def _credentials(ws: WebSocket) -> tuple[str | None, str | None]:
    """The session token and the ``Authorization`` value (``?api_key=`` for browsers)."""
    token = ws.query_params.get("token") or ws.headers.get("x-session-token")
    authorization = ws.headers.get("authorization")
    if not authorization and ws.query_params.get("api_key"):
        authorization = "Bearer " + ws.query_params["api_key"]
    return token, authorization


@router.websocket("/v1/sessions/{session_id}/stream")
async def stream(ws: WebSocket, session_id: str) -> None:
    """Live tracking of one session (see the module docstring for the protocol)."""
    # Accept first: a close before the handshake reaches real clients as an HTTP 403 with no
    # close code or reason.
    await ws.accept()
    token, authorization = _credentials(ws)
    sessions: SessionService | None = getattr(ws.app.state, "sessions", None)
    if not api_key_allowed(authorization, ws.app.state.api_key_digests):
        await _close(ws, POLICY_CODE, "unauthorized")
        return
    if sessions is None:
        await _close(ws, TRY_LATER_CODE, NOT_READY_REASON)
        return
    try:
        meta = await sessions.check_access(session_id, token)
    except ApiError as exc:
        await _close(ws, POLICY_CODE if exc.status in (401, 404, 409) else INTERNAL_CODE, exc.code)
        return
    except Exception:
        log.exception("WebSocket session check failed for %s", session_id)
        await _close(ws, INTERNAL_CODE, INTERNAL_REASON)
        return
    settings = sessions.settings
    buffer = FrameBuffer(int(meta.get("queue_size", 4)), settings.ws_queue_bytes)
    live = LiveStream(ws, session_id, buffer)
    registry = stream_registry(ws.app)
    if not registry.admit(live, settings.max_websockets):
        await _close(ws, TRY_LATER_CODE, TOO_MANY_REASON)
        return
    open_sockets: set[WebSocket] = ws.app.state.websockets
    open_sockets.add(ws)
    try:
        await _serve(live, sessions, token, str(meta.get("backpressure", "block")))
    finally:
        open_sockets.discard(ws)
        registry.release(live)


async def _serve(
    live: LiveStream, sessions: SessionService, token: str | None, policy: str
) -> None:
    """Run the reader and the model worker of one stream until it ends, then close it.

    Whatever ends the stream (``end``, a disconnect, a takeover, an unexpected exception in
    either task, or the handler being cancelled), both tasks are cancelled or finished and
    awaited before this returns, and the socket gets a close frame unless the client is gone.
    """
    ws, buffer = live.ws, live.buffer
    counters = {"frames": 0, "dropped": 0}
    reader = asyncio.create_task(_read(live, policy, counters, sessions))
    worker = asyncio.create_task(_process(live, sessions, token, counters))
    taken = asyncio.create_task(live.superseded.wait())
    try:
        await asyncio.wait({reader, worker, taken}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done() and not taken.done() and _failure(reader) is None:
            # ``end``: every waiting frame is still processed and answered.
            await buffer.finish(discard=False)
            await asyncio.wait({worker, taken}, return_when=asyncio.FIRST_COMPLETED)
            if worker.done() and _failure(worker) is None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        ws.send_json({"type": "end", **counters}), sessions.settings.send_timeout_s
                    )
                await _close(ws, NORMAL_CODE, "")
                return
        failure = _failure(worker) if worker.done() else None
        if failure is None and reader.done():
            failure = _failure(reader)
        if isinstance(failure, WebSocketDisconnect) or (taken.done() and failure is None):
            # Client gone, server shutting down (1012) or another stream took over: frames not
            # started are dropped (the client resends from frame_index); the frame in flight
            # finishes and is saved within the grace period, its reply going nowhere.
            reader.cancel()
            await buffer.finish(discard=True)
            if taken.done() and not isinstance(failure, WebSocketDisconnect):
                await _close(ws, SUPERSEDED_CODE, SUPERSEDED_REASON)
            if not worker.done():
                await asyncio.wait({worker}, timeout=sessions.settings.shutdown_grace_s)
            return
        log.error("WebSocket stream of session %s failed", live.session_id, exc_info=failure)
        await _close(ws, INTERNAL_CODE, INTERNAL_REASON)
    finally:
        for task in (reader, worker, taken):
            task.cancel()
        await asyncio.gather(reader, worker, taken, return_exceptions=True)


def _failure(task: asyncio.Task[None]) -> BaseException | None:
    """The exception a finished task ended with (a cancellation counts as one)."""
    if task.cancelled():
        return asyncio.CancelledError()
    return task.exception()


async def _read(
    live: LiveStream, policy: str, counters: dict[str, int], sessions: SessionService
) -> None:
    """Read messages into the buffer until ``end`` (returns) or a disconnect (raises)."""
    ws, buffer = live.ws, live.buffer
    limit = sessions.settings.max_frame_bytes
    raw_shape: tuple[int, int] | None = None
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        data = message.get("bytes")
        if data is not None:
            now = time.perf_counter()
            if len(data) > limit:
                # Kept as a marker so its frame_too_large reply comes in frame order.
                item = Queued(b"", raw_shape, now, too_large=len(data))
            else:
                item = Queued(data, raw_shape, now)
            del data, message
            if policy == "drop_oldest":
                dropped = await buffer.put_dropping(item)
                if dropped:
                    counters["dropped"] += dropped
                    sessions.metrics.dropped.inc(dropped)
            else:
                await buffer.put_waiting(item)
            continue
        try:
            kind, shape = parse_control(message.get("text"))
        except ApiError as exc:
            sessions.metrics.errors.labels(exc.code).inc()
            await _send(ws, sessions, _send_error(ws, exc))
            continue
        if kind == "end":
            return
        raw_shape = shape


async def _process(
    live: LiveStream,
    sessions: SessionService,
    token: str | None,
    counters: dict[str, int],
) -> None:
    """Decode and track buffered frames in order, one reply each, until the buffer ends."""
    ws, buffer = live.ws, live.buffer
    limit = sessions.settings.max_frame_bytes
    while True:
        item = await buffer.get()
        if item is None:
            return
        try:
            if item.too_large:
                raise ApiError(
                    413, "frame_too_large", f"frame is {item.too_large} bytes; limit {limit}"
                )
            if item.raw_shape is not None:
                frame = decode_raw_rgb(item.data, *item.raw_shape, limit)
            else:
                frame = decode_image(item.data, limit)
            item.data = b""  # the decoded frame is all that is needed from here on
            result = await sessions.process_frame(
                live.session_id,
                token,
                frame,
                item.received_at,
                "ws",
                lag=len(buffer),
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
