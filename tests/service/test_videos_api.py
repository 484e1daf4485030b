"""Video jobs: upload, progress, result identical to the offline runner, overlay, errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import av
import pytest
from fastapi.testclient import TestClient

from cli.main import main as ctvis
from model.video.overlay import OVERLAY_MIN_SCORE
from model.video.reader import FrameSource
from model.video.runner import track_frames
from service.keys import job_key, jobs_stream_key
from service.main import create_app
from service.settings import Settings


@pytest.fixture()
def client() -> TestClient:
    with TestClient(create_app(Settings(max_video_frames=50))) as c:
        yield c


def _wait(client: TestClient, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/v1/videos/{job_id}").json()
        if status["state"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_job_result_equals_offline_runner(client: TestClient, mp4_file: Path) -> None:
    resp = client.post("/v1/videos?overlay=true&video_id=7", content=mp4_file.read_bytes())
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    assert resp.headers["Location"] == f"/v1/videos/{job_id}"
    status = _wait(client, job_id)
    assert status["state"] == "done", status
    source = FrameSource(mp4_file)
    assert status["frames_done"] == status["frames_total"] == len(source)
    result = client.get(f"/v1/videos/{job_id}/result").json()
    served = client.app.state.model
    expected = track_frames(
        FrameSource(mp4_file), served.segmenter, served.model_cfg, served.preprocess_cfg,
        served.tracker_cfg, video_id=7,
    ).results  # fmt: skip
    assert result == json.loads(json.dumps(expected))
    overlay = client.get(f"/v1/videos/{job_id}/overlay")
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "video/mp4"
    out = mp4_file.parent / "overlay.mp4"
    out.write_bytes(overlay.content)
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(source)
    events = client.get(f"/v1/videos/{job_id}/events").text
    assert "event: done" in events


def test_multipart_upload_with_stride(client: TestClient, mp4_file: Path) -> None:
    files = {"file": ("clip.mp4", mp4_file.read_bytes(), "video/mp4")}
    resp = client.post("/v1/videos?frame_stride=2&max_frames=3", files=files)
    assert resp.status_code == 202, resp.text
    status = _wait(client, resp.json()["job_id"])
    assert status["state"] == "done" and status["frames_done"] == 3


@pytest.mark.parametrize(
    "payload",
    [b"", b"this is a text file, not a video", None],
    ids=["empty", "text", "truncated-mp4"],
)
def test_bad_uploads_are_4xx(client: TestClient, mp4_file: Path, payload: bytes | None) -> None:
    data = mp4_file.read_bytes()[:200] if payload is None else payload
    resp = client.post("/v1/videos", content=data)
    assert resp.status_code == 415, resp.text
    assert resp.json()["code"] == "unsupported_video"


def test_limits_and_unknown_jobs(client: TestClient, mp4_file: Path) -> None:
    resp = client.post("/v1/videos?max_frames=51", content=mp4_file.read_bytes())
    assert resp.status_code == 422 and resp.json()["code"] == "too_many_frames"
    assert client.post("/v1/videos?frame_stride=0", content=b"x").status_code == 422
    assert client.get("/v1/videos/unknown").status_code == 404
    assert client.get("/v1/videos/unknown/result").json()["code"] == "job_not_found"
    with TestClient(create_app(Settings(max_upload_bytes=1024))) as small:
        resp = small.post("/v1/videos", content=mp4_file.read_bytes())
        assert resp.status_code == 413 and resp.json()["code"] == "upload_too_large"


def test_cancel_then_delete(client: TestClient, mp4_file: Path) -> None:
    job_id = client.post("/v1/videos", content=mp4_file.read_bytes()).json()["job_id"]
    assert client.delete(f"/v1/videos/{job_id}").status_code == 204
    status = _wait(client, job_id)
    assert status["state"] in ("cancelled", "done")
    if status["state"] == "cancelled":
        assert client.get(f"/v1/videos/{job_id}/result").json()["code"] == "job_not_done"
    assert client.delete(f"/v1/videos/{job_id}").status_code == 204
    assert client.get(f"/v1/videos/{job_id}").status_code == 404


def test_jobs_are_private_to_their_api_key(mp4_file: Path) -> None:
    with TestClient(create_app(Settings(api_keys="alice,bob"))) as c:
        alice, bob = {"Authorization": "Bearer alice"}, {"Authorization": "Bearer bob"}
        job_id = c.post("/v1/videos", content=mp4_file.read_bytes(), headers=alice).json()["job_id"]
        assert c.get(f"/v1/videos/{job_id}", headers=bob).status_code == 404
        assert c.get(f"/v1/videos/{job_id}", headers=alice).status_code == 200
        _wait_with(c, job_id, alice)


def _wait_with(c: TestClient, job_id: str, headers: dict) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if c.get(f"/v1/videos/{job_id}", headers=headers).json()["state"] != "running":
            return
        time.sleep(0.05)


class _OverlaySpy:
    """Wraps ``service.jobs.video.overlay_tracks``: records each job's score and drawn ids
    (sorted)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import service.jobs.video

        self.calls: list[tuple[float, list[int]]] = []
        self._real = service.jobs.video.overlay_tracks
        monkeypatch.setattr(service.jobs.video, "overlay_tracks", self)

    def __call__(self, result: Any, model_cfg: Any, min_score: float) -> list[Any]:
        tracks = self._real(result, model_cfg, min_score)
        self.calls.append((min_score, sorted(t[0] for t in tracks)))
        return tracks


