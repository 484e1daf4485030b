"""Live mode survives a server restart (issue test 3): the page reconnects to the same
session and the track ids continue exactly as in an uninterrupted run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import redis
from websockets.sync.client import connect

from tests.browser.conftest import API_KEY, Server, open_page, wait_for
from tests.browser.conftest import save_screenshot as shoot
from tests.service.conftest import free_port

REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def record_sockets(page: Any) -> list[dict[str, Any]]:
    """Per WebSocket of the page: its URL, binary frames sent and JSON replies, in order."""
    sockets: list[dict[str, Any]] = []

    def on_socket(ws: Any) -> None:
        rec: dict[str, Any] = {"url": ws.url, "sent": [], "replies": []}
        sockets.append(rec)
        ws.on("framesent", lambda p: isinstance(p, bytes) and rec["sent"].append(p))
        ws.on("framereceived", lambda p: rec["replies"].append(json.loads(p)))

    page.on("websocket", on_socket)
    return sockets


def processed_frames(sockets: list[dict[str, Any]]) -> list[bytes]:
    """The frames the server tracked, in order: on a drop, frames not yet started are lost
    and the one in flight is kept, so each connection contributes a prefix of what it sent;
    the next connection's first frame index says how long that prefix is."""
    processed: list[bytes] = []
    for i, sock in enumerate(sockets):
        frames = [r for r in sock["replies"] if r["type"] == "frame"]
        assert [r["frame_index"] for r in frames] == list(
            range(len(processed), len(processed) + len(frames))
        ), "frame indices must continue across connections"
        later = [r["frame_index"] for s in sockets[i + 1 :] for r in s["replies"][:1]]
        count = later[0] - len(processed) if later else len(frames)
        assert len(frames) <= count <= len(sock["sent"]), (len(frames), count, len(sock["sent"]))
        processed += sock["sent"][:count]
    return processed


def replay(server: Server, frames: list[bytes]) -> list[list[tuple[int, int]]]:
    """(track id, category id) per frame of the same frames in a fresh uninterrupted session."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    created = httpx.post(f"{server.url}/v1/sessions", json={}, headers=auth, timeout=30).json()
    url = (
        f"ws://127.0.0.1:{server.port}/v1/sessions/{created['session_id']}/stream"
        f"?token={created['token']}&api_key={API_KEY}"
    )
    out = []
    with connect(url, open_timeout=30) as ws:
        for frame in frames:
            ws.send(frame)
            reply = json.loads(ws.recv(timeout=60))
            assert reply["type"] == "frame", reply
            out.append([(i["track_id"], i["category_id"]) for i in reply["instances"]])
        ws.send(json.dumps({"type": "end"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "end"
    token = {"X-Session-Token": created["token"], **auth}
    httpx.delete(f"{server.url}/v1/sessions/{created['session_id']}", headers=token, timeout=30)
    return out


def test_live_reconnects_after_server_side_close(page: Any, artefacts: Path) -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:  # fail loudly: the test command provides Redis
        raise AssertionError(f"no Redis at {REDIS_URL} (scripts/ensure_redis.sh): {exc}") from exc
    server = Server(artefacts, free_port(), redis_url=REDIS_URL)
    server.start()
    try:
        sockets = record_sockets(page)
        open_page(page, server)
        page.click("#tab-live")
        page.fill("#send-fps", "8")
        page.click("#live-start")
        answered = "n => Number(document.getElementById('live-view').dataset.answered) >= n"
        wait_for(page, answered, 8, timeout=60)
        session_id = page.get_attribute("#live-view", "data-session-id")

        server.stop()  # SIGTERM: uvicorn closes the WebSocket with 1012 mid-stream
        wait_for(page, "() => document.getElementById('stat-status').textContent !== 'live'")
        before = int(page.get_attribute("#live-view", "data-answered") or 0)
        server.start()  # same port, same Redis: the session is still there
        reconnected = "() => Number(document.getElementById('live-view').dataset.reconnects) >= 1"
        wait_for(page, reconnected, timeout=60)
        wait_for(page, answered, before + 8, timeout=60)
        page.click("#live-pause")
        wait_for(page, "() => document.getElementById('live-view').dataset.pending === '0'")
        assert page.is_hidden("#error"), page.text_content("#error-text")
        assert page.get_attribute("#live-view", "data-session-id") == session_id
        shoot(page, artefacts, "live-reconnect")

        assert len(sockets) >= 2
        for sock in sockets:
            parsed = urlparse(sock["url"])
            assert parsed.path == f"/v1/sessions/{session_id}/stream"
            assert "api_key" in parse_qs(parsed.query)
        replies = [r for s in sockets for r in s["replies"] if r["type"] == "frame"]
        assert {r["session_id"] for r in replies} == {session_id}
        ids = sorted({i["track_id"] for r in replies for i in r["instances"]})
        assert page.get_attribute("#live-view", "data-all-track-ids") == ",".join(map(str, ids))

        # The same frames in one uninterrupted session give the same ids on every frame.
        frames = processed_frames(sockets)
        expected = replay(server, frames)
        for reply in replies:
            got = [(i["track_id"], i["category_id"]) for i in reply["instances"]]
            assert got == expected[reply["frame_index"]], reply["frame_index"]
        page.click("#live-end")
        page.wait_for_selector("#live-panel[data-state='ended']", timeout=30_000)
    finally:
        server.stop()
