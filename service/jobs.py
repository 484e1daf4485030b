"""Whole-video jobs: the shared pieces and the in-process job manager.

A job runs ``model.runner.track_frames`` (the same function ``ctvis track`` runs), so its
results JSON is identical to the CLI's for the same file. ``LocalJobManager`` runs jobs in this
process (one at a time, so they do not starve live sessions); ``service.jobqueue`` runs them on
``ctvis worker`` processes through Redis with checkpointed progress. Both offer the same async
interface to the routes.

Admission is bounded (``JobLimits``): an upload reserves a place among the jobs queued or
running (429 ``too_many_jobs`` past ``max_pending_jobs``) and its bytes among theirs (507
``job_storage_full`` past ``max_job_bytes``) before its body is read, and grows the reservation
as the body arrives (``UploadQuota``); a video whose frames are over ``max_video_pixels`` is
refused (413 ``video_too_large``) from its metadata, and the decoder enforces the same budget
while the job runs.
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

from model.runner import OVERLAY_MIN_SCORE, Cancelled, overlay_tracks, track_frames, write_overlay
from model.video_io import FrameSource, VideoReadError, VideoTooLarge
from service.auth import new_id
from service.errors import ApiError
from service.frames import scrub
from service.metrics import Metrics
from service.models import ServedModel
from service.settings import Settings

JobState = Literal["queued", "running", "done", "failed", "cancelled", "dead_letter"]
FINAL_STATES = ("done", "failed", "cancelled", "dead_letter")


@dataclass
class JobOptions:
    """What the client asked for."""

    frame_stride: int = 1
    max_frames: int | None = None
    overlay: bool = False
    video_id: int = 1
    overlay_score: float = OVERLAY_MIN_SCORE  # lowest results score the overlay draws


@dataclass(frozen=True)
class JobLimits:
    """What video jobs may take, from ``Settings`` (see its fields of the same names).

    Attributes:
        max_pending_jobs: Jobs queued or running, uploads in progress included.
        max_job_bytes: Total bytes of their uploads.
        max_video_pixels: Largest frame (width x height) a job decodes.
        upload_lease_s: How long an upload's reservation holds without news; a replica
            that dies mid-upload frees its place after this long.
    """

    max_pending_jobs: int
    max_job_bytes: int
    max_video_pixels: int
    upload_lease_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> JobLimits:
        """The limits ``settings`` configures (a lease well past the body idle timeout)."""
        return cls(
            max_pending_jobs=settings.max_pending_jobs,
            max_job_bytes=settings.max_job_bytes,
            max_video_pixels=settings.max_video_pixels,
            upload_lease_s=2 * settings.body_idle_timeout_s + 60,
        )


def too_many_jobs(limits: JobLimits) -> ApiError:
    """The 429 for an upload past ``max_pending_jobs``."""
    return ApiError(
        429,
        "too_many_jobs",
        f"{limits.max_pending_jobs} video jobs are queued or running, the limit; retry later",
        headers={"Retry-After": "10"},
    )


def storage_full(used: int, nbytes: int, limits: JobLimits) -> ApiError:
    """The 507 for an upload whose bytes would pass ``max_job_bytes``."""
    return ApiError(
        507,
        "job_storage_full",
        f"queued and running video jobs hold {used} bytes of uploads; {nbytes} more would "
        f"pass the limit of {limits.max_job_bytes} bytes; retry later",
    )


def job_error(exc: BaseException, workdir: Path) -> dict[str, str]:
    """The ``error`` a failed job reports: a stable code and a message without server paths
    or object reprs."""
    if isinstance(exc, VideoTooLarge):
        code, text = "video_too_large", str(exc)
    elif isinstance(exc, VideoReadError | ValueError):
        code, text = "unsupported_video", str(exc)
    else:
        code, text = "job_failed", f"{type(exc).__name__}: {exc}"
    return {"code": code, "message": scrub(text, (workdir / "input", workdir, workdir.parent))}


def _estimated_frames(source: FrameSource) -> int | None:
    """Kept frames a video's declared duration and rate imply (for containers that do not
    state a frame count, e.g. WebM, MPEG-TS)."""
    if source.duration_s is None or not source.fps:
        return None
    return int(source.duration_s * source.fps)


def validate_upload(
    input_path: Path, options: JobOptions, max_frames: int, max_pixels: int | None = None
) -> int | None:
    """Probe the uploaded video; cap ``options.max_frames``; return the frame count if known.

    Only the container's metadata is read (no frame is decoded): frame count, rate, duration
    and frame size.

    Raises:
        ApiError: 413 ``video_too_large`` (frames over ``max_pixels``), 415
            ``unsupported_video`` or 422 ``too_many_frames``.
    """
    limit = min(options.max_frames or max_frames, max_frames)
    try:
        source = FrameSource(input_path, options.frame_stride, None, max_pixels)
    except VideoTooLarge as exc:  # never leak server paths
        raise ApiError(413, "video_too_large", scrub(str(exc), [input_path], "the video")) from exc
    except VideoReadError as exc:
        reason = scrub(str(exc), [input_path])
        raise ApiError(415, "unsupported_video", f"cannot read the video: {reason}") from exc
    full = source.num_frames
    about = "" if full is not None else "about "
    if full is None:
        full = _estimated_frames(source)
    if options.max_frames is None and full is not None and full > max_frames:
        raise ApiError(
            422,
            "too_many_frames",
            f"video has {about}{full} frames (after stride); limit {max_frames}; "
            "pass max_frames to process a prefix",
        )
    options.max_frames = limit
    return None if source.num_frames is None else min(source.num_frames, limit)


async def validate_or_discard(
    workdir: Path, options: JobOptions, max_frames: int, max_pixels: int | None = None
) -> int | None:
    """``validate_upload`` of ``workdir/input`` off the event loop; unusable uploads are
    deleted with their directory before the error propagates."""
    try:
        return await asyncio.to_thread(
            validate_upload, workdir / "input", options, max_frames, max_pixels
        )
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
    max_pixels: int | None = None,
) -> int:
    """Track ``workdir/input`` and write ``results.json`` (and ``overlay.mp4``) atomically.

    ``max_pixels`` bounds every decoded frame (``FrameSource``); the overlay decodes the same
    source again, so its frames are bounded too.

    Returns:
        Number of frames tracked.

    Raises:
        VideoTooLarge: A frame is over ``max_pixels`` (the resolution changed mid-stream).
        VideoReadError: The video cannot be decoded.
    """
    source = FrameSource(workdir / "input", options.frame_stride, options.max_frames, max_pixels)
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
        tracks = overlay_tracks(result, served.model_cfg, options.overlay_score)
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

    async def reserve(self, job_id: str, nbytes: int, limits: JobLimits) -> None:
        """Hold a place for the upload of ``job_id`` with ``nbytes`` bytes (again with a
        larger count as it grows; every call renews the reservation).

        Raises:
            ApiError: 429 ``too_many_jobs``, 507 ``job_storage_full``.
        """
        ...

    async def release(self, job_id: str) -> None:
        """Drop the reservation of an upload that did not become a job."""
        ...

    async def create(
        self,
        job_id: str,
        workdir: Path,
        options: JobOptions,
        owner: str | None,
        limits: JobLimits,
    ) -> dict[str, Any]: ...

    async def status(self, job_id: str, owner: str | None) -> dict[str, Any]: ...

    def events(self, job_id: str, owner: str | None) -> AsyncIterator[dict[str, Any]]: ...

    async def cancel(self, job_id: str, owner: str | None) -> None: ...

    async def close(self) -> None: ...


class UploadQuota:
    """An upload's reservation (``JobBackend.reserve``), kept ahead of the bytes received.

    ``start`` reserves the place and the declared size before the body is read; ``grow``
    (called with the bytes stored so far after every chunk) reserves ``STEP`` more whenever
    the upload passes its reservation (or exactly what it holds when a step does not fit),
    and renews the reservation's lease every third of it. A refusal raises out of the body
    reader, which stops reading.
    """

    STEP = 8 * 1024 * 1024

    def __init__(self, jobs: JobBackend, job_id: str, limits: JobLimits) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.limits = limits
        self.reserved = 0
        self._renewed = 0.0

    async def start(self, declared: int | None) -> None:
        """Reserve a place, with the body's declared length when it has one."""
        await self._reserve(declared or 0)

    async def grow(self, size: int) -> None:
        """Keep the reservation at or above ``size`` bytes and its lease alive."""
        if size > self.reserved:
            try:
                await self._reserve(size + self.STEP)
            except ApiError as exc:
                if exc.code != "job_storage_full":
                    raise
                await self._reserve(size)
        elif time.monotonic() - self._renewed > self.limits.upload_lease_s / 3:
            await self._reserve(self.reserved)

    async def _reserve(self, nbytes: int) -> None:
        await self.jobs.reserve(self.job_id, nbytes, self.limits)
        self.reserved = nbytes
        self._renewed = time.monotonic()


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
    input_bytes: int = 0  # counted against max_job_bytes while queued or running
    max_pixels: int | None = None


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
            if job.job_id != other_than and job.fields["state"] in ("queued", "running"):
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
        job = _LocalJob(job_id, owner, options, workdir)
        job.input_bytes = (workdir / "input").stat().st_size
        job.max_pixels = limits.max_video_pixels
        self._uploads.pop(job_id, None)
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
                    job.cancel.is_set, max_pixels=job.max_pixels,
                )  # fmt: skip
            except Cancelled:
                self._finish(job, "cancelled")
            except Exception as exc:  # noqa: BLE001 - reported in the job, never lost
                self._finish(job, "failed", job_error(exc, job.workdir))
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
