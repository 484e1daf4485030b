"""Whole-video jobs: the shared pieces and the in-process job manager.

A job runs ``model.runner.track_frames`` (the same function ``ctvis track`` runs), so its
results JSON is identical to the CLI's for the same file. ``LocalJobManager`` runs jobs in this
process (one at a time, so they do not starve live sessions); ``service.jobqueue`` runs them on
``ctvis worker`` processes through Redis with checkpointed progress. Both offer the same async
interface to the routes.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from model.runner import Cancelled, overlay_tracks, track_frames, write_overlay
from model.video_io import FrameSource, VideoReadError
from service.auth import new_id
from service.errors import ApiError
from service.metrics import Metrics
from service.models import ServedModel

JobState = Literal["queued", "running", "done", "failed", "cancelled", "dead_letter"]
FINAL_STATES = ("done", "failed", "cancelled", "dead_letter")


@dataclass
class JobOptions:
    """What the client asked for."""

    frame_stride: int = 1
    max_frames: int | None = None
    overlay: bool = False
    video_id: int = 1


def validate_upload(input_path: Path, options: JobOptions, max_frames: int) -> int | None:
    """Probe the uploaded video; cap ``options.max_frames``; return the frame count if known.

    Raises:
        ApiError: 415 ``unsupported_video`` or 422 ``too_many_frames``.
    """
    limit = min(options.max_frames or max_frames, max_frames)
    try:
        source = FrameSource(input_path, options.frame_stride, limit)
        full = FrameSource(input_path, options.frame_stride, None).num_frames
    except VideoReadError as exc:
        reason = str(exc).replace(str(input_path), "the upload")  # never leak server paths
        raise ApiError(415, "unsupported_video", f"cannot read the video: {reason}") from exc
    if options.max_frames is None and full is not None and full > max_frames:
        raise ApiError(
            422,
            "too_many_frames",
            f"video has {full} frames (after stride); limit {max_frames}; "
            "pass max_frames to process a prefix",
        )
    options.max_frames = limit
    return source.num_frames


async def validate_or_discard(workdir: Path, options: JobOptions, max_frames: int) -> int | None:
    """``validate_upload`` of ``workdir/input`` off the event loop; unusable uploads are
    deleted with their directory before the error propagates."""
    try:
        return await asyncio.to_thread(validate_upload, workdir / "input", options, max_frames)
    except ApiError:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def run_video_job(
    served: ServedModel,
    workdir: Path,
    options: JobOptions,
    progress: Callable[[int, int | None], None],
    should_stop: Callable[[], bool],
    resume: bytes | None = None,
    checkpoint: Callable[[int, bytes], None] | None = None,
    checkpoint_every_clips: int = 4,
) -> int:
    """Track ``workdir/input`` and write ``results.json`` (and ``overlay.mp4``) atomically.

    Returns:
        Number of frames tracked.
    """
    source = FrameSource(workdir / "input", options.frame_stride, options.max_frames)
    result = track_frames(
        source,
        served.forward,
        served.model_cfg,
        served.preprocess_cfg,
        served.tracker_cfg,
        video_id=options.video_id,
        num_frames=source.num_frames,
        progress=progress,
        should_stop=should_stop,
        resume=resume,
        checkpoint=checkpoint,
        checkpoint_every_clips=checkpoint_every_clips,
    )
    if options.overlay:
        tmp_overlay = workdir / "overlay.mp4.tmp.mp4"
        tracks = overlay_tracks(result, served.model_cfg)
        write_overlay(tmp_overlay, source, tracks, source.fps or 10.0)
        os.replace(tmp_overlay, workdir / "overlay.mp4")
    write_atomic(workdir / "results.json", json.dumps(result.results).encode())
    return result.state.frame_index  # frames seen, resumed ones included


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (no torn files)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def status_payload(job_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON of ``GET /v1/videos/{job}`` from a job's stored fields."""
    started, finished = fields.get("started_at"), fields.get("finished_at")
    done, total = int(fields.get("frames_done") or 0), fields.get("frames_total")
    elapsed = ((finished or time.time()) - started) if started else None
    fps = done / elapsed if elapsed and done else None
    eta = None
    if fps and total and fields["state"] == "running":
        eta = max(int(total) - done, 0) / fps
    return {
        "job_id": job_id,
        "state": fields["state"],
        "frames_done": done,
        "frames_total": int(total) if total is not None else None,
        "fps": fps,
        "eta_s": eta,
        "error": fields.get("error"),
        "attempts": int(fields.get("attempts") or 0),
        "overlay": bool(fields["options"]["overlay"]),
        "created_at": fields.get("created_at"),
    }


