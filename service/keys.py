"""Every Redis key name the service writes, in one place.

All keys of one session share the hash tag ``{<session id>}``, and all keys of the video-job
queue the hash tag ``{<jobs stream>}``, so that in a Redis Cluster each Lua script and each
transaction touches a single slot (one node). On a single Redis the tags change nothing.
"""

from __future__ import annotations

PREFIX = "ctvis:"


def session_key(session_id: str) -> str:
    """Hash: the session's ``meta`` JSON and ``frame_index``."""
    return f"{PREFIX}{{{session_id}}}:session"


def state_key(session_id: str) -> str:
    """String: the session's tracker state bytes (``model.tracker.codec``)."""
    return f"{PREFIX}{{{session_id}}}:state"


def delta_key(session_id: str, version: int | str) -> str:
    """String: the state delta that made version ``version`` (deltas after the snapshot in
    ``state_key`` are versions ``snapshot_at + 1 .. frame_index`` of the session hash)."""
    return f"{PREFIX}{{{session_id}}}:delta:{version}"


def staging_key(session_id: str, owner: str) -> str:
    """String: a state being saved by writer ``owner`` (renamed into ``state_key``)."""
    return f"{PREFIX}{{{session_id}}}:staging:{owner}"


def lease_key(session_id: str) -> str:
    """String: the owner token of the session's frame lease (short PX expiry)."""
    return f"{PREFIX}{{{session_id}}}:lease"


SESSIONS_KEY = PREFIX + "sessions"
"""Sorted set: session id -> unix time it expires (the live-session count)."""


def reply_key(request_id: str) -> str:
    """List: a worker's reply to one frame request (the API waits on it with BLPOP)."""
    return f"{PREFIX}reply:{request_id}"


def jobs_tag(stream: str) -> str:
    """The hash tag shared by every key of the job queue on ``stream``."""
    return f"{{{stream}}}"


def job_key(stream: str, job_id: str) -> str:
    """Hash: one video job's record (state, counters, options, progress checkpoint)."""
    return f"{jobs_tag(stream)}:job:{job_id}"


def jobs_stream_key(stream: str) -> str:
    """Stream: ids of queued jobs, consumed by the workers' group."""
    return f"{jobs_tag(stream)}:queue"


def pending_key(stream: str) -> str:
    """Sorted set: job id -> unix time its place in the queue lapses (admission count)."""
    return f"{jobs_tag(stream)}:pending"


def pending_bytes_key(stream: str) -> str:
    """Hash: job id -> bytes of its upload (admission by bytes)."""
    return f"{jobs_tag(stream)}:pending-bytes"
