"""Video-job admission limits, in process: upload size, pixel budget, pending jobs and their
bytes (local and Redis job managers), ``video_id`` range, and readable job errors."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.bodies import MULTIPART_ALLOWANCE
from service.errors import ApiError
from service.jobs.admission import JobLimits
from service.jobs.redis_manager import RedisJobManager
from service.jobs.redis_worker import JobWorker
from service.keys import job_key, jobs_stream_key, pending_bytes_key, pending_key
from service.main import create_app
from service.settings import Settings
from tests.media import h264_bytes

REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _wait(client: TestClient, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/v1/videos/{job_id}").json()
        if status["state"] in ("done", "failed", "cancelled", "dead_letter"):
            return status
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def _leftovers(client: TestClient) -> list[Path]:
    return list(client.app.state.jobs.root.iterdir())


def _chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.fixture()
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(max_video_frames=50))) as c:
        yield c


@pytest.mark.parametrize("video_id", [10**30, 2**31, -1])
def test_video_id_out_of_range(client: TestClient, mp4_file: Path, video_id: int) -> None:
    resp = client.post(f"/v1/videos?video_id={video_id}", content=mp4_file.read_bytes())
    assert resp.status_code == 422, resp.text
    assert resp.json()["code"] == "invalid_request" and "video_id" in resp.json()["message"]
    assert _leftovers(client) == []


def test_largest_video_id_reaches_the_results(client: TestClient, mp4_file: Path) -> None:
    resp = client.post(f"/v1/videos?video_id={2**31 - 1}", content=mp4_file.read_bytes())
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    assert _wait(client, job_id)["state"] == "done"
    results = client.get(f"/v1/videos/{job_id}/result").json()
    assert results and {r["video_id"] for r in results} == {2**31 - 1}


def test_upload_size_limit_raw_and_multipart(mp4_file: Path) -> None:
    data = mp4_file.read_bytes()
    with TestClient(create_app(Settings(max_upload_bytes=1024))) as small:
        for kwargs in (
            {"content": data},  # Content-Length: refused before reading
            {"content": _chunks(data)},  # chunked: refused at the limit
            {"files": {"file": ("clip.mp4", data, "video/mp4")}},
        ):
            resp = small.post("/v1/videos", **kwargs)
            assert resp.status_code == 413, resp.text
            assert resp.json()["code"] == "upload_too_large"
        padded = {"file": ("clip.mp4", b"x" * 1000, "video/mp4"), "pad": ("p", b"y" * 500)}
        assert small.post("/v1/videos", files=padded).json()["code"] != "upload_too_large"
        big = {"file": ("clip.mp4", b"x" * 100, "video/mp4"), "pad": ("p", b"y" * 70000)}
        resp = small.post("/v1/videos", files=big)  # the framing allowance is not a loophole
        assert resp.status_code == 413 and MULTIPART_ALLOWANCE < 70000
        assert _leftovers(small) == []


def test_frames_over_the_pixel_budget(mp4_file: Path) -> None:
    data = mp4_file.read_bytes()  # 96x72 frames
    with TestClient(create_app(Settings(max_video_pixels=64 * 64))) as tight:
        for kwargs in ({"content": data}, {"files": {"file": ("clip.mp4", data, "video/mp4")}}):
            resp = tight.post("/v1/videos", **kwargs)
            assert resp.status_code == 413, resp.text
            error = resp.json()
            assert error["code"] == "video_too_large"
            assert "96x72" in error["message"] and "4096 pixels" in error["message"]
            assert str(tight.app.state.jobs.root) not in error["message"]
        assert _leftovers(tight) == []
        assert tight.app.state.jobs._uploads == {}  # the refused upload's place is free


def test_resolution_change_mid_stream_fails_the_job_readably() -> None:
    with TestClient(create_app(Settings(max_video_pixels=64 * 64))) as tight:
        resp = tight.post("/v1/videos", content=h264_bytes(64, 64, 3) + h264_bytes(96, 80, 3))
        assert resp.status_code == 202, resp.text  # the metadata shows 64x64
        status = _wait(tight, resp.json()["job_id"])
        assert status["state"] == "failed"
        error = status["error"]
        assert error["code"] in ("unsupported_video", "video_too_large")
        assert "4096 pixels" in error["message"]
        root = str(tight.app.state.jobs.root)
        assert root not in error["message"] and "0x" not in error["message"]


def test_pending_job_cap_local(mp4_file: Path) -> None:
    settings = Settings(max_pending_jobs=1)
    with TestClient(create_app(settings)) as c:
        jobs, limits = c.app.state.jobs, JobLimits.from_settings(settings)
        c.portal.call(jobs.reserve, "someone-uploading", 0, limits)
        resp = c.post("/v1/videos", content=mp4_file.read_bytes())
        assert resp.status_code == 429, resp.text
        assert resp.json()["code"] == "too_many_jobs" and resp.headers["Retry-After"]
        assert _leftovers(c) == []
        c.portal.call(jobs.release, "someone-uploading")
        resp = c.post("/v1/videos", content=mp4_file.read_bytes())
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        # queued or running, the job holds the only place
        if c.get(f"/v1/videos/{job_id}").json()["state"] in ("queued", "running"):
            with pytest.raises(ApiError) as exc:
                c.portal.call(jobs.reserve, "next", 0, limits)
            assert exc.value.code == "too_many_jobs"
        assert _wait(c, job_id)["state"] == "done"
        c.portal.call(jobs.reserve, "next", 0, limits)  # free again once it finished


def test_job_bytes_cap_local(mp4_file: Path) -> None:
    data = mp4_file.read_bytes()
    settings = Settings(max_job_bytes=len(data) + 100)
    with TestClient(create_app(settings)) as c:
        jobs, limits = c.app.state.jobs, JobLimits.from_settings(settings)
        c.portal.call(jobs.reserve, "someone-uploading", 200, limits)
        for body in (data, _chunks(data)):  # declared up front / counted while streaming
            resp = c.post("/v1/videos", content=body)
            assert resp.status_code == 507, resp.text
            assert resp.json()["code"] == "job_storage_full"
        assert _leftovers(c) == []
        assert list(jobs._uploads) == ["someone-uploading"]
        c.portal.call(jobs.release, "someone-uploading")
        resp = c.post("/v1/videos", content=_chunks(data))
        assert resp.status_code == 202, resp.text
        assert jobs.jobs[resp.json()["job_id"]].input_bytes == len(data)
        _wait(c, resp.json()["job_id"])


@pytest.fixture()
def redis_jobs(tmp_path: Path) -> Iterator[tuple[RedisJobManager, RedisJobManager, str]]:
    """Two API replicas' job managers on a private jobs stream."""
    stream = f"ctvis:test-jobs:{uuid.uuid4().hex}"
    a = RedisJobManager(REDIS_URL, tmp_path / "jobs", 50, 120, stream)
    b = RedisJobManager(REDIS_URL, tmp_path / "jobs", 50, 120, stream)
    yield a, b, stream
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(pending_key(stream), pending_bytes_key(stream))
    client.close()