class JobBackend(Protocol):
    """What the video routes need from a job manager."""

    root: Path

    def new_workdir(self) -> tuple[str, Path]: ...

    async def create(
        self, job_id: str, workdir: Path, options: JobOptions, owner: str | None
    ) -> dict[str, Any]: ...

    async def status(self, job_id: str, owner: str | None) -> dict[str, Any]: ...

    def events(self, job_id: str, owner: str | None) -> AsyncIterator[dict[str, Any]]: ...

    async def cancel(self, job_id: str, owner: str | None) -> None: ...

    async def close(self) -> None: ...


def new_job_dir(root: Path) -> tuple[str, Path]:
    """A fresh job id and its directory under ``root``."""
    job_id = new_id()
    workdir = root / job_id
    workdir.mkdir(parents=True)
    return job_id, workdir


@dataclass
class _LocalJob:
    job_id: str
    owner: str | None
    options: JobOptions
    workdir: Path
    fields: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)


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

    def new_workdir(self) -> tuple[str, Path]:
        return new_job_dir(self.root)

    async def create(
        self, job_id: str, workdir: Path, options: JobOptions, owner: str | None
    ) -> dict[str, Any]:
        """Validate the upload in ``workdir/input`` and start the job."""
        total = await validate_or_discard(workdir, options, self.max_frames)
        job = _LocalJob(job_id, owner, options, workdir)
        job.fields = {"state": "queued", "frames_total": total, "options": asdict(options),
                      "created_at": time.time(), "attempts": 0}  # fmt: skip
        self.jobs[job_id] = job
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return status_payload(job_id, job.fields)

    def _get(self, job_id: str, owner: str | None) -> _LocalJob:
        job = self.jobs.get(job_id)
        if job is None or job.owner != owner:
            raise ApiError(404, "job_not_found", f"video job {job_id} not found")
        return job

    async def status(self, job_id: str, owner: str | None) -> dict[str, Any]:
        return status_payload(job_id, self._get(job_id, owner).fields)

    async def events(self, job_id: str, owner: str | None) -> AsyncIterator[dict[str, Any]]:
        """Status snapshots whenever the job changes (at most every 15 s: keep-alive None)."""
        job = self._get(job_id, owner)
        version = -1
        while True:
            if job.version != version:
                version = job.version
                status = status_payload(job_id, job.fields)
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

    def _touch(self, job: _LocalJob, **updates: Any) -> None:
        job.fields.update(updates)
        job.version += 1
        self._changed.set()

    async def _run(self, job: _LocalJob) -> None:
        async with self._run_lock:
            if job.cancel.is_set():
                self._finish(job, "cancelled")
                return
            self._touch(job, state="running", started_at=time.time(), attempts=1)
            loop = asyncio.get_running_loop()

            def progress(done: int, total: int | None) -> None:
                loop.call_soon_threadsafe(lambda: self._touch(job, frames_done=done))

            try:
                frames = await asyncio.to_thread(
                    run_video_job, self.served, job.workdir, job.options, progress,
                    job.cancel.is_set,
                )  # fmt: skip
            except Cancelled:
                self._finish(job, "cancelled")
            except (VideoReadError, ValueError) as exc:
                self._finish(job, "failed", {"code": "unsupported_video", "message": str(exc)})
            except Exception as exc:  # noqa: BLE001 - reported in the job, never lost
                self._finish(job, "failed", {"code": "job_failed", "message": repr(exc)})
            else:
                self._finish(job, "done", frames_total=frames)

    def _finish(
        self, job: _LocalJob, state: JobState, error: dict[str, str] | None = None, **more: Any
    ) -> None:
        (job.workdir / "input").unlink(missing_ok=True)
        self.metrics.jobs.labels(state).inc()
        self._touch(job, state=state, error=error, finished_at=time.time(), **more)

    async def cancel(self, job_id: str, owner: str | None) -> None:
        """Stop a queued or running job, or forget a finished one and delete its files."""
        job = self._get(job_id, owner)
        if job.fields["state"] in FINAL_STATES:
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
