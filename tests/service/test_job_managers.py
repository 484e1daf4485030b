"""The two job managers in process: submit, progress, cancel and result, for
``LocalJobManager`` and for ``RedisJobManager`` with a ``JobWorker`` (real Redis); and the
``JobStatus`` record both keep."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from model.video.reader import FrameSource
from model.video.runner import track_frames
from service.errors import ApiError
from service.jobs import local, redis_worker
from service.jobs.admission import JobBackend, JobLimits
from service.jobs.local import LocalJobManager
from service.jobs.redis_manager import RedisJobManager
from service.jobs.redis_worker import JobWorker
from service.jobs.status import JobOptions, JobStatus
from service.keys import job_key, jobs_stream_key, pending_bytes_key, pending_key
from service.metrics import Metrics
from service.served import RANDOM_CHECKPOINT, ServedModel, load_served_model

REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LIMITS = JobLimits(max_pending_jobs=4, max_job_bytes=10**8, max_video_pixels=10**6,
                   upload_lease_s=60)  # fmt: skip


@pytest.fixture(scope="module")
def served() -> ServedModel:
    return load_served_model(RANDOM_CHECKPOINT)


@pytest.fixture(scope="module")
def expected(served: ServedModel, mp4_file: Path) -> list[dict[str, Any]]:
    """The results ``ctvis track`` gives for ``mp4_file`` with the served model."""
    result = track_frames(
        FrameSource(mp4_file), served.forward, served.model_cfg, served.preprocess_cfg,
        served.tracker_cfg,
    )  # fmt: skip
    return json.loads(json.dumps(result.results))


class _Gate:
    """Replaces ``run_video_job`` in ``module``: reports 3 frames done, then holds the job
    until ``release`` is set, then runs the real job."""

    def __init__(self, module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = module.run_video_job
        self.reached = threading.Event()
        self.release = threading.Event()
        monkeypatch.setattr(module, "run_video_job", self)

    def __call__(self, served: Any, workdir: Path, options: Any, progress: Any, *rest: Any,
                 **kwargs: Any) -> int:  # fmt: skip
        progress(3, None)
        self.reached.set()
        assert self.release.wait(30)
        return self.real(served, workdir, options, progress, *rest, **kwargs)


async def _upload(jobs: JobBackend, video: Path) -> tuple[str, Path]:
    """A job id whose upload holds its place, with ``video`` as its input."""
    job_id, workdir = jobs.new_workdir()
    shutil.copy(video, workdir / "input")
    await jobs.reserve(job_id, video.stat().st_size, LIMITS)
    return job_id, workdir


async def _until(
    read: Callable[[], Awaitable[dict[str, Any]]],
    ok: Callable[[dict[str, Any]], bool],
    timeout: float = 60,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if ok(value):
            return value
        assert time.monotonic() < deadline, value
        await asyncio.sleep(0.02)


async def _not_found(jobs: JobBackend, job_id: str, owner: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        await jobs.status(job_id, owner)
    assert caught.value.status == 404 and caught.value.code == "job_not_found"


def test_job_status_round_trips_through_redis_fields() -> None:
    status = JobStatus(
        "running", JobOptions(frame_stride=2, max_frames=9, overlay=True, video_id=7),
        frames_total=9, frames_done=4, attempts=2, created_at=1.5, started_at=2.25,
        error={"code": "job_failed", "message": "x"}, owner="k", cancel=True, max_pixels=640,
        resumed_from=2,
    )  # fmt: skip
    raw = {str(k).encode(): str(v).encode() for k, v in status.to_redis().items()}
    assert JobStatus.from_redis({**raw, b"progress": b"\x00binary"}) == status
    assert status.to_redis("cancel", "frames_done") == {"cancel": "1", "frames_done": "4"}
    # a queued record as the API writes it: empty times, no owner, a JSON null error
    queued = {b"state": b"queued", b"options": b'{"frame_stride": 1}', b"started_at": b"",
              b"owner": b"", b"error": b"null", b"cancel": b"0", b"attempts": b"0"}  # fmt: skip
    back = JobStatus.from_redis(queued)
    assert back == JobStatus("queued", JobOptions())
    assert back is not None and back.payload("j")["frames_total"] is None
    assert JobStatus.from_redis({b"cancel": b"1"}) is None  # no record, only a stray field


async def test_local_job_submit_progress_result(
    served: ServedModel, mp4_file: Path, expected: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate(local, monkeypatch)
    jobs = LocalJobManager(served, Metrics(), max_frames=50)
    try:
        job_id, workdir = await _upload(jobs, mp4_file)
        created = await jobs.create(job_id, workdir, JobOptions(), "alice", LIMITS)
        assert (created["job_id"], created["state"], created["frames_total"]) == (
            job_id, "queued", 8,
        )  # fmt: skip
        await asyncio.to_thread(gate.reached.wait, 30)
        status = await _until(lambda: jobs.status(job_id, "alice"), lambda s: s["frames_done"])
        assert (status["state"], status["frames_done"], status["attempts"]) == ("running", 3, 1)
        await _not_found(jobs, job_id, "bob")  # another caller's job does not exist for him
        gate.release.set()
        seen = [e async for e in jobs.events(job_id, "alice") if e]
        assert seen[-1]["state"] == "done" and seen[-1]["frames_done"] == 8
        assert all(e["state"] == "running" for e in seen[:-1])
        assert json.loads((workdir / "results.json").read_text()) == expected
        assert not (workdir / "input").exists()
        await jobs.cancel(job_id, "alice")  # a finished job: forgotten with its files
        assert not workdir.exists()
        await _not_found(jobs, job_id, "alice")
    finally:
        gate.release.set()
        await jobs.close()


async def test_local_job_cancel_and_failure(
    served: ServedModel, mp4_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate(local, monkeypatch)
    metrics = Metrics()
    jobs = LocalJobManager(served, metrics, max_frames=50)
    try:
        job_id, workdir = await _upload(jobs, mp4_file)
        await jobs.create(job_id, workdir, JobOptions(), None, LIMITS)
        await asyncio.to_thread(gate.reached.wait, 30)
        await jobs.cancel(job_id, None)  # running: asks it to stop
        gate.release.set()
        final = await _until(lambda: jobs.status(job_id, None), lambda s: s["frames_done"] == 3
                             and s["state"] != "running")  # fmt: skip
        assert final["state"] == "cancelled" and not (workdir / "results.json").exists()

        def boom(served: Any, workdir: Path, *args: Any, **kwargs: Any) -> int:
            raise RuntimeError(f"decoder crashed reading {workdir / 'input'}")

        monkeypatch.setattr(local, "run_video_job", boom)
        job_id, workdir = await _upload(jobs, mp4_file)
        await jobs.create(job_id, workdir, JobOptions(), None, LIMITS)
        failed = await _until(lambda: jobs.status(job_id, None), lambda s: s["state"] != "queued"
                              and s["state"] != "running")  # fmt: skip
        assert failed["state"] == "failed" and failed["error"]["code"] == "job_failed"
        assert str(workdir) not in failed["error"]["message"]  # no server paths
        assert 'ctvis_video_jobs_total{state="cancelled"} 1.0' in metrics.render().decode()
    finally:
        gate.release.set()
        await jobs.close()


@pytest.fixture()
def queue(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A private jobs stream and job directory; their keys are deleted afterwards."""
    stream = f"ctvis:test-jobs:{uuid.uuid4().hex}"
    yield stream, tmp_path / "jobs"
    client = redis.Redis.from_url(REDIS_URL)
    jobs = list(client.scan_iter(match=job_key(stream, "*").replace("{", "\\{")))
    client.delete(jobs_stream_key(stream), pending_key(stream), pending_bytes_key(stream), *jobs)
    client.close()


