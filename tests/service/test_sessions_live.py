"""Bad input against a live ``ctvis serve`` process: sessions, JSON bodies, logs, start-up.

Each case is one the issue reproduced against the real server; the server must answer it with
a clear 4xx and stay healthy at a bounded cost.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import free_port
from tests.service.live import LiveServer
from tests.service.test_session_limits import BAD_TRACKER_BODIES


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    env = {
        "CTVIS_MAX_SESSIONS": "3",
        "CTVIS_SESSION_TTL_S": "3",
        "CTVIS_BODY_IDLE_TIMEOUT_S": "1",
        "CTVIS_HEADER_TIMEOUT_S": "1",
    }
    with LiveServer(env) as live:
        yield live


def test_tracker_options_refused_and_memory_flat(server: LiveServer) -> None:
    before = server.rss_bytes()
    for body, option in BAD_TRACKER_BODIES:
        resp = httpx.post(
            server.url + "/v1/sessions",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["code"] == "invalid_tracker_option"
        assert option in resp.json()["message"]
    assert server.alive()
    assert server.rss_bytes() - before < 50 << 20


def test_abandoned_sessions_free_their_slots(server: LiveServer) -> None:
    time.sleep(3.5)  # sessions of other tests expire first
    for _ in range(3):
        assert httpx.post(server.url + "/v1/sessions", timeout=10).status_code == 201
    refused = httpx.post(server.url + "/v1/sessions", timeout=10)
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_sessions"
    time.sleep(4.0)  # nobody deletes them: their TTL (3 s) passes
    assert httpx.post(server.url + "/v1/sessions", timeout=10).status_code == 201


def test_stalled_json_body_times_out(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"tracker":'
        )
        started = time.monotonic()
        reply = b""
        while chunk := conn.recv(4096):  # the server closes after its answer
            reply += chunk
        waited = time.monotonic() - started
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 408"), reply
    assert "body_timeout" in reply
    assert waited < 5
    assert server.alive()


def test_query_secrets_never_reach_the_log(server: LiveServer) -> None:
    created = httpx.post(server.url + "/v1/sessions", timeout=10).json()
    token = created["token"]
    resp = httpx.get(
        f"{server.url}/v1/sessions/{created['session_id']}",
        params={"token": token, "api_key": "KEY-IN-THE-URL"},
        timeout=10,
    )
    assert resp.status_code == 200
    time.sleep(0.3)
    log = server.log()
    assert "token=[redacted]" in log, log[-2000:]
    assert token not in log and "KEY-IN-THE-URL" not in log


def test_serve_with_a_missing_checkpoint_says_so_in_one_line(tmp_path: Path) -> None:
    exe = shutil.which("ctvis") or str(Path(sys.executable).parent / "ctvis")
    missing = tmp_path / "nonexistent"
    done = subprocess.run(
        [exe, "serve", "--checkpoint", str(missing), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""  # no URL banner for a server that will not start
    lines = done.stderr.strip().splitlines()
    assert lines == [f"ctvis serve: checkpoint {missing}: no such directory"], done.stderr
    (tmp_path / "empty").mkdir()
    done = subprocess.run(
        [exe, "serve", "--checkpoint", str(tmp_path / "empty"), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "config.json is missing" in done.stderr
    assert "Traceback" not in done.stderr


def test_incomplete_headers_are_dropped_but_websockets_stay(
    server: LiveServer, video_frames: list
) -> None:
    from websockets.sync.client import connect

    from tests.service.conftest import png_bytes

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
        started = time.monotonic()
        assert conn.recv(4096) == b""  # closed by the server
        assert time.monotonic() - started < 5
    with httpx.Client(base_url=server.url, timeout=10) as client:  # keep-alive still works
        for _ in range(2):
            assert client.get("/healthz").status_code == 200
            time.sleep(1.5)
    time.sleep(3.5)  # free the session slots of the other tests
    created = httpx.post(server.url + "/v1/sessions", timeout=10).json()
    url = f"{server.ws_url}/v1/sessions/{created['session_id']}/stream?token={created['token']}"
    with connect(url, open_timeout=10) as ws:
        time.sleep(1.2)  # longer than the header deadline (1 s), within the TTL (3 s)
        ws.send(png_bytes(video_frames[0]))
        assert '"type":"frame"' in str(ws.recv(timeout=30)).replace(" ", "")
