"""Live-session routes: create, inspect, delete, and one frame over HTTP."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response

from service.bodies import BodyLimit, read_body
from service.deps import SessionsDep, SettingsDep
from service.errors import ApiError
from service.frames import decode_image, decode_raw_rgb
from service.schemas import ErrorOut, FrameResult, SessionCreate, SessionCreated, SessionInfo

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 408, 409, 413, 415, 422, 429, 503)
}

TokenHeader = Annotated[
    str | None, Header(alias="X-Session-Token", description="token from POST /v1/sessions")
]
TokenQuery = Annotated[str | None, Query(description="session token (alternative to header)")]


@router.post("", status_code=201, response_model=SessionCreated, responses=ERRORS)
async def create_session(
    sessions: SessionsDep, options: SessionCreate | None = None
) -> SessionCreated:
    """Start a live session; keep the returned token, it is shown only once."""
    session_id, token, expires_at = await sessions.create(options or SessionCreate())
    return SessionCreated(session_id=session_id, token=token, expires_at=expires_at)


@router.get("/{session_id}", response_model=SessionInfo, responses=ERRORS)
async def get_session(
    session_id: str, sessions: SessionsDep, x_token: TokenHeader = None, token: TokenQuery = None
) -> SessionInfo:
    """Frame counter, live tracks and settings of a session."""
    return await sessions.info(session_id, x_token or token)


@router.delete("/{session_id}", status_code=204, responses=ERRORS)
async def delete_session(
    session_id: str, sessions: SessionsDep, x_token: TokenHeader = None, token: TokenQuery = None
) -> Response:
    """End a session and delete its state."""
    await sessions.delete(session_id, x_token or token)
    return Response(status_code=204)


@router.post(
    "/{session_id}/frames",
    response_model=FrameResult,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/webp": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def post_frame(
    session_id: str,
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    x_token: TokenHeader = None,
    token: TokenQuery = None,
    height: Annotated[int | None, Query(ge=1, description="raw RGB frames: height")] = None,
    width: Annotated[int | None, Query(ge=1, description="raw RGB frames: width")] = None,
) -> FrameResult:
    """Track one frame: JPEG/PNG/WebP bytes, or raw RGB bytes with ``height`` and ``width``."""
    received = time.perf_counter()
    # 401/404 before reading the body; reads only the session's metadata, not its state
    await sessions.check_access(session_id, x_token or token)
    if (height is None) != (width is None):
        raise ApiError(422, "bad_shape", "raw frames need both height and width")
    # 413 for a declared Content-Length over the limit before reading; else read in chunks,
    # stopping at the limit, each within the body idle timeout (408)
    limit = BodyLimit(
        settings.max_frame_bytes, settings.body_idle_timeout_s, "frame_too_large", "frame"
    )
    body = await read_body(request, limit)
    if height is not None and width is not None:
        frame = decode_raw_rgb(body, height, width, settings.max_frame_bytes)
    else:
        frame = decode_image(body, settings.max_frame_bytes)
    return await sessions.process_frame(session_id, x_token or token, frame, received, "http")
