"""Rolling restarts (SIGTERM, one process at a time) of APIs and workers lose nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.video.overlay import OverlayWriter
from model.video.reader import FrameSource
from model.video.runner import track_frames
from service.main import create_app
from service.settings import Settings
from tests.service.conftest import assert_same_instances, free_port, png_bytes

pytestmark = pytest.mark.redis
REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Cluster:
    def __init__(self, tmp: Path) -> None:
        tag = uuid.uuid4().hex
        self.env = {**os.environ, "CTVIS_REDIS_URL": REDIS_URL, "CTVIS_LOG_LEVEL": "error",
                    "CTVIS_FRAMES_STREAM": f"ctvis:test-frames:{tag}",
                    "CTVIS_JOBS_STREAM": f"ctvis:test-jobs:{tag}", "CTVIS_JOB_DIR": str(tmp),
                    "CTVIS_CLAIM_IDLE_MS": "1000", "CTVIS_JOB_CHECKPOINT_CLIPS": "1"}  # fmt: skip
        self.exe = shutil.which("ctvis") or str(Path(sys.executable).parent / "ctvis")
        self.ports = [free_port(), free_port()]
        self.apis = [self.start_api(p) for p in self.ports]
        self.workers = [self.start_worker() for _ in range(2)]

    def start_api(self, port: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([self.exe, "serve", "--no-worker", "--port", str(port)],
                                env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return proc
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError("API did not start")

    def start_worker(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen([self.exe, "worker"], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
        assert proc.stdout is not None and "ctvis worker: model" in proc.stdout.readline()
        return proc

    def restart(self, kind: str, index: int) -> None:
        procs = self.apis if kind == "api" else self.workers
        procs[index].send_signal(signal.SIGTERM)
        procs[index].communicate(timeout=120)
        procs[index] = self.start_api(self.ports[index]) if kind == "api" else self.start_worker()

    def stop(self) -> None:
        for p in [*self.apis, *self.workers]:
            if p.poll() is None:
                p.terminate()
            p.communicate(timeout=60)


def _stream(ports: list[int], frames: list[bytes], results: dict[int, dict]) -> None:
    """Send every frame once in order, failing over between the two APIs."""
    api = 0
    base = f"http://127.0.0.1:{ports[api]}"
    created = httpx.post(f"{base}/v1/sessions", timeout=30).json()
    sid, hdr = created["session_id"], {"X-Session-Token": created["token"]}
    nxt = 0
    while nxt < len(frames):
        base = f"http://127.0.0.1:{ports[api]}"
        try:
            # resynchronise: the server's counter says which frame comes next
            nxt = httpx.get(f"{base}/v1/sessions/{sid}", headers=hdr, timeout=30).json()[
                "frame_index"
            ]
            if nxt >= len(frames):
                break
            resp = httpx.post(f"{base}/v1/sessions/{sid}/frames", content=frames[nxt],
                              headers=hdr, timeout=60)  # fmt: skip
        except httpx.TransportError:
            api = 1 - api
            time.sleep(0.1)
            continue
        if resp.status_code == 200:
            body = resp.json()
            results[body["frame_index"]] = body
        elif resp.json()["code"] not in ("worker_lost", "worker_unavailable", "session_busy"):
            raise AssertionError(resp.text)
        time.sleep(0.05)


def test_rolling_restart_of_every_process(tmp_path: Path, video_frames: list[np.ndarray]) -> None:
    frames = [png_bytes(f) for f in video_frames] * 3  # 24 frames per session
    clip = tmp_path / "job.mp4"
    with OverlayWriter(clip, 10, (video_frames[0].shape[1], video_frames[0].shape[0])) as w:
        for f in video_frames * 2:
            w.write(f)
    cluster = Cluster(tmp_path / "jobs")
    per_session: list[dict[int, dict]] = [{} for _ in range(4)]
    try:
        threads = [threading.Thread(target=_stream, args=(cluster.ports, frames, r))
                   for r in per_session]  # fmt: skip
        for t in threads:
            t.start()
        base = f"http://127.0.0.1:{cluster.ports[1]}"
        job_id = httpx.post(f"{base}/v1/videos", content=clip.read_bytes()).json()["job_id"]
        for kind, index in (("api", 0), ("worker", 0), ("api", 1), ("worker", 1)):
            time.sleep(1.0)
            cluster.restart(kind, index)
        for t in threads:
            t.join(timeout=300)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = httpx.get(f"{base}/v1/videos/{job_id}").json()
            if status["state"] in ("done", "failed", "dead_letter"):
                break
            time.sleep(0.3)
        assert status["state"] == "done", status
        result = httpx.get(f"{base}/v1/videos/{job_id}/result").json()
    finally:
        cluster.stop()
    with TestClient(create_app(Settings())) as local:
        created = local.post("/v1/sessions").json()
        hdr = {"X-Session-Token": created["token"]}
        straight = [
            local.post(
                f"/v1/sessions/{created['session_id']}/frames", content=f, headers=hdr
            ).json()["instances"]
            for f in frames
        ]
        served = local.app.state.model
        expected = track_frames(FrameSource(clip), served.segmenter, served.model_cfg,
                                served.preprocess_cfg, served.tracker_cfg).results  # fmt: skip
    for results in per_session:
        # every frame advanced the session exactly once; answered frames match the oracle
        assert set(results) <= set(range(len(frames)))
        assert len(results) >= len(frames) - 4  # a reply may be lost in a restart, not a frame
        for index, body in results.items():
            assert_same_instances(body["instances"], straight[index], index)
    assert result == json.loads(json.dumps(expected))
