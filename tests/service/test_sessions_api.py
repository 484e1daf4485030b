"""Live sessions over HTTP and WebSocket: ordering, equivalence, auth, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from model.video.runner import track_frames
from service.main import create_app
from service.settings import Settings
from tests.service.conftest import png_bytes


@pytest.fixture()
def client() -> TestClient:
    with TestClient(create_app(Settings())) as c:
        yield c


def _session(client: TestClient, **options: object) -> tuple[str, str]:
    resp = client.post("/v1/sessions", json=options or None)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert len(body["token"]) >= 22  # >= 128 random bits
    return body["session_id"], body["token"]


def _ids(result: dict) -> list[int]:
    return sorted(inst["track_id"] for inst in result["instances"])


def test_http_frames_in_order(client: TestClient, video_frames: list[np.ndarray]) -> None:
    sid, token = _session(client)
    results = []
    for frame in video_frames:
        resp = client.post(
            f"/v1/sessions/{sid}/frames",
            content=png_bytes(frame),
            headers={"X-Session-Token": token, "Content-Type": "image/png"},
        )
        assert resp.status_code == 200, resp.text
        results.append(resp.json())
    assert [r["frame_index"] for r in results] == list(range(len(video_frames)))
    for r in results:
        assert (r["height"], r["width"]) == video_frames[0].shape[:2]
        for inst in r["instances"]:
            assert inst["segmentation"]["size"] == [r["height"], r["width"]]
            assert isinstance(inst["segmentation"]["counts"], str)
            assert 1 <= inst["category_id"] <= 40
    info = client.get(f"/v1/sessions/{sid}", headers={"X-Session-Token": token}).json()
    assert info["frame_index"] == len(video_frames)


def test_ws_http_and_offline_pipeline_agree(
    client: TestClient, video_frames: list[np.ndarray]
) -> None:
    sid_http, tok_http = _session(client)
    http = [
        client.post(
            f"/v1/sessions/{sid_http}/frames",
            content=png_bytes(f),
            headers={"X-Session-Token": tok_http},
        ).json()
        for f in video_frames
    ]
    sid_ws, tok_ws = _session(client)
    ws_results = []
    with client.websocket_connect(f"/v1/sessions/{sid_ws}/stream?token={tok_ws}") as ws:
        for f in video_frames:
            ws.send_bytes(png_bytes(f))
            ws_results.append(ws.receive_json())
        ws.send_json({"type": "end"})
        end = ws.receive_json()
    assert end == {"type": "end", "frames": len(video_frames), "dropped": 0}
    for a, b in zip(http, ws_results, strict=True):
        assert a["frame_index"] == b["frame_index"]
        assert [(i["track_id"], i["segmentation"]) for i in a["instances"]] == [
            (i["track_id"], i["segmentation"]) for i in b["instances"]
        ]
    # the offline pipeline (what `ctvis track` runs) assigns the same ids per frame
    served = client.app.state.model
    offline = track_frames(
        iter(video_frames),
        served.segmenter,
        served.model_cfg,
        served.preprocess_cfg,
        served.tracker_cfg,
    )
    for frame_trace, result in zip(offline.trace, http, strict=True):
        assert sorted(frame_trace.assigned_ids.tolist()) == _ids(result)


def test_session_auth_and_errors(client: TestClient, video_frames: list[np.ndarray]) -> None:
    sid, token = _session(client)
    frame = png_bytes(video_frames[0])
    resp = client.post(f"/v1/sessions/{sid}/frames", content=frame)
    assert resp.status_code == 401 and resp.json()["code"] == "invalid_token"
    resp = client.post(
        f"/v1/sessions/{sid}/frames", content=frame, headers={"X-Session-Token": "wrong"}
    )
    assert resp.status_code == 401
    resp = client.post("/v1/sessions/nope/frames", content=frame)
    assert resp.status_code == 404 and resp.json()["code"] == "session_not_found"
    hdr = {"X-Session-Token": token}
    for bad in (b"", b"\xff\xd8\xff\xe0 truncated jpeg", b"plain text, not an image"):
        resp = client.post(f"/v1/sessions/{sid}/frames", content=bad, headers=hdr)
        assert resp.status_code == 415, resp.text
        assert resp.json()["code"] == "unsupported_frame"
    resp = client.post(
        f"/v1/sessions/{sid}/frames?height=4&width=4", content=b"\x00" * 10, headers=hdr
    )
    assert resp.status_code == 400 and resp.json()["code"] == "bad_shape"
    # a failed frame does not advance the session
    info = client.get(f"/v1/sessions/{sid}", headers=hdr).json()
    assert info["frame_index"] == 0
    assert client.delete(f"/v1/sessions/{sid}", headers=hdr).status_code == 204
    assert client.get(f"/v1/sessions/{sid}", headers=hdr).status_code == 404


def test_bad_session_options(client: TestClient) -> None:
    for options in (
        {"tracker": {"no_such_option": 1}},
        {"tracker": {"match_threshold": "high"}},
        {"tracker": {"select_threshold": 3.0}},
        {"tracker": {"box_iou_weight": 1.5}},
        {"backpressure": "sometimes"},
        {"queue_size": 0},
        {"unknown_field": True},
    ):
        resp = client.post("/v1/sessions", json=options)
        assert resp.status_code == 422, (options, resp.text)
        assert resp.json()["code"] in ("invalid_request", "invalid_tracker_option")
    assert client.post("/v1/sessions", json={"model": "other"}).status_code == 404


def test_ws_bad_token_closes_1008(client: TestClient) -> None:
    sid, _ = _session(client)
    url = f"/v1/sessions/{sid}/stream?token=wrong"
    with pytest.raises(WebSocketDisconnect) as exc, client.websocket_connect(url) as ws:
        ws.receive_json()
    assert exc.value.code == 1008


def test_ws_reconnect_continues(client: TestClient, video_frames: list[np.ndarray]) -> None:
    sid, token = _session(client)
    seen = []
    for part in (video_frames[:4], video_frames[4:]):
        with client.websocket_connect(f"/v1/sessions/{sid}/stream?token={token}") as ws:
            for f in part:
                ws.send_bytes(png_bytes(f))
                seen.append(ws.receive_json()["frame_index"])
    assert seen == list(range(len(video_frames)))


def test_ws_raw_frames_and_bad_messages(client: TestClient, video_frames: list[np.ndarray]) -> None:
    sid, token = _session(client)
    f = video_frames[0]
    with client.websocket_connect(f"/v1/sessions/{sid}/stream?token={token}") as ws:
        ws.send_text("not json")
        assert ws.receive_json()["code"] == "bad_message"
        ws.send_bytes(b"garbage")
        assert ws.receive_json()["code"] == "unsupported_frame"
        ws.send_json({"type": "raw", "height": f.shape[0], "width": f.shape[1]})
        ws.send_bytes(f.tobytes())
        result = ws.receive_json()
        assert result["type"] == "frame" and result["frame_index"] == 0
        ws.send_json({"type": "end"})
        assert ws.receive_json()["type"] == "end"


def test_api_keys_required_when_configured(video_frames: list[np.ndarray]) -> None:
    with TestClient(create_app(Settings(api_keys="s3cret,sha256:" + "0" * 64))) as c:
        assert c.post("/v1/sessions").status_code == 401
        assert c.get("/v1/models").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=auth).status_code == 200
        sid = c.post("/v1/sessions", headers=auth).json()["session_id"]
        assert c.get("/healthz").status_code == 200
        url = f"/v1/sessions/{sid}/stream?token=x"
        with pytest.raises(WebSocketDisconnect) as exc, c.websocket_connect(url) as ws:
            ws.receive_json()
        assert exc.value.code == 1008


def test_metrics_count_frames(client: TestClient, video_frames: list[np.ndarray]) -> None:
    sid, token = _session(client)
    client.post(
        f"/v1/sessions/{sid}/frames",
        content=png_bytes(video_frames[0]),
        headers={"X-Session-Token": token},
    )
    text = client.get("/metrics").text
    assert 'ctvis_frames_total{path="http"} 1.0' in text
    assert "ctvis_batch_size_count 1.0" in text


def test_expired_session_is_404(video_frames: list[np.ndarray]) -> None:
    import time

    with TestClient(create_app(Settings(session_ttl_s=1))) as c:
        sid, token = _session(c)
        time.sleep(1.3)
        resp = c.post(
            f"/v1/sessions/{sid}/frames",
            content=png_bytes(video_frames[0]),
            headers={"X-Session-Token": token},
        )
        assert resp.status_code == 404 and resp.json()["code"] == "session_not_found"


def test_disconnect_mid_frame_leaves_a_consistent_session(
    client: TestClient, video_frames: list[np.ndarray]
) -> None:
    sid, token = _session(client)
    url = f"/v1/sessions/{sid}/stream?token={token}"
    with client.websocket_connect(url) as ws:
        ws.send_bytes(png_bytes(video_frames[0]))
        # leave without reading the reply: the frame may or may not have been applied
    hdr = {"X-Session-Token": token}
    done = client.get(f"/v1/sessions/{sid}", headers=hdr).json()["frame_index"]
    assert done in (0, 1)
    with client.websocket_connect(url) as ws:
        for f in video_frames[done:3]:
            ws.send_bytes(png_bytes(f))
            assert ws.receive_json()["frame_index"] == done
            done += 1
    assert client.get(f"/v1/sessions/{sid}", headers=hdr).json()["frame_index"] == 3
