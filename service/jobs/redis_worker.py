"""Video jobs on ``ctvis worker`` processes: the worker side (``JobWorker``).

A worker reads job ids from the jobs stream through the workers' consumer group
(``service.streams``), runs each job with progress checkpoints in the job's hash and heart-beats
its claim while it runs; see ``service.jobs.redis_manager`` for the whole design. Its Redis
client is a blocking one: jobs run in a thread (``run_job_worker``), and the tracking loop
calls back into it for progress, checkpoints and the cancel flag. With ``shards`` > 1 it reads
the queue's shards in turn (``next_job``); a job's keys are those of its id's shard.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from model.video.progress import progress_frames
from model.video.runner import Cancelled
from service.jobs.status import FINAL_STATES, REDIS_FIELDS, JobState, JobStatus, field_from_redis
from service.jobs.video import job_error, run_video_job
from service.keys import JOB_GROUP, JOBS_STREAM, JobQueueKeys, job_key, job_queue_keys, shard_of
from service.metrics import Metrics
from service.redis_conn import RedisMode, open_sync
from service.served import ServedModel
from service.settings import get_settings
from service.streams import StreamConsumer, StreamGone, run_plan

log = logging.getLogger("ctvis.jobs")


class _Interrupted(Exception):
    """The worker is shutting down in the middle of a job."""


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
        metrics: Metrics | None = None,
        redis_mode: RedisMode = "auto",
        shards: int = 1,
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
        self.shards = shards
        self._queues = job_queue_keys(stream, shards)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-jobs"
        self._consumers = [StreamConsumer(q.queue, JOB_GROUP, self.consumer) for q in self._queues]
        self._turn = 0  # the shard the next read looks at

    @property
    def client(self) -> Any:
        """The blocking client, connected (and the server's mode asked) on first use."""
        if self._client is None:
            self._client = open_sync(
                self._url, self._mode, socket_connect_timeout=2, socket_timeout=30
            )
        return self._client

    def _keys(self, job_id: str) -> JobQueueKeys:
        """The queue keys of the shard of ``job_id``."""
        return self._queues[shard_of(job_id, self.shards)]

    def _jobs(self, job_id: str) -> StreamConsumer:
        """The consumer of the shard of ``job_id`` (the shard its entry was read from)."""
        return self._consumers[shard_of(job_id, self.shards)]

    def next_job(self, block_ms: int) -> tuple[bytes, str] | None:
        """A stale job another worker abandoned, else a new one; None when idle.

        Each call reads the next shard in turn, waiting up to ``block_ms / shards`` there, so
        an idle worker looks at every shard (and for stale jobs on it) within about
        ``block_ms``; a job waits at most that long for an idle worker, which is nothing
        next to its run time.
        """
        jobs = self._consumers[self._turn]
        self._turn = (self._turn + 1) % self.shards
        wait_ms = max(1, block_ms // self.shards)
        if not run_plan(self.client, jobs.ensure_group()):
            time.sleep(wait_ms / 1000)  # no job was ever queued (or the queue expired)
            return None
        try:
            batch = run_plan(self.client, jobs.read(1, wait_ms, self.claim_idle_ms))
        except StreamGone:
            return None
        if not batch.entries:
            return None
        entry_id, fields = batch.entries[0]
        return entry_id, fields[b"job_id"].decode()

    def _load(self, job_id: str) -> JobStatus | None:
        key = job_key(self.queue, job_id, self.shards)
        values = self.client.hmget(key, list(REDIS_FIELDS))  # bytes: no decode_responses
        raw = {k.encode(): v for k, v in zip(REDIS_FIELDS, values, strict=True) if v is not None}
        return JobStatus.from_redis(raw)

    def _update(self, job_id: str, status: JobStatus, *names: str) -> None:
        """Write the named fields of ``status`` and renew the job's TTL and its place among
        pending jobs."""
        key, own = job_key(self.queue, job_id, self.shards), self._keys(job_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping=status.to_redis(*names))
        pipe.expire(key, self.ttl_s)
        pipe.zadd(own.pending, {job_id: time.time() + self.ttl_s}, xx=True)
        pipe.expire(own.pending, self.ttl_s)
        pipe.expire(own.pending_bytes, self.ttl_s)
        pipe.execute()

    def _forget(self, job_id: str) -> None:
        """Free the job's place and bytes among pending jobs (it ended or is gone)."""
        own = self._keys(job_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(own.pending, job_id)
        pipe.hdel(own.pending_bytes, job_id)
        pipe.execute()

    def run_one(self, entry_id: bytes, job_id: str, stop: threading.Event) -> str:
        """Run (or resume) one claimed job; returns its new state (or ``gone``,
        ``interrupted``, ``retry``)."""
        key = job_key(self.queue, job_id, self.shards)
        status = self._load(job_id)
        if status is None or status.state in FINAL_STATES:
            self._forget(job_id)
            run_plan(self.client, self._jobs(job_id).ack(entry_id))  # expired, finished or deleted
            return "gone"
        status.attempts = int(self.client.hincrby(key, "attempts", 1))
        if status.attempts > self.max_attempts:
            error = status.error or {"code": "job_failed", "message": "too many attempts"}
            return self._final(entry_id, job_id, status, "dead_letter", error)
        resume = cast("bytes | None", self.client.hget(key, "progress"))
        status.state = "running"
        status.started_at = status.started_at or time.time()
        status.resumed_from = progress_frames(resume) if resume else 0
        self._update(job_id, status, "state", "started_at", "resumed_from")
        try:
            frames = self._track(entry_id, job_id, status, resume, stop)
        except _Interrupted:
            # Shutting down: hand the job back at once (its checkpoint stays) without
            # counting this as a failed attempt.
            self.client.hincrby(key, "attempts", -1)
            status.state = "queued"
            self._update(job_id, status, "state")
            run_plan(self.client, self._jobs(job_id).requeue(entry_id, {"job_id": job_id}))
            return "interrupted"
        except Cancelled:
            return self._final(entry_id, job_id, status, "cancelled", None)
        except Exception as exc:  # noqa: BLE001 - bad input fails; the rest is retried
            return self._failed(entry_id, job_id, status, exc)
        status.frames_done = status.frames_total = frames
        self._update(job_id, status, "frames_done", "frames_total")
        return self._final(entry_id, job_id, status, "done", None)

    def _track(
        self,
        entry_id: bytes,
        job_id: str,
        status: JobStatus,
        resume: bytes | None,
        stop: threading.Event,
    ) -> int:
        """``run_video_job`` with this worker's progress, checkpoint and stop callbacks."""
        key = job_key(self.queue, job_id, self.shards)

        def checkpoint(done: int, payload: bytes) -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(key, "progress", payload)
            pipe.expire(key, self.ttl_s)
            pipe.execute()

        def should_stop() -> bool:
            if stop.is_set():
                raise _Interrupted
            raw = cast("bytes | None", self.client.hget(key, "cancel"))
            return raw is not None and bool(field_from_redis("cancel", raw))

        # the API's budget travels with the job; this process's for jobs queued without one
        max_pixels = status.max_pixels or get_settings().max_video_pixels
        return run_video_job(
            self.served, self.root / job_id, status.options,
            self._progress(entry_id, job_id, status), should_stop, resume, checkpoint,
            self.checkpoint_every_clips, max_pixels,
        )  # fmt: skip

    def _progress(
        self, entry_id: bytes, job_id: str, status: JobStatus
    ) -> Callable[[int, int | None], None]:
        """The progress callback: at most every 0.5 s, write ``frames_done`` and heart-beat
        the claim (resetting its idle time, so nobody takes a live job)."""
        last_beat = 0.0

        def progress(done: int, total: int | None) -> None:
            nonlocal last_beat
            now = time.monotonic()
            if now - last_beat >= 0.5:
                last_beat = now
                status.frames_done = done
                self._update(job_id, status, "frames_done")
                run_plan(self.client, self._jobs(job_id).heartbeat(entry_id))

        return progress

    def _failed(self, entry_id: bytes, job_id: str, status: JobStatus, exc: Exception) -> str:
        """A run raised: the video's own errors fail the job; others retry it on any worker
        until ``max_attempts``, then it moves to ``dead_letter``."""
        error = job_error(exc, self.root / job_id)
        if error["code"] != "job_failed":  # the video itself: another try fails alike
            return self._final(entry_id, job_id, status, "failed", error)
        log.warning("job %s attempt %d failed: %r", job_id, status.attempts, exc)
        if status.attempts >= self.max_attempts:
            return self._final(entry_id, job_id, status, "dead_letter", error)
        status.state, status.error = "queued", error
        self._update(job_id, status, "state", "error")
        run_plan(self.client, self._jobs(job_id).requeue(entry_id, {"job_id": job_id}))
        return "retry"

    def _final(
        self, entry_id: bytes, job_id: str, status: JobStatus, state: JobState, error: Any
    ) -> str:
        status.state, status.error, status.finished_at = state, error, time.time()
        self._update(job_id, status, "state", "error", "finished_at")
        (self.root / job_id / "input").unlink(missing_ok=True)
        self._forget(job_id)
        self.client.hdel(job_key(self.queue, job_id, self.shards), "progress")
        run_plan(self.client, self._jobs(job_id).ack(entry_id))
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
