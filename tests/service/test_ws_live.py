"""WebSocket limits as a real client on the network sees them (``ctvis serve`` + ``websockets``).

Refusals are close codes with reasons after a completed handshake (never an HTTP 403),
malformed controls are answered and the stream continues, a second stream takes over (4001),
the socket cap answers 1013, a message over ``max_frame_bytes`` + 64 KiB is closed with 1009
by uvicorn, and a flood of 15 MiB messages to a ``block`` session keeps the server's memory
bounded by ``ws_queue_bytes``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from service.api.ws import SUPERSEDED_REASON, TOO_MANY_REASON
from service.client import ApiError, CtvisClient, Session
from tests.service.conftest import png_bytes
from tests.service.live import LiveServer

API_KEY = "k"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUEUE_BYTES = 1 << 20
MIB = 1 << 20


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    env = {
        "CTVIS_API_KEYS": API_KEY,
        "CTVIS_MAX_WEBSOCKETS": "2",
        "CTVIS_WS_QUEUE_BYTES": str(QUEUE_BYTES),
    }
    with LiveServer(env) as live:
        yield live


@pytest.fixture(scope="module")
def frame(video_frames: list[np.ndarray]) -> bytes:
    return png_bytes(video_frames[0])


def _session(server: LiveServer, **options: Any) -> tuple[str, str]:
    resp = httpx.post(server.url + "/v1/sessions", json=options or None, headers=AUTH, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["session_id"], resp.json()["token"]


def _connect(
    server: LiveServer, sid: str, token: str, headers: dict[str, str] | None = AUTH
) -> ClientConnection:
    url = f"{server.ws_url}/v1/sessions/{sid}/stream?token={token}"
    return connect(url, additional_headers=headers, max_size=None, open_timeout=30)


def _close_of(ws: ClientConnection) -> tuple[int, str]:
    """Wait for the server's close (any message before it fails the test)."""
    with pytest.raises(ConnectionClosed) as info:
        message = ws.recv(timeout=30)
        pytest.fail(f"expected a close, got {message!r}")
    assert info.value.rcvd is not None, "closed without a close frame"
    return info.value.rcvd.code, info.value.rcvd.reason


def _reply(ws: ClientConnection) -> dict[str, Any]:
    return dict(json.loads(ws.recv(timeout=60)))


@contextmanager
def _admitted(server: LiveServer, sid: str, token: str, frame: bytes) -> Iterator[ClientConnection]:
    """A stream that answered a frame; retried while the cap still counts closed streams."""
    deadline = time.monotonic() + 10
    while True:
        with _connect(server, sid, token) as ws:
            ws.send(frame)
            try:
                reply = _reply(ws)
            except ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 1013, exc
                assert time.monotonic() < deadline, "streams of earlier tests were never released"
                time.sleep(0.1)
                continue
            assert reply["type"] == "frame", reply
            yield ws
            return


def _no_traceback(server: LiveServer) -> None:
    assert "Traceback" not in server.log(), server.log()[-4000:]


# -- refusals after the handshake -----------------------------------------------------------


def test_bad_token_closes_1008_with_reason(server: LiveServer) -> None:
    sid, _ = _session(server)
    with _connect(server, sid, "not-the-token") as ws:  # the handshake itself succeeds
        assert _close_of(ws) == (1008, "invalid_token")
    with _connect(server, "no-such-session", "x") as ws:
        assert _close_of(ws) == (1008, "session_not_found")


def test_bad_api_key_closes_1008_with_reason(server: LiveServer) -> None:
    sid, token = _session(server)
    for headers in (None, {"Authorization": "Bearer wrong"}):
        with _connect(server, sid, token, headers=headers) as ws:
            assert _close_of(ws) == (1008, "unauthorized")


# -- malformed controls ---------------------------------------------------------------------

BAD_CONTROLS = [
    '{"type": "raw", "height": 1e999, "width": 8}',
    "[" * 100_000 + "]" * 100_000,
    "[" * 2048 + "]" * 2048,
    '{"type": "raw", "height": true, "width": 8}',
    '{"type": "raw", "height": NaN, "width": 8}',
    '{"type": "raw", "height": "8", "width": 8.5}',
    '{"type": "raw", "height": 4097, "width": 8}',
    '{"type": "raw", "height": ' + "9" * 3000 + ', "width": 8}',
    "[1, 2, 3]",
    "null",
    '{"type": "launch"}',
    "x" * 10_000,
]


def test_malformed_controls_are_answered_and_the_stream_goes_on(
    server: LiveServer, frame: bytes
) -> None:
    sid, token = _session(server)
    with _connect(server, sid, token) as ws:
        for index, text in enumerate(BAD_CONTROLS):
            ws.send(text)
            reply = _reply(ws)
            assert (reply["type"], reply["code"]) == ("error", "bad_message"), (text[:60], reply)
            ws.send(frame)
            assert _reply(ws)["frame_index"] == index, text[:60]
        ws.send(json.dumps({"type": "end"}))
        assert _reply(ws) == {"type": "end", "frames": len(BAD_CONTROLS), "dropped": 0}
        assert _close_of(ws) == (1000, "")
    _no_traceback(server)


