"""Running one video job: probe the upload, track it, write its results.

A job runs ``model.video.runner.track_frames`` (the same function ``ctvis track`` runs), so its
results JSON is identical to the CLI's for the same file. Both job managers run jobs through
``run_video_job``; they differ only in where the job waits and how its progress is kept.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from model.files import atomic_path, write_atomic
from model.video.overlay import overlay_tracks, write_overlay
from model.video.reader import FrameSource, VideoReadError, VideoTooLarge
from model.video.runner import track_frames
from service.auth import new_id
from service.errors import ApiError
from service.frames import scrub
from service.jobs.status import JobOptions
from service.served import ServedModel


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
        tracks = overlay_tracks(result, served.model_cfg, options.overlay_score)
        with atomic_path(workdir / "overlay.mp4") as tmp_overlay:
            write_overlay(tmp_overlay, source, tracks, source.fps or 10.0)
    write_atomic(workdir / "results.json", json.dumps(result.results).encode())
    return result.state.frame_index  # frames seen, resumed ones included


def new_job_dir(root: Path) -> tuple[str, Path]:
    """A fresh job id and its directory under ``root``."""
    job_id = new_id()
    workdir = root / job_id
    workdir.mkdir(parents=True)
    return job_id, workdir
