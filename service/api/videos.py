"""Video-job routes: upload, status, progress events, results, overlay, cancel."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from service.deps import CallerDep, JobsDep, SettingsDep
from service.errors import ApiError
from service.jobs import FINAL_STATES, JobOptions
from service.schemas import ErrorOut

router = APIRouter(prefix="/v1/videos", tags=["videos"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (401, 404, 409, 413, 415, 422)
}
CHUNK = 1 << 20


async def _save_upload(request: Request, dest: Path, limit: int) -> None:
    """Stream the request body (raw bytes or the first file of a multipart form) to ``dest``."""
    content_type = request.headers.get("content-type", "")
    size = 0
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_part_size=limit)
        uploads = [v for v in form.values() if hasattr(v, "read")]
        if not uploads:
            raise ApiError(422, "no_file", "multipart upload has no file part")
        with dest.open("wb") as out:
            while chunk := await uploads[0].read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "upload_too_large", f"upload exceeds {limit} bytes")
                out.write(chunk)
        await form.close()
    else:
        with dest.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "upload_too_large", f"upload exceeds {limit} bytes")
                out.write(chunk)
    if size == 0:
        raise ApiError(415, "unsupported_video", "the upload is empty")


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
    video_id: Annotated[int, Query(ge=0)] = 1,
) -> Response:
    """Upload a video (raw body or multipart ``file``); returns 202 with ``Location``."""
    if max_frames is not None and max_frames > settings.max_video_frames:
        raise ApiError(
            422, "too_many_frames", f"max_frames is limited to {settings.max_video_frames}"
        )
    job_id, workdir = jobs.new_workdir()
    try:
        await _save_upload(request, workdir / "input", settings.max_upload_bytes)
    except Exception:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    options = JobOptions(frame_stride, max_frames, overlay, video_id)
    status = await jobs.create(job_id, workdir, options, who)
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
