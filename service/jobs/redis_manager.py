"""Video jobs on ``ctvis worker`` processes: the API side (``RedisJobManager``).

The API stores the upload under ``job_dir/<job>/input`` (a directory every API replica and
worker shares), records the job in a Redis hash (a ``JobStatus``, with a TTL) and appends its
id to the jobs stream. A worker (``service.jobs.redis_worker``) claims it through the consumer
group, runs ``service.jobs.video.run_video_job`` and, every few clips, writes a progress
checkpoint (the ``progress`` field of the job hash: frame cursor, tracker state and the tracks
accumulated so far) and heart-beats its claim. If the worker dies, another claims the job
after ``job_claim_idle_ms`` and resumes from the checkpoint; the result equals an
uninterrupted run's exactly. A job that fails ``max_job_attempts`` times moves to
``dead_letter`` with its error. Results are written once, atomically.

Admission is counted in Redis, so the limits hold across API replicas: the sorted set
``pending_key`` holds every upload under way and every job queued or running, scored
with the time its place lapses (an upload's lease, renewed as its bytes arrive; a job's TTL,
renewed by its worker), and the hash ``pending_bytes_key`` their upload sizes. One
Lua script drops lapsed places and admits or refuses an upload atomically; a job leaves both
when it ends (or its record is deleted), and both keys expire with the jobs. Every key of
one queue carries the queue's hash tag (``service.keys``), so its scripts and transactions stay
on one slot of a Redis Cluster.

With ``shards`` > 1 (``CTVIS_STREAM_SHARDS``) the queue is that many shards, each with its own
stream, ``pending`` and ``pending-bytes`` keys and job records under its own hash tag; a job
lives on the shard of its id (``service.keys.shard_of``), so each job's keys still share one
slot and its record is found from its id. The limits stay global: before a reservation's
script runs on its own shard, one script per other shard drops that shard's lapsed places and
reports its jobs and bytes, and the reservation counts them in. Those counts are read just
before the reservation, not in the same step, so uploads admitted at the same moment on
different shards can pass ``max_pending_jobs`` by at most ``shards - 1`` jobs (and
``max_job_bytes`` by their bytes); with one shard the check is exact, as before.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from service.errors import ApiError, store_unavailable
from service.jobs.admission import JobLimits, storage_full, too_many_jobs
from service.jobs.status import FINAL_STATES, REDIS_FIELDS, JobOptions, JobStatus
from service.jobs.video import new_job_dir, validate_or_discard
from service.keys import JOBS_STREAM, JobQueueKeys, job_key, job_queue_keys, shard_of
from service.redis_conn import LazyAsyncClient, RedisMode

"""Default name of the job queue (``CTVIS_JOBS_STREAM``); its keys derive from it."""
"""The workers' consumer group on the jobs stream."""

# Both scripts: KEYS: pending zset, pending-bytes hash of one shard; they first drop the
# places that lapsed.
_DROP_LAPSED_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
"""
# Returns {jobs, bytes} held on the shard.
_USAGE_LUA = (
    _DROP_LAPSED_LUA
    + """
local used = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do used = used + tonumber(v) end
return {redis.call('ZCARD', KEYS[1]), used}
"""
)
# ARGV: job id, bytes, lease s, max jobs, max bytes, key TTL s, jobs and bytes held on the
# other shards. Returns {1, bytes held by the others} when admitted, {-1, 0} when max jobs are
# pending, {-2, bytes held by the others} when the bytes would pass max bytes.
_RESERVE_LUA = (
    _DROP_LAPSED_LUA
    + """
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
local jobs = redis.call('ZCARD', KEYS[1]) + tonumber(ARGV[7])
if not known and jobs >= tonumber(ARGV[4]) then
  return {-1, 0}
end
local used = tonumber(ARGV[8])
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do used = used + tonumber(v) end
used = used - tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if used + tonumber(ARGV[2]) > tonumber(ARGV[5]) then
  return {-2, used}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return {1, used}
