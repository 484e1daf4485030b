"""Video jobs on ``ctvis worker`` processes, with progress checkpoints and dead letters.

The API stores the upload under ``job_dir/<job>/input`` (a directory every API replica and
worker shares), records the job in the Redis hash ``ctvis:job:<job>`` (with a TTL) and appends
its id to the jobs stream. A worker claims it through the consumer group, runs
``service.jobs.run_video_job`` and, every few clips, writes a progress checkpoint
(the ``progress`` field of the job hash: frame cursor, tracker state and the tracks
accumulated so far) and heart-beats its claim. If the worker
dies, another claims the job after ``job_claim_idle_ms`` and resumes from the checkpoint; the
result equals an uninterrupted run's exactly. A job that fails ``max_job_attempts`` times moves
to ``dead_letter`` with its error. Results are written once, atomically.
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
from model.video_io import VideoReadError
from service.engine import FaultInjection
from service.errors import ApiError
from service.jobs import (
    FINAL_STATES,
    JobOptions,
    new_job_dir,
    run_video_job,
    status_payload,
    validate_or_discard,
)
from service.metrics import Metrics
from service.models import ServedModel

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

log = logging.getLogger("ctvis.jobs")

JOB_KEY = "ctvis:job:{job_id}"
JOBS_STREAM = "ctvis:jobs"
JOB_GROUP = "ctvis-job-workers"
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
        self, url: str, job_dir: str | Path, max_frames: int, ttl_s: int, stream: str = JOBS_STREAM
    ) -> None:
        from redis import asyncio as aioredis

        self._client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
        self.root = Path(job_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_frames = max_frames
        self.ttl_s = ttl_s
        self.stream = stream

    def new_workdir(self) -> tuple[str, Path]:
        return new_job_dir(self.root)

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except Exception as exc:  # noqa: BLE001 - connection errors of the client library
            raise ApiError(503, "state_store_unavailable", f"Redis unavailable: {exc}") from exc

    async def create(
        self, job_id: str, workdir: Path, options: JobOptions, owner: str | None
    ) -> dict[str, Any]:
        total = await validate_or_discard(workdir, options, self.max_frames)
        fields = {"state": "queued", "frames_total": total, "frames_done": 0,
                  "options": asdict(options), "owner": owner or "", "attempts": 0,
                  "created_at": time.time(), "cancel": 0, "error": None}  # fmt: skip
        key = JOB_KEY.format(job_id=job_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=_encode(fields))
            pipe.expire(key, self.ttl_s)
            pipe.xadd(self.stream, {"job_id": job_id})
            pipe.expire(self.stream, self.ttl_s)
            await self._call(pipe.execute())
        return status_payload(job_id, fields)

    async def _fields(self, job_id: str, owner: str | None) -> dict[str, Any]:
        # HMGET the small fields only: the hash also holds the (large) progress checkpoint
        values = await self._call(
            self._client.hmget(JOB_KEY.format(job_id=job_id), list(_STATUS_FIELDS))
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
        key = JOB_KEY.format(job_id=job_id)
        if fields["state"] in FINAL_STATES:
            await self._call(self._client.delete(key))
            shutil.rmtree(self.root / job_id, ignore_errors=True)
        else:
            await self._call(self._client.hset(key, "cancel", 1))

    async def close(self) -> None:
        await self._client.aclose()


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
    ) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=30)
        self.served = served
        self.root = Path(job_dir)
        self.metrics = metrics
        self.claim_idle_ms = claim_idle_ms
        self.max_attempts = max_attempts
        self.checkpoint_every_clips = checkpoint_every_clips
        self.ttl_s = ttl_s
        self.stream = stream
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-jobs"
        self.faults = faults

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
        key = JOB_KEY.format(job_id=job_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping=_encode(fields))
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def _done(self, entry_id: bytes) -> None:
        self.client.xack(self.stream, JOB_GROUP, entry_id)
        self.client.xdel(self.stream, entry_id)

    def run_one(self, entry_id: bytes, job_id: str, stop: threading.Event) -> str:
        """Run (or resume) one claimed job; returns its new state."""
        key = JOB_KEY.format(job_id=job_id)
        raw = cast("dict[bytes, bytes]", self.client.hgetall(key))  # bytes: no decode_responses
        if not raw or _decode(raw)["state"] in FINAL_STATES:
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
        try:
            if faults and faults.fail_job_video_id == options.video_id:
                raise RuntimeError("injected job failure")
            frames = run_video_job(
                self.served, workdir, options, progress, should_stop, resume, checkpoint,
                self.checkpoint_every_clips,
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
        except (VideoReadError, ValueError) as exc:
            error = {"code": "unsupported_video", "message": str(exc)}
            return self._final(entry_id, job_id, "failed", error)
        except Exception as exc:  # noqa: BLE001 - retried, then dead-lettered
            log.warning("job %s attempt %d failed: %r", job_id, attempts, exc)
            error = {"code": "job_failed", "message": repr(exc)}
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
        self.client.hdel(JOB_KEY.format(job_id=job_id), "progress")
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
        self.client.close()
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
