"""Wire types and errors of the ctvis-serve client (no torch, no httpx)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FINAL_STATES = ("done", "failed", "cancelled", "dead_letter")
JobState = Literal["queued", "running", "done", "failed", "cancelled", "dead_letter"]


class CtvisError(Exception):
    """Base class of every error raised by this client."""


class ApiError(CtvisError):
    """The API answered with an error body ``{"code": ..., "message": ...}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class ServiceUnreachableError(CtvisError):
    """The server could not be reached (connection refused, timeout, DNS)."""


class JobFailedError(CtvisError):
    """A video job ended ``failed``, ``cancelled`` or ``dead_letter`` (failed on every attempt).

    ``status`` is its last status; ``code`` and ``message`` are the job's error (``cancelled``
    and an empty message when it has none).
    """

    def __init__(self, status: JobStatus) -> None:
        error = status.error
        if isinstance(error, dict):
            code, message = str(error.get("code", status.state)), str(error.get("message", ""))
        else:
            code, message = status.state, str(error or "")
        super().__init__(f"job {status.job_id} {status.state}: {code}: {message or 'no detail'}")
        self.status, self.code, self.message = status, code, message


class MissingDependencyError(CtvisError):
    """An optional package (OpenCV for cameras, PyAV for video files) is not installed."""


@dataclass(frozen=True)
class Session:
    """A live session: keep ``token``, it is shown only once."""

    session_id: str
    token: str
    expires_at: float


@dataclass(frozen=True)
class Instance:
    """One tracked instance in one frame; ``bbox`` is [x, y, w, h] in pixels, ``segmentation``
    a COCO RLE ``{"size": [h, w], "counts": str}``."""

    track_id: int
    category_id: int
    category_name: str
    score: float
    bbox: tuple[float, float, float, float]
    segmentation: dict[str, Any]


@dataclass(frozen=True)
class FrameResult:
    """The reply to one frame (HTTP or WebSocket); ``timings`` in milliseconds."""

    session_id: str
    frame_index: int
    width: int
    height: int
    instances: list[Instance]
    timings: dict[str, float]
    lag: int = 0
    dropped_frames: int = 0

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FrameResult:
        """Build from the API's ``FrameResult`` JSON."""
        instances = [
            Instance(
                track_id=int(i["track_id"]),
                category_id=int(i["category_id"]),
                category_name=str(i["category_name"]),
                score=float(i["score"]),
                bbox=tuple(float(v) for v in i["bbox"]),  # type: ignore[arg-type]
                segmentation=dict(i["segmentation"]),
            )
            for i in body["instances"]
        ]
        return cls(
            session_id=body["session_id"],
            frame_index=int(body["frame_index"]),
            width=int(body["width"]),
            height=int(body["height"]),
            instances=instances,
            timings={k: float(v) for k, v in body.get("timings", {}).items()},
            lag=int(body.get("lag", 0)),
            dropped_frames=int(body.get("dropped_frames", 0)),
        )


@dataclass(frozen=True)
class JobStatus:
    """State of a video job (``GET /v1/videos/{job}``); ``raw`` holds the whole body."""

    job_id: str
    state: JobState
    frames_done: int
    frames_total: int | None
    fps: float | None = None
    eta_s: float | None = None
    error: dict[str, Any] | str | None = None  # {"code": ..., "message": ...}
    attempts: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def finished(self) -> bool:
        """True once the job is done, failed, cancelled or dead-lettered."""
        return self.state in FINAL_STATES

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> JobStatus:
        """Build from the API's job status JSON."""
        return cls(
            job_id=body["job_id"],
            state=body["state"],
            frames_done=int(body.get("frames_done") or 0),
            frames_total=body.get("frames_total"),
            fps=body.get("fps"),
            eta_s=body.get("eta_s"),
            error=body.get("error"),
            attempts=int(body.get("attempts") or 0),
            raw=body,
        )