def test_message_over_the_size_limit_closes_1009(server: LiveServer) -> None:
    sid, token = _session(server)
    with _connect(server, sid, token) as ws:
        ws.send(bytes(17 * MIB))  # over max_frame_bytes (16 MiB) + 64 KiB
        code, _ = _close_of(ws)
    assert code == 1009
    assert server.alive()


# -- one stream per session, socket cap -----------------------------------------------------


def test_second_stream_takes_over_with_4001(server: LiveServer, frame: bytes) -> None:
    sid, token = _session(server)
    with _admitted(server, sid, token, frame) as first, _connect(server, sid, token) as second:
        assert _close_of(first) == (4001, SUPERSEDED_REASON)
        second.send(frame)
        assert _reply(second)["frame_index"] == 1
    _no_traceback(server)


def test_socket_cap_closes_1013_with_reason(server: LiveServer, frame: bytes) -> None:
    (s1, t1), (s2, t2), (s3, t3) = (_session(server) for _ in range(3))
    with _admitted(server, s1, t1, frame), _admitted(server, s2, t2, frame):
        with _connect(server, s3, t3) as third:
            assert _close_of(third) == (1013, TOO_MANY_REASON)
        with CtvisClient(server.url, API_KEY) as client, pytest.raises(ApiError) as info:
            list(client.stream_frames(Session(s3, t3, 0.0), [frame]))
        assert (info.value.status, info.value.code) == (503, "too_many_streams")
    assert server.alive()


# -- the Python client's errors -------------------------------------------------------------


def test_client_raises_clear_errors_on_refusal_and_takeover(
    server: LiveServer, frame: bytes
) -> None:
    sid, token = _session(server)
    with CtvisClient(server.url, API_KEY) as client:
        with pytest.raises(ApiError) as info:
            list(client.stream_frames(Session(sid, "wrong", 0.0), [frame]))
        assert (info.value.status, info.value.code) == (401, "invalid_token")
        with CtvisClient(server.url, "wrong-key") as stranger, pytest.raises(ApiError) as info:
            list(stranger.stream_frames(Session(sid, token, 0.0), [frame]))
        assert (info.value.status, info.value.code) == (401, "unauthorized")

        taken_over = threading.Event()

        def frames() -> Iterator[bytes]:
            yield frame
            taken_over.wait(30)
            yield frame

        results = client.stream_frames(Session(sid, token, 0.0), frames())
        assert next(results).frame_index == 0
        with _connect(server, sid, token) as other:
            # the new connection runs a frame first, so the old one's next frame can only
            # come after the takeover (whatever the load)
            other.send(frame)
            assert _reply(other)["frame_index"] == 1
            taken_over.set()
            with pytest.raises(ApiError) as info:
                next(results)
            assert (info.value.status, info.value.code) == (409, "superseded")


# -- memory under a flood of large messages -------------------------------------------------


def _reset_peak(server: LiveServer) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux ``clear_refs`` 5)."""
    assert server.proc is not None
    try:
        Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def test_large_message_flood_keeps_memory_bounded(server: LiveServer) -> None:
    side = 2236  # a raw frame of 2236 x 2236 x 3 = 15.0 MB, which the model takes seconds on
    raw = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8).tobytes()
    junk = bytes(15 * MIB)  # answered unsupported_frame as soon as it is decoded
    count, busy = 40, 2  # messages in all, of which raw frames first
    sid, token = _session(server, queue_size=64)  # the count bound alone would let 64 wait
    with _connect(server, sid, token) as ws:
        ws.send(json.dumps({"type": "raw", "height": side, "width": side}))
        ws.send(raw)  # warm-up: the model's buffers for this frame size stay allocated
        assert _reply(ws)["type"] == "frame"
        before = server.rss_bytes()
        hwm_reset = _reset_peak(server)
        sampled = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                sampled.append(server.rss_bytes())
                time.sleep(0.005)

        def send() -> None:
            for _ in range(busy):  # keep the worker busy while the junk arrives
                ws.send(raw)
            ws.send(json.dumps({"type": "encoded"}))
            for _ in range(count - busy):
                ws.send(junk)

        sampler = threading.Thread(target=sample, daemon=True)
        sender = threading.Thread(target=send, daemon=True)
        sampler.start()
        started = time.monotonic()
        sender.start()
        replies = [_reply(ws) for _ in range(count)]
        elapsed = time.monotonic() - started
        sender.join(30)
        done.set()
        sampler.join(5)
        after = server.rss_bytes()
        peak = max(max(sampled), server.peak_rss_bytes() if hwm_reset else 0)
    assert [r["type"] for r in replies[:busy]] == ["frame"] * busy
    assert [r.get("code") for r in replies[busy:]] == ["unsupported_frame"] * (count - busy)
    growth = peak - before
    print(
        f"\nRSS before {before / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB (+{growth / MIB:.0f}), "
        f"after {after / MIB:.0f} MiB; {count} x 15 MiB in {elapsed:.1f} s"
    )
    assert growth < 300 * MIB, growth / MIB
    assert after - before < 300 * MIB
    assert server.alive()
    _no_traceback(server)
