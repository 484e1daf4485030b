"""Wire records of the API (pydantic models): requests, replies, errors."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from model.config import MAX_CACHE_ROWS, TRACKER_OPTION_RULES


def tracker_options_schema() -> dict[str, Any]:
    """JSON schema of the tracker options, built from ``TRACKER_OPTION_RULES`` (the table the
    server validates with), so the OpenAPI document and the checks cannot disagree."""
    properties: dict[str, Any] = {}
    for name, rule in TRACKER_OPTION_RULES.items():
        if rule.kind is bool:
            properties[name] = {"type": "boolean"}
        elif rule.kind is str:
            properties[name] = {"type": "string", "enum": list(rule.choices)}
        else:
            kind = "integer" if rule.kind is int else "number"
            properties[name] = {"type": kind, "minimum": rule.low, "maximum": rule.high}
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "description": "TrackerConfig overrides, each within its range; also "
        f"cache_size * max_tracks <= {MAX_CACHE_ROWS} (422 invalid_tracker_option otherwise)",
    }


class ErrorOut(BaseModel):
    """Every error body."""

    code: str = Field(description="stable machine-readable error code")
    message: str = Field(description="readable explanation")


class RLE(BaseModel):
    """COCO run-length encoding of a binary mask (column-major, compressed ``counts``)."""

    size: tuple[int, int] = Field(description="[height, width] of the original frame")
    counts: str


class InstanceOut(BaseModel):
    """One tracked instance in one frame."""

    track_id: int
    category_id: int
    category_name: str
    score: float
    bbox: tuple[float, float, float, float] = Field(description="[x, y, w, h] in pixels")
    segmentation: RLE


class Timings(BaseModel):
    """Milliseconds spent on one frame."""

    queue_ms: float = Field(description="waiting for a batch slot")
    model_ms: float = Field(description="network + tracker for the batch holding this frame")
    total_ms: float = Field(description="from receipt to reply")


class FrameResult(BaseModel):
    """The reply to one accepted frame."""

    type: Literal["frame"] = "frame"
    session_id: str
    frame_index: int
    width: int
    height: int
    instances: list[InstanceOut]
    timings: Timings
    lag: int = Field(0, description="frames of this session still queued behind this one")
    dropped_frames: int = Field(0, description="frames dropped so far by drop_oldest")


class SessionCreate(BaseModel):
    """Options of a new live session."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="served model name; default: the served one")
    tracker: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra=tracker_options_schema()
    )
    backpressure: Literal["block", "drop_oldest"] = "block"
    queue_size: int = Field(4, ge=1, le=64, description="frames queued per session")


class SessionCreated(BaseModel):
    """Reply to ``POST /v1/sessions``."""

    session_id: str
    token: str
    expires_at: float = Field(description="Unix time at which the idle session expires")


class SessionInfo(BaseModel):
    """Reply to ``GET /v1/sessions/{id}``."""

    session_id: str
    model: str
    frame_index: int
    live_tracks: int
    backpressure: Literal["block", "drop_oldest"]
    expires_at: float
    tracker: dict[str, Any]
