"""A video job's record as one typed value, and its encoding as the fields of a Redis hash.

Both job managers keep a ``JobStatus`` per job: ``LocalJobManager`` in memory, the Redis
manager and its workers as the fields of the job's hash (``to_redis`` / ``from_redis``, the
only place the field encoding is written down). The hash also holds the binary ``progress``
checkpoint of a running job, which is read on its own and is not part of this record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, cast

from model.video.overlay import OVERLAY_MIN_SCORE

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

JobState = Literal["queued", "running", "done", "failed", "cancelled", "dead_letter"]
FINAL_STATES: tuple[JobState, ...] = ("done", "failed", "cancelled", "dead_letter")


@dataclass
class JobOptions:
    """What the client asked for."""

    frame_stride: int = 1
    max_frames: int | None = None
    overlay: bool = False
    video_id: int = 1
    overlay_score: float = OVERLAY_MIN_SCORE  # lowest results score the overlay draws


@dataclass
class JobStatus:
    """One video job's record.

    Attributes:
        state: where the job is; one of ``FINAL_STATES`` once it ended.
        options: what the client asked for.
        frames_total: frames the job tracks, when known (from the container or at the end).
        frames_done: frames tracked so far.
        attempts: runs started (a run cut short by a worker's shutdown does not count).
        created_at / started_at / finished_at: unix times (None until they happen).
        error: ``{"code", "message"}`` of the last failure.
        owner: digest of the API key that created the job (None when keys are off).
        cancel: the client asked to cancel (workers poll it).
        max_pixels: the API's frame budget, which travels with the job to the workers.
        resumed_from: frames the current run skipped by resuming a checkpoint.
    """

    state: JobState
    options: JobOptions
    frames_total: int | None = None
    frames_done: int = 0
    attempts: int = 0
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, str] | None = None
    owner: str | None = None
    cancel: bool = False
    max_pixels: int | None = None
    resumed_from: int = 0

    def payload(self, job_id: str) -> dict[str, Any]:
        """The JSON of ``GET /v1/videos/{job}``, with the rate and ETA of a running job."""
        started, finished, done = self.started_at, self.finished_at, self.frames_done
        elapsed = ((finished or time.time()) - started) if started else None
        fps = done / elapsed if elapsed and done else None
        eta = None
        if fps and self.frames_total and self.state == "running":
            eta = max(self.frames_total - done, 0) / fps
        return {
            "job_id": job_id,
            "state": self.state,
            "frames_done": done,
            "frames_total": self.frames_total,
            "fps": fps,
            "eta_s": eta,
            "error": self.error,
            "attempts": self.attempts,
            "overlay": bool(self.options.overlay),
            "created_at": self.created_at,
        }

    def to_redis(self, *names: str) -> dict[FieldT, EncodableT]:
        """Hash fields of the named attributes (all when none are named)."""
        chosen = names or REDIS_FIELDS
        return {name: _encode(name, getattr(self, name)) for name in chosen}

    @classmethod
    def from_redis(cls, raw: Mapping[bytes, bytes]) -> JobStatus | None:
        """The record in a job hash's fields (unknown ones, e.g. ``progress``, are skipped);
        None when there is no record (no ``state``)."""
        values = {
            key.decode(): field_from_redis(key.decode(), value)
            for key, value in raw.items()
            if key.decode() in REDIS_FIELDS
        }
        if "state" not in values or "options" not in values:
            return None
        return cls(**values)


_JSON = ("options", "error")
_FLOAT = ("created_at", "started_at", "finished_at")
_OPTIONAL_INT = ("frames_total", "max_pixels")
_COUNT = ("frames_done", "attempts", "resumed_from")
REDIS_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(JobStatus))
"""The hash fields of a job record (what a status read fetches with ``HMGET``)."""


def _encode(name: str, value: Any) -> EncodableT:
    if name == "options":
        return json.dumps(asdict(value))
    if name in _JSON:
        return json.dumps(value)
    if name == "cancel":
        return "1" if value else "0"
    return "" if value is None else str(value)


def field_from_redis(name: str, raw: bytes) -> Any:
    """The value of one hash field of a job record (as ``JobStatus`` holds it)."""
    text = raw.decode()
    if name == "options":
        return JobOptions(**json.loads(text))
    if name in _JSON:
        return json.loads(text) if text else None
    if name in _FLOAT:
        return float(text) if text else None
    if name in _OPTIONAL_INT:
        return int(text) if text else None
    if name in _COUNT:
        return int(text) if text else 0
    if name == "cancel":
        return text == "1"
    if name == "owner":
        return text or None
    return cast("JobState", text)