"""
)


class RedisJobManager:
    """API side: jobs live in Redis and run on workers; same interface as LocalJobManager."""

    def __init__(
        self,
        url: str,
        job_dir: str | Path,
        max_frames: int,
        ttl_s: int,
        stream: str = JOBS_STREAM,
        redis_mode: RedisMode = "auto",
        shards: int = 1,
    ) -> None:
        self._lazy = LazyAsyncClient(url, redis_mode, socket_connect_timeout=2, socket_timeout=10)
        self._reserve: Any = None
        self._usage: Any = None
        self.root = Path(job_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_frames = max_frames
        self.ttl_s = ttl_s
        self.queue = stream
        self.shards = shards
        self._queues = job_queue_keys(stream, shards)

    def _keys(self, job_id: str) -> JobQueueKeys:
        """The queue keys of the shard of ``job_id``."""
        return self._queues[shard_of(job_id, self.shards)]

    async def _c(self) -> Any:
        client = await self._lazy.get()
        if self._reserve is None:
            self._reserve = client.register_script(_RESERVE_LUA)
            self._usage = client.register_script(_USAGE_LUA)
        return client

    def new_workdir(self) -> tuple[str, Path]:
        return new_job_dir(self.root)

    async def reserve(self, job_id: str, nbytes: int, limits: JobLimits) -> None:
        """Admit or refuse the upload of ``job_id`` against every replica's jobs (on every
        shard: see the module docstring)."""
        own = self._keys(job_id)
        key_ttl_s = max(self.ttl_s, int(limits.upload_lease_s) + 1)
        limits_args = [limits.max_pending_jobs, limits.max_job_bytes, key_ttl_s]
        args: list[str | int | float] = [job_id, nbytes, limits.upload_lease_s, *limits_args]
        await self._call(self._c())
        others = [self._usage(keys=[q.pending, q.pending_bytes]) for q in self._queues if q != own]
        held = await self._call(asyncio.gather(*others))
        args += [sum(int(jobs) for jobs, _ in held), sum(int(used) for _, used in held)]
        keys = [own.pending, own.pending_bytes]
        verdict, used = await self._call(self._reserve(keys=keys, args=args))
        if verdict == -1:
            raise too_many_jobs(limits)
        if verdict == -2:
            raise storage_full(int(used), nbytes, limits)

    async def release(self, job_id: str) -> None:
        own = self._keys(job_id)
        client = await self._call(self._c())
        async with client.pipeline(transaction=True) as pipe:
            pipe.zrem(own.pending, job_id)
            pipe.hdel(own.pending_bytes, job_id)
            await self._call(pipe.execute())

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except Exception as exc:  # noqa: BLE001 - connection errors of the client library
            raise store_unavailable(exc) from exc

    async def create(
        self,
        job_id: str,
        workdir: Path,
        options: JobOptions,
        owner: str | None,
        limits: JobLimits,
    ) -> dict[str, Any]:
        """Validate the upload and queue the job; its reservation becomes the job's place
        (lapsing with the job record) and its size the upload's actual one."""
        total = await validate_or_discard(
            workdir, options, self.max_frames, limits.max_video_pixels
        )
        size = (workdir / "input").stat().st_size
        now = time.time()
        status = JobStatus(
            "queued", options, frames_total=total, created_at=now, owner=owner,
            max_pixels=limits.max_video_pixels,
        )  # fmt: skip
        key, own = job_key(self.queue, job_id, self.shards), self._keys(job_id)
        client = await self._call(self._c())
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=status.to_redis())
            pipe.expire(key, self.ttl_s)
            pipe.zadd(own.pending, {job_id: now + self.ttl_s})
            pipe.hset(own.pending_bytes, job_id, size)
            pipe.expire(own.pending, self.ttl_s)
            pipe.expire(own.pending_bytes, self.ttl_s)
            pipe.xadd(own.queue, {"job_id": job_id})
            pipe.expire(own.queue, self.ttl_s)
            await self._call(pipe.execute())
        return status.payload(job_id)

    async def _load(self, job_id: str, owner: str | None) -> JobStatus:
        """The job's record (404 unless it exists and belongs to ``owner``)."""
        # HMGET the record's fields only: the hash also holds the (large) progress checkpoint
        client = await self._call(self._c())
        key = job_key(self.queue, job_id, self.shards)
        values = await self._call(client.hmget(key, list(REDIS_FIELDS)))
        raw = {k.encode(): v for k, v in zip(REDIS_FIELDS, values, strict=True) if v is not None}
        status = JobStatus.from_redis(raw)
        if status is None or status.owner != owner:
            raise ApiError(404, "job_not_found", f"video job {job_id} not found")
        return status

    async def status(self, job_id: str, owner: str | None) -> dict[str, Any]:
        return (await self._load(job_id, owner)).payload(job_id)

    async def events(self, job_id: str, owner: str | None) -> AsyncIterator[dict[str, Any]]:
        """Poll the job every 0.25 s; yield each change (``{}`` as keep-alive every 15 s)."""
        last: dict[str, Any] | None = None
        quiet_since = time.monotonic()
        while True:
            status = (await self._load(job_id, owner)).payload(job_id)
            if status != last:
                last, quiet_since = status, time.monotonic()
                yield status
                if status["state"] in FINAL_STATES:
                    return
            elif time.monotonic() - quiet_since > 15:
                quiet_since = time.monotonic()
                yield {}
            await asyncio.sleep(0.25)

    async def cancel(self, job_id: str, owner: str | None) -> None:
        """Ask the job's worker to stop, or forget a finished job and delete its files."""
        status = await self._load(job_id, owner)
        key, own = job_key(self.queue, job_id, self.shards), self._keys(job_id)
        client = await self._call(self._c())
        if status.state in FINAL_STATES:
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.zrem(own.pending, job_id)
                pipe.hdel(own.pending_bytes, job_id)
                await self._call(pipe.execute())
            shutil.rmtree(self.root / job_id, ignore_errors=True)
        else:
            status.cancel = True
            await self._call(client.hset(key, mapping=status.to_redis("cancel")))

    async def close(self) -> None:
        await self._lazy.close()