@pytest.mark.redis
def test_redis_admission_across_replicas(
    redis_jobs: tuple[RedisJobManager, RedisJobManager, str],
) -> None:
    a, b, stream = redis_jobs
    limits = JobLimits(2, max_job_bytes=1000, max_video_pixels=4096, upload_lease_s=60)
    client = redis.Redis.from_url(REDIS_URL)
    pending, pending_bytes = pending_key(stream), pending_bytes_key(stream)

    async def scenario() -> None:
        await a.reserve("one", 400, limits)
        await b.reserve("two", 500, limits)
        with pytest.raises(ApiError) as exc:
            await b.reserve("three", 0, limits)  # a's upload counts on b
        assert exc.value.status == 429 and exc.value.code == "too_many_jobs"
        with pytest.raises(ApiError) as exc:
            await a.reserve("two", 700, limits)  # growing past the bytes of all
        assert exc.value.status == 507 and exc.value.code == "job_storage_full"
        assert "400" in exc.value.message and "1000" in exc.value.message
        await a.reserve("two", 600, limits)  # exactly full
        assert 0 < client.ttl(pending) <= 120 and 0 < client.ttl(pending_bytes) <= 120
        await b.release("one")
        await a.reserve("three", 400, limits)
        await a.release("two")
        await a.release("three")
        assert client.exists(pending, pending_bytes) == 0  # nothing left behind
        # a replica that dies mid-upload: its reservation lapses with its lease
        short = JobLimits(1, 1000, 4096, upload_lease_s=0.3)
        await a.reserve("orphan", 100, short)
        with pytest.raises(ApiError):
            await b.reserve("next", 100, short)
        await asyncio.sleep(0.4)
        await b.reserve("next", 100, short)
        assert client.zrange(pending, 0, -1) == [b"next"]
        assert client.hgetall(pending_bytes) == {b"next": b"100"}
        await b.release("next")
        await a.close()
        await b.close()

    asyncio.run(scenario())
    client.close()