def test_overlay_score_parameter(
    mp4_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overlay draws the results entries at or above ``overlay_score`` (default: the
    constant ``ctvis track`` uses), so every drawn id is a ``track_id`` of the result; the
    result, track ids included, is byte for byte what ``ctvis track`` writes."""
    monkeypatch.delenv("CTVIS_CHECKPOINT")  # the bundled demo model: real tracks and scores
    spy = _OverlaySpy(monkeypatch)
    data = mp4_file.read_bytes()
    cli_out = tmp_path / "track.json"
    argv = ["track", str(mp4_file), "--out", str(cli_out), "--device", "cpu", "--no-progress"]
    assert ctvis(argv) == 0
    with TestClient(create_app(Settings())) as client:
        for query, min_score in (("", OVERLAY_MIN_SCORE), ("&overlay_score=0", 0.0)):
            resp = client.post(f"/v1/videos?overlay=true{query}", content=data)
            assert resp.status_code == 202, resp.text
            job_id = resp.json()["job_id"]
            assert _wait(client, job_id)["state"] == "done"
            raw = client.get(f"/v1/videos/{job_id}/result").content
            assert raw == cli_out.read_bytes()
            result = json.loads(raw)
            assert spy.calls[-1] == (
                min_score,
                sorted({r["track_id"] for r in result if r["score"] >= min_score}),
            )
        # The demo model finds more tracks in this clip than it has classes: the official
        # top-k leaves one out of the results, and so the overlay leaves it out too.
        served = client.app.state.model
        expected = track_frames(
            FrameSource(mp4_file), served.segmenter, served.model_cfg, served.preprocess_cfg,
            served.tracker_cfg,
        )  # fmt: skip
        assert len(expected.entries) > len({r["track_id"] for r in expected.results})
        for bad in ("1.5", "-0.1", "nan", "high"):
            resp = client.post(f"/v1/videos?overlay=true&overlay_score={bad}", content=data)
            assert resp.status_code == 422, (bad, resp.text)


@pytest.mark.redis
def test_overlay_score_reaches_the_redis_worker(
    tmp_path: Path, mp4_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``overlay_score`` travels with the job to a ``ctvis worker`` (here run in process)."""
    import threading
    import uuid

    from service.jobs.redis_worker import JobWorker

    redis_url = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    tag = uuid.uuid4().hex
    settings = Settings(
        redis_url=redis_url, worker=False, frames_stream=f"ctvis:test-frames:{tag}",
        jobs_stream=f"ctvis:test-jobs:{tag}", job_dir=str(tmp_path / "jobs"),
    )  # fmt: skip
    spy = _OverlaySpy(monkeypatch)
    with TestClient(create_app(settings)) as api:
        resp = api.post("/v1/videos?overlay=true&overlay_score=0.05", content=mp4_file.read_bytes())
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        worker = JobWorker(
            redis_url, api.app.state.model, settings.job_dir, stream=settings.jobs_stream
        )
        try:
            claimed = worker.next_job(block_ms=2000)
            assert claimed is not None and claimed[1] == job_id
            assert worker.run_one(*claimed, threading.Event()) == "done"
            assert _wait(api, job_id)["state"] == "done"
            result = api.get(f"/v1/videos/{job_id}/result").json()
            drawn = sorted({r["track_id"] for r in result if r["score"] >= 0.05})
            assert spy.calls == [(0.05, drawn)]
            assert api.get(f"/v1/videos/{job_id}/overlay").status_code == 200
        finally:
            worker.client.delete(
                jobs_stream_key(settings.jobs_stream), job_key(settings.jobs_stream, job_id)
            )
            worker.client.close()
