"""Every Redis key name the service writes, in one place.

All keys of one session share the hash tag ``{<session id>}``, and all keys of the video-job
queue the hash tag ``{<jobs stream>}``, so that in a Redis Cluster each Lua script and each
transaction touches a single slot (one node). On a single Redis the tags change nothing.

With ``CTVIS_STREAM_SHARDS`` = N > 1 the frames stream and the job queue are N shards each,
every shard under its own hash tag (``shard_name``) so that the shards spread over a cluster's
primaries: shard k of the frames stream is the stream ``{<frames stream>:k}``, and shard k of
the job queue keeps its stream, admission keys and job records under ``{<jobs stream>:k}``
(``k`` may carry a ``.<salt>`` suffix that places the shard's hash slot, see ``shard_name``).
A session's frames go to shard ``shard_of(session id)``, a job to ``shard_of(job id)``, so a
job's record is found from its id alone. With N = 1 every name is the unsharded one.
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from typing import NamedTuple

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

PREFIX = "ctvis:"
FRAMES_STREAM = "ctvis:frames"
"""Default name of the frames stream (``CTVIS_FRAMES_STREAM``)."""
JOBS_STREAM = "ctvis:jobs"
"""Default name of the video-job queue (``CTVIS_JOBS_STREAM``)."""
WORKER_GROUP = "ctvis-workers"
"""Consumer group of the frame workers on every frames-stream shard."""
JOB_GROUP = "ctvis-job-workers"
"""Consumer group of the job workers on every job-queue shard."""


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


def shard_of(item_id: str, shards: int) -> int:
    """The shard (0 .. shards - 1) of a session or job id: CRC-32 of the id modulo
    ``shards``; stable across processes and versions (API replicas and workers agree)."""
    return zlib.crc32(item_id.encode()) % shards if shards > 1 else 0


@lru_cache(maxsize=1024)
def shard_name(name: str, shard: int, shards: int) -> str:
    """The hash-tag text of shard ``shard`` of ``shards`` of ``name``: ``name`` itself when
    unsharded, else ``name:shard``, with ``.<salt>`` appended (the first salt that fits) until
    its hash slot lies in the middle half of the shard-th of ``shards`` equal slot ranges.

    Plain hashing would put several shards on one primary and none on another; a cluster
    created with equal contiguous slot ranges per primary (``redis-cli --cluster create``,
    managed services) instead holds the same number of shards on every primary when
    ``shards`` is a multiple of the number of primaries. The names are fixed by the
    arguments alone (the search is deterministic), so every process derives the same ones.
    """
    if shards == 1:
        return name
    width = REDIS_CLUSTER_HASH_SLOTS / shards
    low, high = (shard + 0.25) * width, (shard + 0.75) * width
    salt = 0
    while True:
        text = f"{name}:{shard}" + (f".{salt}" if salt else "")
        if low <= key_slot(text.encode()) < high:
            return text
        salt += 1


def frames_stream_key(stream: str, shard: int = 0, shards: int = 1) -> str:
    """Stream: frame requests for the workers (shard ``shard`` of ``shards``); unsharded it
    is ``stream`` itself, as named by ``CTVIS_FRAMES_STREAM``."""
    return stream if shards == 1 else f"{{{shard_name(stream, shard, shards)}}}"


def frames_stream_keys(stream: str, shards: int) -> list[str]:
    """Every shard of the frames stream, in shard order."""
    return [frames_stream_key(stream, k, shards) for k in range(shards)]


def jobs_tag(stream: str, shard: int = 0, shards: int = 1) -> str:
    """The hash tag shared by every key of shard ``shard`` of the job queue on ``stream``."""
    return f"{{{shard_name(stream, shard, shards)}}}"


def job_key(stream: str, job_id: str, shards: int = 1) -> str:
    """Hash: one video job's record (state, counters, options, progress checkpoint), on the
    shard of its id."""
    return f"{jobs_tag(stream, shard_of(job_id, shards), shards)}:job:{job_id}"


def jobs_stream_key(stream: str, shard: int = 0, shards: int = 1) -> str:
    """Stream: ids of queued jobs, consumed by the workers' group."""
    return f"{jobs_tag(stream, shard, shards)}:queue"


def pending_key(stream: str, shard: int = 0, shards: int = 1) -> str:
    """Sorted set: job id -> unix time its place in the queue lapses (admission count)."""
    return f"{jobs_tag(stream, shard, shards)}:pending"


def pending_bytes_key(stream: str, shard: int = 0, shards: int = 1) -> str:
    """Hash: job id -> bytes of its upload (admission by bytes)."""
    return f"{jobs_tag(stream, shard, shards)}:pending-bytes"


class JobQueueKeys(NamedTuple):
    """The keys of one shard of the job queue (job records aside: ``job_key``)."""

    queue: str
    pending: str
    pending_bytes: str


def job_queue_keys(stream: str, shards: int) -> list[JobQueueKeys]:
    """The keys of every shard of the job queue on ``stream``, in shard order."""
    return [
        JobQueueKeys(
            jobs_stream_key(stream, k, shards),
            pending_key(stream, k, shards),
            pending_bytes_key(stream, k, shards),
        )
        for k in range(shards)
    ]