@pytest.mark.redis
def test_redis_jobs_hold_their_place_until_they_end(tmp_path: Path, mp4_file: Path) -> None:
    """A queued job keeps its place and bytes; the worker frees them when the job ends, also
    when it fails on a frame over the budget (the API's budget travels with the job)."""
    tag = uuid.uuid4().hex
    settings = Settings(
        redis_url=REDIS_URL, worker=False, frames_stream=f"ctvis:test-frames:{tag}",
        jobs_stream=f"ctvis:test-jobs:{tag}", job_dir=str(tmp_path / "jobs"),
        max_pending_jobs=1, max_video_pixels=64 * 64,
    )  # fmt: skip
    client = redis.Redis.from_url(REDIS_URL)
    pending = pending_key(settings.jobs_stream)
    pending_bytes = pending_bytes_key(settings.jobs_stream)
    video = h264_bytes(64, 64, 3) + h264_bytes(96, 80, 3)
    with TestClient(create_app(settings)) as api:
        resp = api.post("/v1/videos", content=video)
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        assert client.zrange(pending, 0, -1) == [job_id.encode()]
        assert client.hget(pending_bytes, job_id) == str(len(video)).encode()
        refused = api.post("/v1/videos", content=mp4_file.read_bytes())
        assert refused.status_code == 429, refused.text
        model, job_dir = api.app.state.model, settings.job_dir
        worker = JobWorker(REDIS_URL, model, job_dir, stream=settings.jobs_stream)
        try:
            claimed = worker.next_job(block_ms=2000)
            assert claimed is not None and claimed[1] == job_id
            assert worker.run_one(*claimed, threading.Event()) == "failed"
            status = _wait(api, job_id)
            assert status["error"]["code"] in ("unsupported_video", "video_too_large")
            assert "4096 pixels" in status["error"]["message"]
            assert settings.job_dir is not None
            assert settings.job_dir not in status["error"]["message"]
            assert client.exists(pending, pending_bytes) == 0
            assert api.delete(f"/v1/videos/{job_id}").status_code == 204
        finally:
            worker.client.delete(
                jobs_stream_key(settings.jobs_stream), job_key(settings.jobs_stream, job_id)
            )
            worker.client.close()
            client.close()


def test_frame_count_estimated_when_the_container_has_none(tmp_path: Path) -> None:
    """Matroska states no frame count: its duration and rate stand in for the 422."""
    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(12):
            image = np.full((48, 64, 3), 10 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    data = path.read_bytes()
    with TestClient(create_app(Settings(max_video_frames=5))) as c:
        resp = c.post("/v1/videos", content=data)
        assert resp.status_code == 422, resp.text
        assert resp.json()["code"] == "too_many_frames"
        assert "about 12 frames" in resp.json()["message"]
        resp = c.post("/v1/videos?max_frames=5", content=data)
        assert resp.status_code == 202, resp.text
        assert _wait(c, resp.json()["job_id"])["frames_done"] == 5
