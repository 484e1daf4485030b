"""Video-job routes: upload, status, progress events, results, overlay, cancel."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from model.video.overlay import OVERLAY_MIN_SCORE
from service.bodies import BodyLimit, check_declared, save_body
from service.deps import CallerDep, JobsDep, SettingsDep
from service.errors import ApiError
from service.jobs.admission import JobLimits, UploadQuota
from service.jobs.status import FINAL_STATES, JobOptions
from service.schemas import ErrorOut

router = APIRouter(prefix="/v1/videos", tags=["videos"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 408, 409, 413, 415, 422, 429, 507)
}
MAX_VIDEO_ID = 2**31 - 1  # results carry it as a 32-bit signed int (YouTube-VIS ids)


@router.post(
    "",
    status_code=202,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                },
            },
        }
    },
)
async def create_job(
    request: Request,
    jobs: JobsDep,
    settings: SettingsDep,
    who: CallerDep,
    frame_stride: Annotated[int, Query(ge=1, le=1000)] = 1,
    max_frames: Annotated[int | None, Query(ge=1)] = None,
    overlay: bool = False,
    video_id: Annotated[int, Query(ge=0, le=MAX_VIDEO_ID)] = 1,
    overlay_score: Annotated[
        float,
        Query(
            ge=0,
            le=1,
            description="lowest results score the overlay draws, 0 to 1 (each drawn `#id` "
            "is the `track_id` of a results entry); the same default as `ctvis track`",
        ),
    ] = OVERLAY_MIN_SCORE,
) -> Response:
    """Upload a video (raw body or multipart ``file``); returns 202 with ``Location``.

    Refused before the body is read: a declared size over ``max_upload_bytes`` (413), too
    many jobs pending (429) or their uploads' bytes full (507). While it streams: the same
    limits on the bytes received (413 / 507) and the idle timeout (408). Then from the
    video's metadata: frames over ``max_video_pixels`` (413 ``video_too_large``).
    """
    if max_frames is not None and max_frames > settings.max_video_frames:
        raise ApiError(
            422, "too_many_frames", f"max_frames is limited to {settings.max_video_frames}"
        )
    limit = BodyLimit(
        settings.max_upload_bytes, settings.body_idle_timeout_s, "upload_too_large", "upload"
    )
    declared = check_declared(request, limit)  # 413 before the disk or the job limits
    limits = JobLimits.from_settings(settings)
    job_id, workdir = jobs.new_workdir()
    quota = UploadQuota(jobs, job_id, limits)
    try:
        await quota.start(declared)  # 429 / 507 before a byte of the body is read
        if await save_body(request, workdir / "input", limit, quota.grow) == 0:
            raise ApiError(415, "unsupported_video", "the upload is empty")
        options = JobOptions(
            frame_stride, max_frames, overlay, video_id, overlay_score=overlay_score
        )
        status = await jobs.create(job_id, workdir, options, who, limits)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        with suppress(ApiError):  # the store being down must not hide the first error
            await jobs.release(job_id)
        raise
    location = f"/v1/videos/{job_id}"
    body = json.dumps({"status_url": location, **status})
    return Response(body, 202, {"Location": location}, media_type="application/json")


@router.get("/{job_id}", responses=ERRORS)
async def job_status(job_id: str, jobs: JobsDep, who: CallerDep) -> dict[str, Any]:
    """State, frames done / total, frames per second, ETA, attempts and any error."""
    return await jobs.status(job_id, who)


@router.get("/{job_id}/events", responses=ERRORS)
async def job_events(job_id: str, jobs: JobsDep, who: CallerDep) -> StreamingResponse:
    """Server-sent events: ``progress`` while running, then one final ``done`` / ``failed`` /
    ``cancelled`` / ``dead_letter`` event."""
    stream = jobs.events(job_id, who)
    first = await anext(stream)  # raises 404 before the response starts

    async def events() -> AsyncIterator[str]:
        status: dict[str, Any] | None = first
        while status is not None:
            if not status:
                yield ": keep-alive\n\n"
            else:
                kind = status["state"] if status["state"] in FINAL_STATES else "progress"
                yield f"event: {kind}\ndata: {json.dumps(status)}\n\n"
            status = await anext(stream, None)

    return StreamingResponse(events(), media_type="text/event-stream")


async def _finished_file(jobs: JobsDep, job_id: str, who: str | None, name: str) -> Path:
    status = await jobs.status(job_id, who)
    if status["state"] != "done":
        raise ApiError(409, "job_not_done", f"job is {status['state']}")
    path = jobs.root / job_id / name
    if not path.exists():
        if name == "overlay.mp4":
            raise ApiError(404, "no_overlay", "this job was created without overlay=true")
        raise ApiError(404, "result_missing", "the job's result files are gone")
    return path


@router.get("/{job_id}/result", responses=ERRORS)
async def job_result(job_id: str, jobs: JobsDep, who: CallerDep) -> Response:
    """The YouTube-VIS results JSON (identical to ``ctvis track`` on the same file)."""
    path = await _finished_file(jobs, job_id, who, "results.json")
    return Response(path.read_bytes(), media_type="application/json")


@router.get("/{job_id}/overlay", responses=ERRORS)
async def job_overlay(job_id: str, jobs: JobsDep, who: CallerDep) -> FileResponse:
    """The overlay MP4 (only when the job was created with ``overlay=true``)."""
    path = await _finished_file(jobs, job_id, who, "overlay.mp4")
    return FileResponse(path, media_type="video/mp4", filename=f"{job_id}.mp4")


@router.delete("/{job_id}", status_code=204, responses=ERRORS)
async def cancel_job(job_id: str, jobs: JobsDep, who: CallerDep) -> Response:
    """Cancel a queued or running job; delete a finished one."""
    await jobs.cancel(job_id, who)
    return Response(status_code=204)
