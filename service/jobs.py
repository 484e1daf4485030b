"""Whole-video jobs: upload, run in the background with progress, fetch results or overlay.

A job runs ``model.runner.track_frames`` (the same function ``ctvis track`` runs) in a worker
thread, so its results JSON is identical to the CLI's for the same file. Jobs of this process
live in memory and their files in a temporary directory; one job runs at a time per process
so that video jobs do not starve live sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from model.runner import Cancelled, overlay_tracks, track_frames, write_overlay
from model.video_io import FrameSource, VideoReadError
from service.auth import new_id
from service.errors import ApiError
from service.metrics import Metrics
from service.models import ServedModel

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
FINAL_STATES = ("done", "failed", "cancelled")


@dataclass
class JobOptions:
    """What the client asked for."""

    frame_stride: int = 1
    max_frames: int | None = None
    overlay: bool = False
    video_id: int = 1


@dataclass
class Job:
    """One video job and its progress."""

    job_id: str
    owner: str | None
    options: JobOptions
    workdir: Path
    input_path: Path
    state: JobState = "queued"
    frames_done: int = 0
    frames_total: int | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, str] | None = None
    version: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def result_path(self) -> Path:
        return self.workdir / "results.json"

    @property
    def overlay_path(self) -> Path:
        return self.workdir / "overlay.mp4"

    def status(self) -> dict[str, Any]:
        """The JSON of ``GET /v1/videos/{job}``."""
        elapsed = None
        if self.started_at is not None:
            elapsed = (self.finished_at or time.time()) - self.started_at
        fps = self.frames_done / elapsed if elapsed and self.frames_done else None
        eta = None
        if fps and self.frames_total and self.state == "running":
            eta = max(self.frames_total - self.frames_done, 0) / fps
        return {
            "job_id": self.job_id,
            "state": self.state,
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "fps": fps,
            "eta_s": eta,
            "error": self.error,
            "overlay": self.options.overlay,
            "created_at": self.created_at,
        }


class JobManager:
    """Creates, runs and tracks the video jobs of one process."""

    def __init__(self, served: ServedModel, metrics: Metrics, max_frames: int) -> None:
        self.served = served
        self.metrics = metrics
        self.max_frames = max_frames
        self.root = Path(tempfile.mkdtemp(prefix="ctvis-jobs-"))
        self.jobs: dict[str, Job] = {}
        self._run_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    def new_workdir(self) -> tuple[str, Path]:
        job_id = new_id()
        workdir = self.root / job_id
        workdir.mkdir(parents=True)
        return job_id, workdir

    def submit(self, job_id: str, workdir: Path, input_path: Path, options: JobOptions,
               owner: str | None) -> Job:  # fmt: skip
        """Validate the uploaded video and register the job (4xx for unusable input).

        Blocking (probes the file): call it from a worker thread, then ``start`` the job.
        """
        limit = min(options.max_frames or self.max_frames, self.max_frames)
        try:
            source = FrameSource(input_path, options.frame_stride, limit)
        except VideoReadError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise ApiError(415, "unsupported_video", f"cannot read the video: {exc}") from exc
        if options.max_frames is None and source.num_frames is not None:
            full = FrameSource(input_path, options.frame_stride, None).num_frames
            if full is not None and full > self.max_frames:
                shutil.rmtree(workdir, ignore_errors=True)
                raise ApiError(
                    422,
                    "too_many_frames",
                    f"video has {full} frames (after stride); limit {self.max_frames}; "
                    "pass max_frames to process a prefix",
                )
        options.max_frames = limit
        job = Job(job_id, owner, options, workdir, input_path, frames_total=source.num_frames)
        self.jobs[job_id] = job
        return job

    def start(self, job: Job) -> None:
        """Schedule a submitted job on the running event loop."""
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def get(self, job_id: str, owner: str | None) -> Job:
        job = self.jobs.get(job_id)
        if job is None or job.owner != owner:
            raise ApiError(404, "job_not_found", f"video job {job_id} not found")
        return job

    def _touch(self, job: Job) -> None:
        job.version += 1
        self._changed.set()

    async def wait_change(self, job: Job, version: int, timeout: float) -> None:
        """Return when ``job.version`` moved past ``version`` or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while job.version == version and time.monotonic() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(0.25, timeout))

    async def _run(self, job: Job) -> None:
        async with self._run_lock:
            if job.cancel.is_set():
                self._finish(job, "cancelled")
                return
            job.state, job.started_at = "running", time.time()
            self._touch(job)
            loop = asyncio.get_running_loop()

            def progress(done: int, total: int | None) -> None:
                job.frames_done = done
                loop.call_soon_threadsafe(self._touch, job)

            try:
                await asyncio.to_thread(self._work, job, progress)
            except Cancelled:
                self._finish(job, "cancelled")
            except (VideoReadError, ValueError) as exc:
                self._finish(job, "failed", {"code": "unsupported_video", "message": str(exc)})
            except Exception as exc:  # noqa: BLE001 - reported in the job, never lost
                self._finish(job, "failed", {"code": "job_failed", "message": repr(exc)})
            else:
                self._finish(job, "done")

    def _work(self, job: Job, progress: Any) -> None:
        opts = job.options
        source = FrameSource(job.input_path, opts.frame_stride, opts.max_frames)
        served = self.served
        result = track_frames(
            source,
            served.segmenter,
            served.model_cfg,
            served.preprocess_cfg,
            served.tracker_cfg,
            video_id=opts.video_id,
            num_frames=source.num_frames,
            progress=progress,
            should_stop=job.cancel.is_set,
        )
        job.result_path.write_text(json.dumps(result.results))
        if opts.overlay:
            tracks = overlay_tracks(result, served.model_cfg)
            write_overlay(job.overlay_path, source, tracks, source.fps or 10.0)

    def _finish(self, job: Job, state: JobState, error: dict[str, str] | None = None) -> None:
        job.state, job.error, job.finished_at = state, error, time.time()
        job.input_path.unlink(missing_ok=True)
        if state == "done" and job.frames_total is None:
            job.frames_total = job.frames_done
        self.metrics.jobs.labels(state).inc()
        self._touch(job)

    def cancel(self, job: Job) -> None:
        """Stop a running job, or forget a finished one and delete its files."""
        if job.state in FINAL_STATES:
            self.jobs.pop(job.job_id, None)
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
