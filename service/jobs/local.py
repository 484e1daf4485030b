"""The in-process job manager: video jobs of this process, one at a time in a thread.

``LocalJobManager`` serves ``ctvis serve`` with its embedded worker. Jobs run one at a time,
so they do not starve live sessions; their records live in memory and go with the process.
``service.jobs.redis_manager`` offers the same interface (``JobBackend``) with Redis and
``ctvis worker`` processes.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.video.runner import Cancelled
from service.errors import ApiError
from service.jobs.admission import JobLimits, storage_full, too_many_jobs
from service.jobs.status import FINAL_STATES, JobOptions, JobState, JobStatus
from service.jobs.video import job_error, new_job_dir, run_video_job, validate_or_discard
from service.metrics import Metrics
from service.served import ServedModel


@dataclass
class _LocalJob:
    job_id: str
    workdir: Path
    status: JobStatus
    version: int = 0  # bumped on every change of ``status`` (what ``events`` waits for)
    cancel: threading.Event = field(default_factory=threading.Event)
    input_bytes: int = 0  # counted against max_job_bytes while queued or running


class LocalJobManager:
    """Runs the video jobs of this process in a worker thread, one at a time."""

    def __init__(self, served: ServedModel, metrics: Metrics, max_frames: int) -> None:
        self.served = served
        self.metrics = metrics
        self.max_frames = max_frames
        self.root = Path(tempfile.mkdtemp(prefix="ctvis-jobs-"))
        self.jobs: dict[str, _LocalJob] = {}
        self._run_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._uploads: dict[str, int] = {}  # job id -> bytes reserved by an upload under way

    def new_workdir(self) -> tuple[str, Path]:
        return new_job_dir(self.root)

    def _pending(self, other_than: str) -> tuple[int, int]:
        """Uploads under way and jobs queued or running (but ``other_than``), and their
        bytes."""
        count, used = 0, 0
        for job_id, nbytes in self._uploads.items():
            if job_id != other_than:
                count, used = count + 1, used + nbytes
        for job in self.jobs.values():
            if job.job_id != other_than and job.status.state in ("queued", "running"):
                count, used = count + 1, used + job.input_bytes
        return count, used

    async def reserve(self, job_id: str, nbytes: int, limits: JobLimits) -> None:
        count, used = self._pending(job_id)
        if job_id not in self._uploads and count >= limits.max_pending_jobs:
            raise too_many_jobs(limits)
        if used + nbytes > limits.max_job_bytes:
            raise storage_full(used, nbytes, limits)
        self._uploads[job_id] = nbytes

    async def release(self, job_id: str) -> None:
        self._uploads.pop(job_id, None)

    async def create(
        self,
        job_id: str,
        workdir: Path,
        options: JobOptions,
        owner: str | None,
        limits: JobLimits,
    ) -> dict[str, Any]:
        """Validate the upload in ``workdir/input`` and start the job (its reservation
        becomes the job's place)."""
        total = await validate_or_discard(
            workdir, options, self.max_frames, limits.max_video_pixels
        )
        status = JobStatus(
            "queued", options, frames_total=total, created_at=time.time(), owner=owner,
            max_pixels=limits.max_video_pixels,
        )  # fmt: skip
        job = _LocalJob(job_id, workdir, status, input_bytes=(workdir / "input").stat().st_size)
        self._uploads.pop(job_id, None)
        self.jobs[job_id] = job
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return status.payload(job_id)

    def _get(self, job_id: str, owner: str | None) -> _LocalJob:
        job = self.jobs.get(job_id)
        if job is None or job.status.owner != owner:
            raise ApiError(404, "job_not_found", f"video job {job_id} not found")
        return job

    async def status(self, job_id: str, owner: str | None) -> dict[str, Any]:
        return self._get(job_id, owner).status.payload(job_id)

    async def events(self, job_id: str, owner: str | None) -> AsyncIterator[dict[str, Any]]:
        """Status snapshots whenever the job changes (at most every 15 s: keep-alive None)."""
        job = self._get(job_id, owner)
        version = -1
        while True:
            if job.version != version:
                version = job.version
                status = job.status.payload(job_id)
                yield status
                if status["state"] in FINAL_STATES:
                    return
            deadline = time.monotonic() + 15
            while job.version == version and time.monotonic() < deadline:
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), 0.25)
                except TimeoutError:
                    continue
            if job.version == version:
                yield {}

    def _touch(self, job: _LocalJob) -> None:
        """Announce a change of ``job.status`` to ``events``."""
        job.version += 1
        self._changed.set()

    async def _run(self, job: _LocalJob) -> None:
        async with self._run_lock:
            if job.cancel.is_set():
                self._finish(job, "cancelled")
                return
            job.status.state = "running"
            job.status.started_at = time.time()
            job.status.attempts = 1
            self._touch(job)
            loop = asyncio.get_running_loop()

            def advanced(done: int) -> None:
                job.status.frames_done = done
                self._touch(job)

            def progress(done: int, total: int | None) -> None:
                loop.call_soon_threadsafe(advanced, done)

            try:
                frames = await asyncio.to_thread(
                    run_video_job, self.served, job.workdir, job.status.options, progress,
                    job.cancel.is_set, max_pixels=job.status.max_pixels,
                )  # fmt: skip
            except Cancelled:
                self._finish(job, "cancelled")
            except Exception as exc:  # noqa: BLE001 - reported in the job, never lost
                self._finish(job, "failed", job_error(exc, job.workdir))
            else:
                job.status.frames_total = frames
                self._finish(job, "done")

    def _finish(self, job: _LocalJob, state: JobState, error: dict[str, str] | None = None) -> None:
        (job.workdir / "input").unlink(missing_ok=True)
        self.metrics.jobs.labels(state).inc()
        job.status.state, job.status.error, job.status.finished_at = state, error, time.time()
        self._touch(job)

    async def cancel(self, job_id: str, owner: str | None) -> None:
        """Stop a queued or running job, or forget a finished one and delete its files."""
        job = self._get(job_id, owner)
        if job.status.state in FINAL_STATES:
            self.jobs.pop(job_id, None)
            shutil.rmtree(job.workdir, ignore_errors=True)
        else:
            job.cancel.set()

    async def close(self) -> None:
        for job in self.jobs.values():
            job.cancel.set()
        for task in list(self._tasks):
            try:
                await asyncio.wait_for(task, 30)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        shutil.rmtree(self.root, ignore_errors=True)
