"""Video jobs on ``ctvis worker`` processes, with progress checkpoints and dead letters.

The API stores the upload under ``job_dir/<job>/input`` (a directory every API replica and
worker shares), records the job in a Redis hash (with a TTL) and appends
its id to the jobs stream. A worker claims it through the consumer group, runs
``service.jobs.run_video_job`` and, every few clips, writes a progress checkpoint
(the ``progress`` field of the job hash: frame cursor, tracker state and the tracks
accumulated so far) and heart-beats its claim. If the worker
dies, another claims the job after ``job_claim_idle_ms`` and resumes from the checkpoint; the
result equals an uninterrupted run's exactly. A job that fails ``max_job_attempts`` times moves
to ``dead_letter`` with its error. Results are written once, atomically.

Admission is counted in Redis, so the limits hold across API replicas: the sorted set
``pending_key`` holds every upload under way and every job queued or running, scored
with the time its place lapses (an upload's lease, renewed as its bytes arrive; a job's TTL,
renewed by its worker), and the hash ``pending_bytes_key`` their upload sizes. One
Lua script drops lapsed places and admits or refuses an upload atomically; a job leaves both
when it ends (or its record is deleted), and both keys expire with the jobs. Every key of
one queue carries the queue's hash tag (``service.keys``), so its scripts and transactions stay
on one slot of a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from model.runner import Cancelled, progress_frames
from service.engine import FaultInjection
from service.errors import ApiError, store_unavailable
from service.jobs import (
    FINAL_STATES,
    JobLimits,
    JobOptions,
    job_error,
    new_job_dir,
    run_video_job,
    status_payload,
    storage_full,
    too_many_jobs,
    validate_or_discard,
)
from service.keys import job_key, jobs_stream_key, pending_bytes_key, pending_key
from service.metrics import Metrics
from service.models import ServedModel
from service.redis_conn import LazyAsyncClient, RedisMode, open_sync
from service.settings import get_settings

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

log = logging.getLogger("ctvis.jobs")

JOBS_STREAM = "ctvis:jobs"
JOB_GROUP = "ctvis-job-workers"

# KEYS: pending zset, pending-bytes hash. ARGV: job id, bytes, lease s, max jobs, max bytes,
# key TTL s. Returns {1, bytes held by the others} when admitted, {-1, 0} when max jobs are
# pending, {-2, bytes held by the others} when the bytes would pass max bytes.
_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not known and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return {-1, 0}
end
local used = 0
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
_JSON_FIELDS = ("options", "error")
_STATUS_FIELDS = ("state", "frames_total", "frames_done", "options", "owner", "attempts",
                  "created_at", "started_at", "finished_at", "error", "cancel")  # fmt: skip


def _decode(raw: dict[bytes, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k == b"progress":
            continue  # binary checkpoint, read on its own
        key, text = k.decode(), v.decode()
        if key in _JSON_FIELDS:
            out[key] = json.loads(text)
        elif key in ("started_at", "finished_at", "created_at"):
            out[key] = float(text) if text else None
        elif key in ("frames_total",):
            out[key] = int(text) if text else None
        else:
            out[key] = text
    return out


def _encode(fields: dict[str, Any]) -> dict[FieldT, EncodableT]:
    return {
        k: json.dumps(v) if k in _JSON_FIELDS else ("" if v is None else str(v))
        for k, v in fields.items()
    }


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
    ) -> None:
        self._lazy = LazyAsyncClient(url, redis_mode, socket_connect_timeout=2, socket_timeout=10)
        self._reserve: Any = None
        self.root = Path(job_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_frames = max_frames
        self.ttl_s = ttl_s
        self.queue = stream
        self.stream = jobs_stream_key(stream)
        self._pending = pending_key(stream)
        self._pending_bytes = pending_bytes_key(stream)

    async def _c(self) -> Any:
        client = await self._lazy.get()
        if self._reserve is None:
            self._reserve = client.register_script(_RESERVE_LUA)
        return client

    def new_workdir(self) -> tuple[str, Path]:
        return new_job_dir(self.root)

    async def reserve(self, job_id: str, nbytes: int, limits: JobLimits) -> None:
        """Admit or refuse the upload of ``job_id`` against every replica's jobs."""
        keys = [self._pending, self._pending_bytes]
        key_ttl_s = max(self.ttl_s, int(limits.upload_lease_s) + 1)
        limits_args = [limits.max_pending_jobs, limits.max_job_bytes, key_ttl_s]
        args: list[str | int | float] = [job_id, nbytes, limits.upload_lease_s, *limits_args]
        await self._call(self._c())
        verdict, used = await self._call(self._reserve(keys=keys, args=args))
        if verdict == -1:
            raise too_many_jobs(limits)
        if verdict == -2:
            raise storage_full(int(used), nbytes, limits)

    async def release(self, job_id: str) -> None:
        client = await self._call(self._c())
        async with client.pipeline(transaction=True) as pipe:
            pipe.zrem(self._pending, job_id)
            pipe.hdel(self._pending_bytes, job_id)
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
        fields = {"state": "queued", "frames_total": total, "frames_done": 0,
                  "options": asdict(options), "owner": owner or "", "attempts": 0,
                  "created_at": now, "cancel": 0, "error": None,
                  "max_pixels": limits.max_video_pixels}  # fmt: skip
        key = job_key(self.queue, job_id)
        client = await self._call(self._c())
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=_encode(fields))
            pipe.expire(key, self.ttl_s)
            pipe.zadd(self._pending, {job_id: now + self.ttl_s})
            pipe.hset(self._pending_bytes, job_id, size)
            pipe.expire(self._pending, self.ttl_s)
            pipe.expire(self._pending_bytes, self.ttl_s)
            pipe.xadd(self.stream, {"job_id": job_id})
            pipe.expire(self.stream, self.ttl_s)
            await self._call(pipe.execute())
        return status_payload(job_id, fields)

    async def _fields(self, job_id: str, owner: str | None) -> dict[str, Any]:
        # HMGET the small fields only: the hash also holds the (large) progress checkpoint
        values = await self._call(
            (await self._call(self._c())).hmget(job_key(self.queue, job_id), list(_STATUS_FIELDS))
        )
        raw = {k.encode(): v for k, v in zip(_STATUS_FIELDS, values, strict=True) if v is not None}
        fields = _decode(raw) if raw else None
        if fields is None or (fields.get("owner") or None) != owner:
            raise ApiError(404, "job_not_found", f"video job {job_id} not found")
        return fields

    async def status(self, job_id: str, owner: str | None) -> dict[str, Any]:
        return status_payload(job_id, await self._fields(job_id, owner))

    async def events(self, job_id: str, owner: str | None) -> AsyncIterator[dict[str, Any]]:
        """Poll the job every 0.25 s; yield each change (``{}`` as keep-alive every 15 s)."""
        last: dict[str, Any] | None = None
        quiet_since = time.monotonic()
        while True:
            status = status_payload(job_id, await self._fields(job_id, owner))
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
        fields = await self._fields(job_id, owner)
        key = job_key(self.queue, job_id)
        if fields["state"] in FINAL_STATES:
            client = await self._call(self._c())
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.zrem(self._pending, job_id)
                pipe.hdel(self._pending_bytes, job_id)
                await self._call(pipe.execute())
            shutil.rmtree(self.root / job_id, ignore_errors=True)
        else:
            client = await self._call(self._c())
            await self._call(client.hset(key, "cancel", 1))

    async def close(self) -> None:
        await self._lazy.close()


