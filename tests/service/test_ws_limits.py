"""WebSocket limits in-process: takeover (4001), socket cap (1013), queued bytes, control
validation, refusals after the handshake (1008 / 1011) and unexpected errors (1011)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import ws as ws_module
from service.api.ws import INTERNAL_REASON, SUPERSEDED_REASON, TOO_MANY_REASON
from service.api.ws_streams import LiveStream, stream_registry
from service.main import create_app
from service.settings import Settings
from tests.service.conftest import assert_same_instances, png_bytes


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings())) as c:
        yield c


def _session(
    client: TestClient, headers: dict[str, str] | None = None, **options: Any
) -> tuple[str, str]:
    resp = client.post("/v1/sessions", json=options or None, headers=headers)
    assert resp.status_code == 201, resp.text
    return resp.json()["session_id"], resp.json()["token"]


def _url(sid: str, token: str) -> str:
    return f"/v1/sessions/{sid}/stream?token={token}"


def _wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _live(client: TestClient, sid: str) -> LiveStream:
    registry = stream_registry(client.app)  # type: ignore[arg-type]
    _wait_until(lambda: sid in registry.by_session)
    return registry.by_session[sid]


class Gate:
    """Holds every frame at the model (inside the session's lock) until ``open()``.

    ``entered`` counts the frames that reached the model.
    """

    def __init__(self, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
        queue = client.app.state.sessions.queue  # type: ignore[attr-defined]
        original = queue.submit
        self._open = threading.Event()
        self.entered = 0

        async def gated(*args: Any, **kwargs: Any) -> Any:
            self.entered += 1
            while not self._open.is_set():
                await asyncio.sleep(0.005)
            return await original(*args, **kwargs)

        monkeypatch.setattr(queue, "submit", gated)

    def open(self) -> None:
        self._open.set()


def _reference(client: TestClient, frames: list[np.ndarray]) -> list[dict]:
    """The same frames over HTTP on a fresh session (an uninterrupted run)."""
    sid, token = _session(client)
    out = []
    for f in frames:
        resp = client.post(
            f"/v1/sessions/{sid}/frames", content=png_bytes(f), headers={"X-Session-Token": token}
        )
        assert resp.status_code == 200, resp.text
        out.append(resp.json())
    return out


# -- one stream per session: takeover -------------------------------------------------------


def test_second_stream_takes_over_with_4001_and_ids_continue(
    client: TestClient, video_frames: list[np.ndarray]
) -> None:
    sid, token = _session(client)
    results = []
    with client.websocket_connect(_url(sid, token)) as first:
        for f in video_frames[:3]:
            first.send_bytes(png_bytes(f))
            results.append(first.receive_json())
        with client.websocket_connect(_url(sid, token)) as second:
            closed = first.receive()
            assert closed == {"type": "websocket.close", "code": 4001, "reason": SUPERSEDED_REASON}
            for f in video_frames[3:]:
                second.send_bytes(png_bytes(f))
                results.append(second.receive_json())
            second.send_json({"type": "end"})
            assert second.receive_json() == {
                "type": "end",
                "frames": len(video_frames) - 3,
                "dropped": 0,
            }
    assert [r["frame_index"] for r in results] == list(range(len(video_frames)))
    for i, (got, want) in enumerate(zip(results, _reference(client, video_frames), strict=True)):
        assert_same_instances(got["instances"], want["instances"], i)


def test_takeover_saves_the_frame_in_flight_and_drops_waiting_ones(
    client: TestClient, video_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    sid, token = _session(client)
    gate = Gate(client, monkeypatch)
    with client.websocket_connect(_url(sid, token)) as first:
        first.send_bytes(png_bytes(video_frames[0]))  # in flight, held by the gate
        _wait_until(lambda: gate.entered == 1)
        first.send_bytes(png_bytes(video_frames[1]))  # waiting
        buffer = _live(client, sid).buffer
        _wait_until(lambda: len(buffer) == 1)
        with client.websocket_connect(_url(sid, token)) as second:
            assert first.receive()["code"] == 4001
            gate.open()
            second.send_bytes(png_bytes(video_frames[1]))
            # Frame 0 finished and was saved by the old stream; frame 1 was dropped there.
            assert second.receive_json()["frame_index"] == 1
    info = client.get(f"/v1/sessions/{sid}", headers={"X-Session-Token": token}).json()
    assert info["frame_index"] == 2


# -- socket cap -----------------------------------------------------------------------------


def test_socket_cap_closes_1013_after_accepting(video_frames: list[np.ndarray]) -> None:
    frame = png_bytes(video_frames[0])
    with TestClient(create_app(Settings(max_websockets=2))) as c:
        registry = stream_registry(c.app)  # type: ignore[arg-type]
        (s1, t1), (s2, t2), (s3, t3) = (_session(c) for _ in range(3))
        with c.websocket_connect(_url(s1, t1)) as a, c.websocket_connect(_url(s2, t2)) as b:
            for ws in (a, b):
                ws.send_bytes(frame)
                assert ws.receive_json()["type"] == "frame"
            with c.websocket_connect(_url(s3, t3)) as third:  # accepted, then closed
                assert third.receive() == {
                    "type": "websocket.close",
                    "code": 1013,
                    "reason": TOO_MANY_REASON,
                }
            # At the cap, a takeover of a session streaming here is still admitted.
            with c.websocket_connect(_url(s1, t1)) as again:
                assert a.receive()["code"] == 4001
                again.send_bytes(frame)
                assert again.receive_json()["frame_index"] == 1
            b.send_json({"type": "end"})
            assert b.receive_json()["type"] == "end"
            _wait_until(lambda: len(registry.streams) == 0)
            with c.websocket_connect(_url(s3, t3)) as third:  # a slot is free again
                third.send_bytes(frame)
                assert third.receive_json()["frame_index"] == 0


# -- queued bytes ---------------------------------------------------------------------------


def test_block_session_queues_no_more_than_ws_queue_bytes(
    video_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = [png_bytes(f) for f in video_frames[:6]]
    cap = 2 * max(len(f) for f in frames) + 100  # two frames fit, a third does not
    with TestClient(create_app(Settings(ws_queue_bytes=cap))) as c:
        gate = Gate(c, monkeypatch)
        sid, token = _session(c, queue_size=8)  # the count bound alone would allow 8
        with c.websocket_connect(_url(sid, token)) as ws:
            for f in frames:
                ws.send_bytes(f)
            buffer = _live(c, sid).buffer
            # frame 0 in flight, 1-2 waiting, 3 held by the blocked reader, 4-5 unread
            _wait_until(lambda: buffer.blocked and gate.entered == 1)
            assert len(buffer) == 2 and buffer.bytes <= cap
            assert buffer.peak_bytes <= cap and buffer.peak_frames == 2
            gate.open()
            replies = [ws.receive_json() for _ in frames]
            ws.send_json({"type": "end"})
            assert ws.receive_json() == {"type": "end", "frames": 6, "dropped": 0}
        assert [r["frame_index"] for r in replies] == list(range(6))
        assert buffer.peak_bytes <= cap


def test_drop_oldest_session_drops_past_ws_queue_bytes(
    video_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = [png_bytes(f) for f in video_frames[:6]]
    cap = 2 * max(len(f) for f in frames) + 100
    with TestClient(create_app(Settings(ws_queue_bytes=cap))) as c:
        gate = Gate(c, monkeypatch)
        sid, token = _session(c, queue_size=8, backpressure="drop_oldest")
        with c.websocket_connect(_url(sid, token)) as ws:
            for f in frames:
                ws.send_bytes(f)
            _wait_until(lambda: "ctvis_frames_dropped_total 3.0" in c.get("/metrics").text)
            buffer = _live(c, sid).buffer
            assert len(buffer) == 2 and buffer.peak_bytes <= cap
            gate.open()
            replies = [ws.receive_json() for _ in range(3)]  # frames 0, 4, 5
            ws.send_json({"type": "end"})
            assert ws.receive_json() == {"type": "end", "frames": 3, "dropped": 3}
        assert [r["frame_index"] for r in replies] == [0, 1, 2]
        assert replies[-1]["dropped_frames"] == 3


def test_frame_over_max_frame_bytes_is_answered_and_not_kept(
    video_frames: list[np.ndarray],
) -> None:
    frame = png_bytes(video_frames[0])
    with TestClient(create_app(Settings(max_frame_bytes=len(frame) + 10))) as c:
        sid, token = _session(c)
        with c.websocket_connect(_url(sid, token)) as ws:
            ws.send_bytes(b"\x89PNG" + bytes(len(frame) * 4))
            reply = ws.receive_json()
            assert (reply["type"], reply["code"]) == ("error", "frame_too_large")
            ws.send_bytes(frame)
            assert ws.receive_json()["frame_index"] == 0
            assert _live(c, sid).buffer.peak_bytes == len(frame)  # the big one never waited


# -- control validation ---------------------------------------------------------------------

BAD_CONTROLS = {
    "raw_height_overflow": '{"type": "raw", "height": 1e999, "width": 8}',
    "nested_100k": "[" * 100_000 + "]" * 100_000,
    "nested_within_size_cap": "[" * 2000 + "]" * 2000,
    "nested_objects": '{"a":' * 1300 + "1" + "}" * 1300,
    "text_over_4k": '{"type": "encoded", "pad": "' + "x" * 5000 + '"}',
    "not_json": "not json",
    "empty_text": "",
    "array": "[1, 2]",
    "string": '"raw"',
    "null": "null",
    "number": "3",
    "no_type": '{"height": 8}',
    "unknown_type": '{"type": "frame"}',
    "type_not_string": '{"type": ["raw"]}',
    "raw_bool": '{"type": "raw", "height": true, "width": 8}',
    "raw_float": '{"type": "raw", "height": 8.0, "width": 8}',
    "raw_string": '{"type": "raw", "height": "8", "width": 8}',
    "raw_nan": '{"type": "raw", "height": NaN, "width": 8}',
    "raw_infinity": '{"type": "raw", "height": 8, "width": -Infinity}',
    "raw_zero": '{"type": "raw", "height": 0, "width": 8}',
    "raw_negative": '{"type": "raw", "height": -3, "width": 8}',
    "raw_too_wide": '{"type": "raw", "height": 8, "width": 4097}',
    "raw_huge_int": '{"type": "raw", "height": ' + "9" * 4000 + ', "width": 8}',
    "raw_missing_width": '{"type": "raw", "height": 8}',
    "raw_null": '{"type": "raw", "height": null, "width": 8}',
}


@pytest.mark.parametrize("text", list(BAD_CONTROLS.values()), ids=list(BAD_CONTROLS))
def test_bad_control_is_answered_and_the_stream_goes_on(
    client: TestClient, video_frames: list[np.ndarray], text: str
) -> None:
    sid, token = _session(client)
    with client.websocket_connect(_url(sid, token)) as ws:
        ws.send_text(text)
        reply = ws.receive_json()
        assert (reply["type"], reply["code"]) == ("error", "bad_message")
        assert reply["message"] and len(reply["message"]) < 300
        ws.send_bytes(png_bytes(video_frames[0]))  # still in encoded mode
        assert ws.receive_json()["frame_index"] == 0
        ws.send_json({"type": "end"})
        assert ws.receive_json() == {"type": "end", "frames": 1, "dropped": 0}


def test_raw_at_the_pixel_limit_is_accepted(
    client: TestClient, video_frames: list[np.ndarray]
) -> None:
    f = video_frames[0]
    sid, token = _session(client)
    with client.websocket_connect(_url(sid, token)) as ws:
        ws.send_json({"type": "raw", "height": 4096, "width": 4096})  # no reply
        ws.send_json({"type": "raw", "height": f.shape[0], "width": f.shape[1]})
        ws.send_bytes(f.tobytes())
        assert ws.receive_json()["frame_index"] == 0


# -- refusals after the handshake -----------------------------------------------------------


def _refusal(client: TestClient, url: str, **kwargs: Any) -> dict:
    """Open ``url`` (the handshake must succeed) and return the first message: the close."""
    with client.websocket_connect(url, **kwargs) as ws:
        return dict(ws.receive())


def test_bad_credentials_are_accepted_then_closed_1008() -> None:
    with TestClient(create_app(Settings(api_keys="k"))) as c:
        auth = {"Authorization": "Bearer k"}
        sid, token = _session(c, headers=auth)

        def close(url: str, **kwargs: Any) -> tuple[int, str]:
            message = _refusal(c, url, **kwargs)
            assert message["type"] == "websocket.close"
            return message["code"], message["reason"]

        assert close(_url(sid, token)) == (1008, "unauthorized")
        assert close(_url(sid, token) + "&api_key=wrong") == (1008, "unauthorized")
        assert close(_url(sid, token), headers={"Authorization": "Bearer no"}) == (
            1008,
            "unauthorized",
        )
        assert close(_url(sid, "wrong"), headers=auth) == (1008, "invalid_token")
        assert close(_url("nope", token), headers=auth) == (1008, "session_not_found")
        store = c.app.state.sessions.store  # type: ignore[attr-defined]
        load_meta = store.load_meta

        async def pinned_elsewhere(session_id: str) -> dict[str, Any]:
            return {**await load_meta(session_id), "model_id": "another-model"}

        store.load_meta = pinned_elsewhere
        try:
            assert close(_url(sid, token), headers=auth) == (1008, "model_mismatch")
        finally:
            del store.load_meta
        with c.websocket_connect(_url(sid, token) + "&api_key=k") as ws:  # the browser's way
            ws.send_json({"type": "end"})
            assert ws.receive_json()["type"] == "end"


def test_store_failure_at_the_handshake_closes_1011(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid, token = _session(client)

    async def down(session_id: str) -> None:
        raise ConnectionError("store down")

    monkeypatch.setattr(client.app.state.sessions.store, "load_meta", down)  # type: ignore[attr-defined]
    message = _refusal(client, _url(sid, token))
    assert (message["code"], message["reason"]) == (1011, "state_store_unavailable")


# -- unexpected errors ----------------------------------------------------------------------


def _assert_cleaned_up(client: TestClient) -> None:
    registry = stream_registry(client.app)  # type: ignore[arg-type]
    _wait_until(lambda: not registry.streams and not client.app.state.websockets)  # type: ignore[attr-defined]


def test_unexpected_worker_error_closes_1011(
    client: TestClient, video_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    sid, token = _session(client)

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("model exploded")

    monkeypatch.setattr(client.app.state.sessions, "process_frame", broken)  # type: ignore[attr-defined]
    with client.websocket_connect(_url(sid, token)) as ws:
        ws.send_bytes(png_bytes(video_frames[0]))
        assert ws.receive() == {"type": "websocket.close", "code": 1011, "reason": INTERNAL_REASON}
        _assert_cleaned_up(client)


def test_unexpected_reader_error_closes_1011(
    client: TestClient, video_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    sid, token = _session(client)

    def broken(text: str | None) -> tuple[str, None]:
        raise KeyError("parser exploded")

    monkeypatch.setattr(ws_module, "parse_control", broken)
    with client.websocket_connect(_url(sid, token)) as ws:
        ws.send_bytes(png_bytes(video_frames[0]))
        assert ws.receive_json()["frame_index"] == 0
        ws.send_text('{"type": "encoded"}')
        assert ws.receive() == {"type": "websocket.close", "code": 1011, "reason": INTERNAL_REASON}
        _assert_cleaned_up(client)
