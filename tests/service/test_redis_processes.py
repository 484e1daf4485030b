"""Sessions on a real Redis: replica restart, Redis outage, racing replicas."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.service.conftest import free_port, png_bytes

pytestmark = pytest.mark.redis
REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _start_server(port: int, redis_url: str) -> subprocess.Popen[str]:
    exe = shutil.which("ctvis") or str(Path(sys.executable).parent / "ctvis")
    proc = subprocess.Popen(
        [exe, "serve", "--port", str(port), "--redis-url", redis_url, "--log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not become ready")


def _post(base: str, sid: str, token: str, frame: np.ndarray) -> dict:
    resp = httpx.post(
        f"{base}/v1/sessions/{sid}/frames",
        content=png_bytes(frame),
        headers={"X-Session-Token": token},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def _ids(result: dict) -> list[tuple[int, str]]:
    return [(i["track_id"], i["segmentation"]["counts"]) for i in result["instances"]]


def test_session_survives_sigkill_of_its_replica(video_frames: list[np.ndarray]) -> None:
    port_a, port_b = free_port(), free_port()
    a = _start_server(port_a, REDIS_URL)
    b = _start_server(port_b, REDIS_URL)
    try:
        base_a, base_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
        created = httpx.post(f"{base_a}/v1/sessions", timeout=30).json()
        sid, token = created["session_id"], created["token"]
        half = len(video_frames) // 2
        interrupted = [_post(base_a, sid, token, f) for f in video_frames[:half]]
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
        interrupted += [_post(base_b, sid, token, f) for f in video_frames[half:]]
        ref = httpx.post(f"{base_b}/v1/sessions", timeout=30).json()
        straight = [_post(base_b, ref["session_id"], ref["token"], f) for f in video_frames]
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    assert [r["frame_index"] for r in interrupted] == list(range(len(video_frames)))
    assert [_ids(r) for r in interrupted] == [_ids(r) for r in straight]


def _redis_server(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            if client.ping():
                return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    raise AssertionError("redis-server did not start")


def test_redis_outage_gives_503_and_recovers(
    tmp_path: Path, video_frames: list[np.ndarray]
) -> None:
    port = free_port()
    server = _redis_server(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        with TestClient(create_app(Settings(redis_url=url))) as c:
            created = c.post("/v1/sessions").json()
            sid, hdr = created["session_id"], {"X-Session-Token": created["token"]}
            for f in video_frames[:2]:
                assert (
                    c.post(
                        f"/v1/sessions/{sid}/frames", content=png_bytes(f), headers=hdr
                    ).status_code
                    == 200
                )
            redis.Redis(port=port).shutdown(save=True)  # persists the sessions to dump.rdb
            server.wait(timeout=30)
            resp = c.post(
                f"/v1/sessions/{sid}/frames", content=png_bytes(video_frames[2]), headers=hdr
            )
            assert resp.status_code == 503
            assert resp.json()["code"] == "state_store_unavailable"
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").status_code == 503
            server = _redis_server(port, tmp_path)
            assert c.get("/readyz").status_code == 200
            resp = c.post(
                f"/v1/sessions/{sid}/frames", content=png_bytes(video_frames[2]), headers=hdr
            )
            assert resp.status_code == 200, resp.text
            assert resp.json()["frame_index"] == 2  # nothing lost, nothing skipped
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)


def test_racing_replicas_never_fork_a_session(video_frames: list[np.ndarray]) -> None:
    with (
        TestClient(create_app(Settings(redis_url=REDIS_URL))) as one,
        TestClient(create_app(Settings(redis_url=REDIS_URL))) as two,
    ):
        created = one.post("/v1/sessions").json()
        sid, hdr = created["session_id"], {"X-Session-Token": created["token"]}
        bodies = [png_bytes(f) for f in video_frames]

        def send(i: int) -> httpx.Response:
            client = one if i % 2 == 0 else two
            return client.post(f"/v1/sessions/{sid}/frames", content=bodies[i], headers=hdr)

        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(send, range(len(bodies))))
        ok = [r.json()["frame_index"] for r in responses if r.status_code == 200]
        others = [r.json()["code"] for r in responses if r.status_code != 200]
        assert set(others) <= {"session_busy", "state_conflict"}
        assert sorted(ok) == list(range(len(ok)))  # each accepted frame advanced exactly once
        info = one.get(f"/v1/sessions/{sid}", headers=hdr).json()
        assert info["frame_index"] == len(ok)
