"""Fuzzing the WebSocket stream's messages: arbitrary text, JSON controls and binary frames.

Every generated message that is not a valid control must be answered (an ``error`` reply, or a
``frame`` for a binary message that happens to decode), the socket must stay open, and a valid
frame sent afterwards must still be tracked. One socket serves every example, so a message
that broke the stream would fail all later ones too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.testclient import WebSocketTestSession

from service.frames import MAX_PIXELS
from service.main import create_app
from service.settings import Settings
from tests.service.conftest import png_bytes

REPLY_TIMEOUT_S = 10.0

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=16)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
sides = (
    st.integers(min_value=-3, max_value=4200)
    | st.sampled_from([0, 1, 4096, 4097, 10**30, -(10**30)])
    | json_scalars
    | st.lists(st.integers(), max_size=2)
)
controls = st.fixed_dictionaries(
    {"type": st.sampled_from(["raw", "encoded", "frame", "RAW", ""]) | json_values},
    optional={"height": sides, "width": sides, "extra": json_values},
)
texts = st.one_of(
    st.text(max_size=64),
    json_values.map(json.dumps),
    controls.map(json.dumps),
    st.builds(
        lambda ch, n: ch * n, st.sampled_from(["[", "{", '{"a":', "x", "é"]), st.integers(1, 20_000)
    ),
)
binaries = st.one_of(
    st.binary(max_size=256),
    st.builds(
        lambda magic, rest: magic + rest,
        st.sampled_from(
            [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBP", b"GIF89a"]
        ),
        st.binary(max_size=256),
    ),
)
messages = st.lists(
    st.one_of(texts.map(lambda t: ("text", t)), binaries.map(lambda b: ("bytes", b))),
    min_size=1,
    max_size=3,
)


def _valid_control(text: str) -> bool:
    """The oracle: is ``text`` a control the server acts on without replying?"""
    if len(text.encode()) > 4096:
        return False
    try:
        control = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if not isinstance(control, dict):
        return False
    if control.get("type") == "encoded":
        return True
    if control.get("type") != "raw":
        return False
    h, w = control.get("height"), control.get("width")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (h, w)):
        return False
    assert isinstance(h, int) and isinstance(w, int)
    return 1 <= h <= 4096 and 1 <= w <= 4096 and h * w <= MAX_PIXELS


def _is_end(text: str) -> bool:
    try:
        control = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(control, dict) and control.get("type") == "end"


def _receive(ws: WebSocketTestSession) -> dict[str, Any]:
    """The next message from the server, failing instead of hanging when none comes."""

    async def receive() -> dict[str, Any]:
        with anyio.fail_after(REPLY_TIMEOUT_S):
            return dict(await ws._send_rx.receive())  # the session's server-to-client stream

    return ws.portal.call(receive)


class Stream:
    """The shared socket, a valid probe frame, and the close that ended it (if any)."""

    def __init__(self, ws: WebSocketTestSession, frame: bytes) -> None:
        self.ws, self.frame = ws, frame
        self.closed: dict[str, Any] | None = None


@pytest.fixture(scope="module")
def stream(video_frames: list[np.ndarray]) -> Iterator[Stream]:
    settings_ = Settings(max_session_fps=1_000_000, max_frame_bytes=64 * 1024)
    with TestClient(create_app(settings_)) as client:
        created = client.post("/v1/sessions", json={"queue_size": 64}).json()
        url = f"/v1/sessions/{created['session_id']}/stream?token={created['token']}"
        with client.websocket_connect(url) as ws:
            yield Stream(ws, png_bytes(video_frames[0]))


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(batch=messages)
@example(batch=[("text", '{"type": "raw", "height": 1e999, "width": 8}')])
@example(batch=[("text", "[" * 100_000 + "]" * 100_000)])
@example(batch=[("text", "[" * 2048 + "]" * 2048)])  # at the size cap
@example(batch=[("text", '{"type": "raw", "height": 1, "width": 1}'), ("bytes", b"\x00\x01\x02")])
@example(batch=[("text", '{"type": "raw", "height": 2, "width": 2}'), ("bytes", b"x" * 13)])
@example(batch=[("bytes", b"\x89PNG" + bytes(70_000))])
def test_every_message_is_answered_and_the_stream_survives(
    stream: Stream, batch: list[tuple[str, Any]]
) -> None:
    assert stream.closed is None, f"an earlier example closed the stream: {stream.closed}"
    ws, frame = stream.ws, stream.frame
    expected = 0
    for kind, payload in batch:
        if kind == "bytes":
            ws.send_bytes(payload)
            expected += 1
        elif not _is_end(payload):
            ws.send_text(payload)
            expected += 0 if _valid_control(payload) else 1
    ws.send_text('{"type": "encoded"}')
    ws.send_bytes(frame)
    replies = []
    for _ in range(expected + 1):
        replies.append(_receive(ws))
        if replies[-1]["type"] != "websocket.send":
            break
    for message in replies:
        if message["type"] != "websocket.send":
            stream.closed = message
        assert message["type"] == "websocket.send", (batch, message)  # never a close
        reply = json.loads(message["text"])
        assert reply["type"] in ("error", "frame"), (batch, reply)
        if reply["type"] == "error":
            assert reply["code"] != "internal_error" and reply["message"], (batch, reply)
    last = json.loads(replies[-1]["text"])
    assert last["type"] == "frame", (batch, last)  # the probe frame, answered last
