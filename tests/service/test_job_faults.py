"""Video jobs on worker processes: exact resume after a worker dies, dead letters."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from model.video.overlay import OverlayWriter
from model.video.reader import FrameSource
from model.video.runner import track_frames
from service.keys import job_key
from service.main import create_app
from service.settings import Settings
from tests.service.conftest import free_port
from tests.service.faults import worker_command, worker_env
from training.data.synthetic import config_for, render_video

pytestmark = pytest.mark.redis
REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frames, _ = render_video(21, config_for("val", num_frames=30, height=64, width=80))
    path = tmp_path_factory.mktemp("jobs") / "long.mp4"
    with OverlayWriter(path, 10, (80, 64)) as writer:
        for f in frames:
            writer.write(f)
    return path


class Workers:
    """ctvis worker processes on private streams and a private job directory."""

    def __init__(self, tmp: Path) -> None:
        tag = uuid.uuid4().hex
        self.job_dir = tmp / "jobs"
        self.env = {"CTVIS_FRAMES_STREAM": f"ctvis:test-frames:{tag}",
                    "CTVIS_JOBS_STREAM": f"ctvis:test-jobs:{tag}",
                    "CTVIS_JOB_DIR": str(self.job_dir), "CTVIS_JOB_CHECKPOINT_CLIPS": "1",
                    "CTVIS_MAX_JOB_ATTEMPTS": "3"}  # fmt: skip
        self.procs: list[subprocess.Popen[str]] = []

    def settings(self) -> Settings:
        return Settings(
            redis_url=REDIS_URL, worker=False, frames_stream=self.env["CTVIS_FRAMES_STREAM"],
            jobs_stream=self.env["CTVIS_JOBS_STREAM"], job_dir=str(self.job_dir),
        )  # fmt: skip

    def start(self, *extra: str, fault: str | None = None, **env: str) -> subprocess.Popen[str]:
        """A worker with ``extra`` flags, ``env`` overrides and ``fault`` (a
        ``FaultInjection`` spec) installed."""
        proc = subprocess.Popen(
            worker_command(fault, "--redis-url", REDIS_URL, "--log-level", "error", *extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=worker_env({**os.environ, **self.env, **env}),
        )
        assert proc.stdout is not None and "ctvis worker: model" in proc.stdout.readline()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
            p.communicate(timeout=60)


def _wait(api: TestClient, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = api.get(f"/v1/videos/{job_id}").json()
        if status["state"] in ("done", "failed", "cancelled", "dead_letter"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"job stuck: {status}")


def _expected(api: TestClient, video: Path, video_id: int = 1) -> list:
    served = api.app.state.model
    result = track_frames(
        FrameSource(video), served.segmenter, served.model_cfg, served.preprocess_cfg,
        served.tracker_cfg, video_id=video_id,
    )  # fmt: skip
    return json.loads(json.dumps(result.results))


def test_job_resumes_exactly_after_its_worker_dies(tmp_path: Path, long_video: Path) -> None:
    workers = Workers(tmp_path)
    try:
        workers.start(fault="crash_after_job_frames=17")
        with TestClient(create_app(workers.settings())) as api:
            job_id = api.post("/v1/videos", content=long_video.read_bytes()).json()["job_id"]
            dying = workers.procs[0]
            dying.wait(timeout=120)
            assert dying.returncode == 137
            workers.start(CTVIS_JOB_CLAIM_IDLE_MS="300")
            status = _wait(api, job_id)
            assert status["state"] == "done", status
            assert status["attempts"] == 2
            result = api.get(f"/v1/videos/{job_id}/result").json()
            assert result == _expected(api, long_video)
            key = job_key(workers.env["CTVIS_JOBS_STREAM"], job_id)
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            resumed = int(client.hget(key, "resumed_from") or 0)
            assert resumed >= 10  # continued from a checkpoint, did not start over
            assert client.hget(key, "progress") is None  # checkpoint dropped once done
            assert client.ttl(key) > 0
            client.close()
    finally:
        workers.stop()


def test_failing_job_goes_to_dead_letter(tmp_path: Path, long_video: Path) -> None:
    workers = Workers(tmp_path)
    port = free_port()
    try:
        workers.start("--metrics-port", str(port), fault="fail_job_video_id=99")
        with TestClient(create_app(workers.settings())) as api:
            bad = api.post("/v1/videos?video_id=99", content=long_video.read_bytes()).json()
            good = api.post("/v1/videos?max_frames=6", content=long_video.read_bytes()).json()
            status = _wait(api, bad["job_id"])
            assert status["state"] == "dead_letter"
            assert status["attempts"] == 3
            assert "injected job failure" in status["error"]["message"]
            assert _wait(api, good["job_id"])["state"] == "done"  # the worker stayed up
            assert api.get(f"/v1/videos/{bad['job_id']}/result").json()["code"] == "job_not_done"
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'ctvis_video_jobs_total{state="dead_letter"} 1.0' in text
        assert 'ctvis_video_jobs_total{state="done"} 1.0' in text
    finally:
        workers.stop()


def test_events_stream_from_redis_jobs(tmp_path: Path, long_video: Path) -> None:
    workers = Workers(tmp_path)
    try:
        workers.start()
        with TestClient(create_app(workers.settings())) as api:
            job = api.post("/v1/videos?max_frames=10&overlay=true", content=long_video.read_bytes())
            job_id = job.json()["job_id"]
            events = api.get(f"/v1/videos/{job_id}/events").text
            assert "event: done" in events
            assert api.get(f"/v1/videos/{job_id}/overlay").status_code == 200
            assert api.delete(f"/v1/videos/{job_id}").status_code == 204
            assert api.get(f"/v1/videos/{job_id}").status_code == 404
            assert not (workers.job_dir / job_id).exists()
    finally:
        workers.stop()