@pytest.mark.redis
async def test_redis_job_submit_progress_result(
    served: ServedModel,
    mp4_file: Path,
    expected: list,
    queue: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream, root = queue
    gate = _Gate(redis_worker, monkeypatch)
    jobs = RedisJobManager(REDIS_URL, root, 50, 120, stream)
    worker = JobWorker(REDIS_URL, served, root, stream=stream)
    try:
        job_id, workdir = await _upload(jobs, mp4_file)
        created = await jobs.create(job_id, workdir, JobOptions(), "alice", LIMITS)
        assert created["state"] == "queued" and created["frames_total"] == 8
        assert await jobs.status(job_id, "alice") == created  # read back from Redis
        await _not_found(jobs, job_id, None)
        claimed = await asyncio.to_thread(worker.next_job, 2000)
        assert claimed is not None and claimed[1] == job_id
        run = asyncio.ensure_future(asyncio.to_thread(worker.run_one, *claimed, threading.Event()))
        await asyncio.to_thread(gate.reached.wait, 30)
        status = await _until(lambda: jobs.status(job_id, "alice"), lambda s: s["frames_done"])
        assert (status["state"], status["frames_done"], status["attempts"]) == ("running", 3, 1)
        gate.release.set()
        assert await run == "done"
        seen = [e async for e in jobs.events(job_id, "alice") if e]
        assert [(e["state"], e["frames_done"], e["frames_total"]) for e in seen] == [("done", 8, 8)]
        assert json.loads((workdir / "results.json").read_text()) == expected
        record = worker.client.hgetall(job_key(stream, job_id))
        assert b"progress" not in record  # the checkpoint goes once the job is done
        typed = JobStatus.from_redis(record)
        assert typed is not None and typed.owner == "alice" and typed.finished_at is not None
        assert worker.client.zscore(pending_key(stream), job_id) is None  # its place is free
        await jobs.cancel(job_id, "alice")  # a finished job: deleted with its files
        assert not workdir.exists() and not worker.client.exists(job_key(stream, job_id))
        await _not_found(jobs, job_id, "alice")
    finally:
        gate.release.set()
        await jobs.close()
        worker.client.close()


@pytest.mark.redis
async def test_redis_job_cancel_reaches_the_worker(
    served: ServedModel, mp4_file: Path, queue: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    stream, root = queue
    gate = _Gate(redis_worker, monkeypatch)
    jobs = RedisJobManager(REDIS_URL, root, 50, 120, stream)
    worker = JobWorker(REDIS_URL, served, root, stream=stream)
    try:
        job_id, workdir = await _upload(jobs, mp4_file)
        await jobs.create(job_id, workdir, JobOptions(), None, LIMITS)
        claimed = await asyncio.to_thread(worker.next_job, 2000)
        assert claimed is not None
        run = asyncio.ensure_future(asyncio.to_thread(worker.run_one, *claimed, threading.Event()))
        await asyncio.to_thread(gate.reached.wait, 30)
        await jobs.cancel(job_id, None)  # running: the worker sees the flag before a clip
        assert (await jobs.status(job_id, None))["state"] == "running"
        gate.release.set()
        assert await run == "cancelled"
        status = await jobs.status(job_id, None)
        assert status["state"] == "cancelled" and status["error"] is None
        assert not (workdir / "input").exists() and not (workdir / "results.json").exists()
        assert worker.client.xlen(jobs_stream_key(stream)) == 0  # acknowledged and deleted
    finally:
        gate.release.set()
        await jobs.close()
        worker.client.close()