class JobWorker:
    """Worker side: claim jobs from the stream and run them with checkpoints."""

    def __init__(
        self,
        url: str,
        served: ServedModel,
        job_dir: str | Path,
        *,
        claim_idle_ms: int = 30_000,
        max_attempts: int = 3,
        checkpoint_every_clips: int = 4,
        ttl_s: int = 86_400,
        stream: str = JOBS_STREAM,
        faults: FaultInjection | None = None,
        metrics: Metrics | None = None,
        redis_mode: RedisMode = "auto",
    ) -> None:
        self._url = url
        self._mode = redis_mode
        self._client: Any = None
        self.served = served
        self.root = Path(job_dir)
        self.metrics = metrics
        self.claim_idle_ms = claim_idle_ms
        self.max_attempts = max_attempts
        self.checkpoint_every_clips = checkpoint_every_clips
        self.ttl_s = ttl_s
        self.queue = stream
        self.stream = jobs_stream_key(stream)
        self.pending = pending_key(stream)
        self.pending_bytes = pending_bytes_key(stream)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-jobs"
        self.faults = faults

    @property
    def client(self) -> Any:
        """The blocking client, connected (and the server's mode asked) on first use."""
        if self._client is None:
            self._client = open_sync(
                self._url, self._mode, socket_connect_timeout=2, socket_timeout=30
            )
        return self._client

    def _ready(self) -> bool:
        import redis

        try:
            self.client.xgroup_create(self.stream, JOB_GROUP, id="0", mkstream=False)
        except redis.ResponseError as exc:
            return "BUSYGROUP" in str(exc)
        return True

    def next_job(self, block_ms: int) -> tuple[bytes, str] | None:
        """A stale job another worker abandoned, else a new one; None when idle."""
        import redis

        if not self._ready():
            time.sleep(block_ms / 1000)
            return None
        try:
            # decode_responses is off: ids and fields are bytes
            claimed = cast(
                "list[Any]",
                self.client.xautoclaim(
                    self.stream, JOB_GROUP, self.consumer, self.claim_idle_ms, "0-0", count=1
                ),
            )
            entries: list[tuple[bytes, dict[bytes, bytes]]] = [e for e in claimed[1] if e[1]]
            if not entries:
                got = cast(
                    "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]",
                    self.client.xreadgroup(
                        JOB_GROUP, self.consumer, {self.stream: ">"}, count=1, block=block_ms
                    ),
                )
                entries = got[0][1] if got else []
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                return None
            raise
        if not entries:
            return None
        entry_id, fields = entries[0]
        return entry_id, fields[b"job_id"].decode()

    def _update(self, job_id: str, **fields: Any) -> None:
        """Write job fields and renew the job's TTL and its place among pending jobs."""
        key = job_key(self.queue, job_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping=_encode(fields))
        pipe.expire(key, self.ttl_s)
        pipe.zadd(self.pending, {job_id: time.time() + self.ttl_s}, xx=True)
        pipe.expire(self.pending, self.ttl_s)
        pipe.expire(self.pending_bytes, self.ttl_s)
        pipe.execute()

    def _forget(self, job_id: str) -> None:
        """Free the job's place and bytes among pending jobs (it ended or is gone)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(self.pending, job_id)
        pipe.hdel(self.pending_bytes, job_id)
        pipe.execute()

    def _done(self, entry_id: bytes) -> None:
        self.client.xack(self.stream, JOB_GROUP, entry_id)
        self.client.xdel(self.stream, entry_id)

    def run_one(self, entry_id: bytes, job_id: str, stop: threading.Event) -> str:
        """Run (or resume) one claimed job; returns its new state."""
        key = job_key(self.queue, job_id)
        raw = cast("dict[bytes, bytes]", self.client.hgetall(key))  # bytes: no decode_responses
        if not raw or _decode(raw)["state"] in FINAL_STATES:
            self._forget(job_id)
            self._done(entry_id)  # expired, finished or deleted: nothing to do
            return "gone"
        fields = _decode(raw)
        attempts = int(self.client.hincrby(key, "attempts", 1))
        if attempts > self.max_attempts:
            error = fields.get("error") or {"code": "job_failed", "message": "too many attempts"}
            return self._final(entry_id, job_id, "dead_letter", error)
        workdir = self.root / job_id
        resume = cast("bytes | None", self.client.hget(key, "progress"))
        self._update(
            job_id,
            state="running",
            started_at=fields.get("started_at") or time.time(),
            resumed_from=progress_frames(resume) if resume else 0,
        )
        faults = self.faults
        last_beat = [0.0]

        def progress(done: int, total: int | None) -> None:
            crash_at = faults.crash_after_job_frames if faults else None
            if crash_at is not None and done >= crash_at:
                os._exit(137)  # test-only: die mid-job like SIGKILL
            now = time.monotonic()
            if now - last_beat[0] >= 0.5:
                last_beat[0] = now
                self._update(job_id, frames_done=done)
                # heartbeat: reset the claim's idle time so nobody takes a live job
                self.client.xclaim(
                    self.stream, JOB_GROUP, self.consumer, 0, [entry_id], justid=True
                )

        def checkpoint(done: int, payload: bytes) -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(key, "progress", payload)
            pipe.expire(key, self.ttl_s)
            pipe.execute()

        def should_stop() -> bool:
            if stop.is_set():
                raise _Interrupted
            return self.client.hget(key, "cancel") == b"1"

        options = JobOptions(**fields["options"])
        # the API's budget travels with the job; this process's for jobs queued without one
        max_pixels = int(fields.get("max_pixels") or get_settings().max_video_pixels)
        try:
            if faults and faults.fail_job_video_id == options.video_id:
                raise RuntimeError("injected job failure")
            frames = run_video_job(
                self.served, workdir, options, progress, should_stop, resume, checkpoint,
                self.checkpoint_every_clips, max_pixels,
            )  # fmt: skip
        except _Interrupted:
            # Shutting down: hand the job back at once (its checkpoint stays) without
            # counting this as a failed attempt.
            self.client.hincrby(key, "attempts", -1)
            self._update(job_id, state="queued")
            self.client.xadd(self.stream, {"job_id": job_id})
            self._done(entry_id)
            return "interrupted"
        except Cancelled:
            return self._final(entry_id, job_id, "cancelled", None)
        except Exception as exc:  # noqa: BLE001 - bad input fails; the rest is retried
            error = job_error(exc, workdir)
            if error["code"] != "job_failed":  # the video itself: another try fails alike
                return self._final(entry_id, job_id, "failed", error)
            log.warning("job %s attempt %d failed: %r", job_id, attempts, exc)
            if attempts >= self.max_attempts:
                return self._final(entry_id, job_id, "dead_letter", error)
            self._update(job_id, state="queued", error=error)
            self.client.xadd(self.stream, {"job_id": job_id})  # retry on any worker
            self._done(entry_id)
            return "retry"
        self._update(job_id, frames_done=frames, frames_total=frames)
        return self._final(entry_id, job_id, "done", None)

    def _final(self, entry_id: bytes, job_id: str, state: str, error: Any) -> str:
        self._update(job_id, state=state, error=error, finished_at=time.time())
        (self.root / job_id / "input").unlink(missing_ok=True)
        self._forget(job_id)
        self.client.hdel(job_key(self.queue, job_id), "progress")
        self._done(entry_id)
        if self.metrics is not None:
            self.metrics.jobs.labels(state).inc()
        return state

    def serve(self, stop: threading.Event) -> int:
        """Run jobs until ``stop``; a job in progress at ``stop`` is left for another worker."""
        count = 0
        while not stop.is_set():
            try:
                claimed = self.next_job(500)
                if claimed is not None:
                    self.run_one(*claimed, stop)
                    count += 1
            except Exception as exc:  # noqa: BLE001 - Redis restarts etc.: retry, stay up
                log.warning("job worker loop error (retrying): %r", exc)
                stop.wait(0.5)
        if self._client is not None:
            self._client.close()
        return count


class _Interrupted(Exception):
    """The worker is shutting down in the middle of a job."""


async def run_job_worker(worker: JobWorker, stop: asyncio.Event) -> int:
    """Run ``worker.serve`` in a thread until ``stop`` is set."""
    flag = threading.Event()

    async def relay() -> None:
        await stop.wait()
        flag.set()

    relay_task = asyncio.create_task(relay())
    try:
        return await asyncio.to_thread(worker.serve, flag)
    finally:
        flag.set()  # also when cancelled: the thread must not outlive the loop
        relay_task.cancel()
