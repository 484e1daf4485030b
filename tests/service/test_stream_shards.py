"""CTVIS_STREAM_SHARDS: the frames stream and the job queue as N shards.

Routing and key names (``service.keys``), the worker's reads of every shard
(``service.shard_reader``), admission across job shards (``RedisJobManager.reserve``) and the
whole path, API without worker plus a ``ctvis worker`` process, on one Redis.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from service.errors import ApiError
from service.jobs.admission import JobLimits
from service.jobs.redis_manager import RedisJobManager
from service.keys import (
    frames_stream_key,
    frames_stream_keys,
    job_key,
    job_queue_keys,
    jobs_stream_key,
    pending_bytes_key,
    pending_key,
    shard_of,
)
from service.main import create_app
from service.redis_conn import LazyAsyncClient
from service.settings import Settings
from service.shard_reader import ShardReader, pack
from service.streams import Batch, StreamConsumer
from tests.service.conftest import png_bytes
from tests.service.faults import worker_command, worker_env

REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _ids(count: int, seed: int = 0) -> list[str]:
    """Ids shaped like ``service.auth.new_id``'s (128 bits, hex), reproducibly."""
    rng = random.Random(seed)
    return [f"{rng.getrandbits(128):032x}" for _ in range(count)]


def test_routing_is_stable_and_uniform() -> None:
    # CRC-32 of the id: fixed across processes and releases (a job's record is found by it)
    assert [shard_of(i, 3) for i in ("abc", "session-1", "0123456789abcdef")] == [0, 1, 0]
    assert [shard_of(i, 8) for i in ("abc", "session-1", "0123456789abcdef")] == [2, 6, 3]
    assert {shard_of(i, 1) for i in _ids(100)} == {0}
    for shards in (3, 8):
        counts = Counter(shard_of(i, shards) for i in _ids(10_000, seed=shards))
        mean = 10_000 / shards
        assert sorted(counts) == list(range(shards))
        assert all(abs(n - mean) < 0.1 * mean for n in counts.values()), counts


def test_one_shard_keeps_the_unsharded_names() -> None:
    assert frames_stream_keys("ctvis:frames", 1) == ["ctvis:frames"]
    assert frames_stream_key("ctvis:frames") == "ctvis:frames"
    assert jobs_stream_key("ctvis:jobs") == "{ctvis:jobs}:queue"
    assert pending_key("ctvis:jobs") == "{ctvis:jobs}:pending"
    assert pending_bytes_key("ctvis:jobs") == "{ctvis:jobs}:pending-bytes"
    assert job_key("ctvis:jobs", "j1") == job_key("ctvis:jobs", "j1", 1) == "{ctvis:jobs}:job:j1"


@pytest.mark.parametrize("shards", [2, 3, 6])
def test_shards_have_their_own_slots_spread_over_the_slot_space(shards: int) -> None:
    """Shard k's hash slot lies in the k-th of ``shards`` equal slot ranges, so a cluster with
    equal slot ranges per primary holds the same number of shards on each."""
    width = REDIS_CLUSTER_HASH_SLOTS / shards
    for names in (frames_stream_keys("ctvis:frames", shards),
                  [q.queue for q in job_queue_keys("ctvis:jobs", shards)]):  # fmt: skip
        assert [int(key_slot(n.encode()) // width) for n in names] == list(range(shards))
    for job_id in _ids(20):
        queue = job_queue_keys("ctvis:jobs", shards)[shard_of(job_id, shards)]
        slots = {key_slot(k.encode()) for k in (job_key("ctvis:jobs", job_id, shards), *queue)}
        assert len(slots) == 1  # a job's record and its shard's queue keys: one slot


def _batch(size: int) -> Batch:
    return Batch([(f"{i}-0".encode(), {}) for i in range(size)])


def test_pack_keeps_every_run_within_the_batch_size() -> None:
    consumer = StreamConsumer("s", "g", "c")
    runs = pack([(consumer, _batch(n)) for n in (5, 3, 8, 1, 2)], 8)
    assert [[len(b.entries) for _, b in run] for run in runs] == [[5, 3], [8], [1, 2]]
    assert pack([], 8) == []


@pytest.mark.redis
def test_a_read_returns_the_busy_shard_without_waiting_for_the_idle_ones() -> None:
    streams = frames_stream_keys(f"ctvis:test-shards:{uuid.uuid4().hex}", 3)
    client = redis.Redis.from_url(REDIS_URL)

    async def run() -> None:
        lazy = LazyAsyncClient(REDIS_URL, "single")
        reader = ShardReader(lazy, streams, "g", "c", None, 8, 60_000, block_ms=5_000)
        try:
            for name in streams:  # every shard exists (the reads join them); one gets work
                client.xadd(name, {"n": "0"})
                client.xgroup_create(name, "g", id="$")
            started = time.monotonic()
            late = asyncio.get_running_loop().call_later(0.3, client.xadd, streams[2], {"n": "1"})
            got = await reader.next_batches()
            assert time.monotonic() - started < 2.5  # not the 5 s the idle shards block
            assert [(c.stream, [f for _, f in b.entries]) for c, b in got] == [
                (streams[2], [{b"n": b"1"}])
            ]
            late.cancel()
        finally:
            await reader.close()
            await lazy.close()

    try:
        asyncio.run(run())
    finally:
        client.delete(*streams)
        client.close()


@pytest.mark.redis
async def test_admission_limits_count_every_job_shard(tmp_path: Path) -> None:
    """Jobs on different shards share ``max_pending_jobs`` and ``max_job_bytes``."""
    stream = f"ctvis:test-jobs:{uuid.uuid4().hex}"
    jobs = RedisJobManager(REDIS_URL, tmp_path, 50, 120, stream, "single", shards=3)
    by_shard = {shard_of(i, 3): i for i in _ids(50)}
    one, two, three = (by_shard[k] for k in range(3))
    limits = JobLimits(max_pending_jobs=2, max_job_bytes=10_000, max_video_pixels=64 * 64,
                       upload_lease_s=60)  # fmt: skip
    try:
        await jobs.reserve(one, 4_000, limits)
        await jobs.reserve(two, 4_000, limits)
        with pytest.raises(ApiError) as refused:
            await jobs.reserve(three, 10, limits)
        assert refused.value.code == "too_many_jobs"
        await jobs.release(two)
        with pytest.raises(ApiError) as full:
            await jobs.reserve(three, 6_001, limits)  # 4000 held on another shard
        assert full.value.code == "job_storage_full" and "4000 bytes" in full.value.message
        await jobs.reserve(three, 6_000, limits)
        await jobs.reserve(one, 4_000, limits)  # a known job keeps its place
    finally:
        await jobs.close()
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(*(k for q in job_queue_keys(stream, 3) for k in q))
        client.close()


def _session(api: TestClient, frames: list[np.ndarray]) -> tuple[str, list[list[tuple]]]:
    """Track ``frames`` in a new session: (session id, per frame the instances' ids and
    masks)."""
    created = api.post("/v1/sessions").json()
    sid, hdr = created["session_id"], {"X-Session-Token": created["token"]}
    out = []
    for frame in frames:
        resp = api.post(f"/v1/sessions/{sid}/frames", content=png_bytes(frame), headers=hdr)
        assert resp.status_code == 200, resp.text
        instances = resp.json()["instances"]
        out.append([(i["track_id"], i["category_id"], i["segmentation"]["counts"])
                    for i in instances])  # fmt: skip
    return sid, out


def _job(api: TestClient, video: bytes) -> tuple[str, list]:
    """Run a video job: (job id, its result)."""
    job_id = api.post("/v1/videos", content=video).json()["job_id"]
    deadline = time.monotonic() + 120
    while (state := api.get(f"/v1/videos/{job_id}").json()["state"]) in ("queued", "running"):
        assert time.monotonic() < deadline, "job stuck"
        time.sleep(0.1)
    assert state == "done"
    return job_id, api.get(f"/v1/videos/{job_id}/result").json()


@pytest.mark.redis
def test_sharded_worker_matches_the_in_process_path(
    tmp_path: Path, video_frames: list[np.ndarray], mp4_file: Path
) -> None:
    tag = uuid.uuid4().hex
    frames, jobs = f"ctvis:test-frames:{tag}", f"ctvis:test-jobs:{tag}"
    job_dir = str(tmp_path / "jobs")
    with TestClient(create_app(Settings())) as local:
        _, want = _session(local, video_frames)
        _, want_result = _job(local, mp4_file.read_bytes())
    env = {"CTVIS_FRAMES_STREAM": frames, "CTVIS_JOBS_STREAM": jobs, "CTVIS_JOB_DIR": job_dir,
           "CTVIS_STREAM_SHARDS": "3"}  # fmt: skip
    worker = subprocess.Popen(
        worker_command(None, "--redis-url", REDIS_URL, "--log-level", "error"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=worker_env({**os.environ, **env}),
    )  # fmt: skip
    client = redis.Redis.from_url(REDIS_URL)
    sids: list[str] = []
    try:
        assert worker.stdout is not None and "(3 shards)" in worker.stdout.readline()
        settings = Settings(redis_url=REDIS_URL, worker=False, frames_stream=frames,
                            jobs_stream=jobs, job_dir=job_dir, stream_shards=3)  # fmt: skip
        with TestClient(create_app(settings)) as api:
            # sessions until two shards have had frames (ids are random)
            while len(sids) < 3 or len({shard_of(s, 3) for s in sids}) < 2:
                sid, got = _session(api, video_frames)
                sids.append(sid)
                assert got == want
                assert len(sids) < 12, "12 random sessions on one shard"
            job_id, result = _job(api, mp4_file.read_bytes())
            assert result == want_result
        used = {frames_stream_key(frames, shard_of(sid, 3), 3) for sid in sids}
        assert {n for n in frames_stream_keys(frames, 3) if client.exists(n)} == used
        queue = job_queue_keys(jobs, 3)[shard_of(job_id, 3)]
        record = job_key(jobs, job_id, 3)
        assert client.hget(record, "state") == b"done"
        assert all(client.ttl(k) > 0 for k in (*used, record, queue.queue))
    finally:
        worker.terminate()
        out, _ = worker.communicate(timeout=60)
        client.delete(*frames_stream_keys(frames, 3),
                      *(k for q in job_queue_keys(jobs, 3) for k in q))  # fmt: skip
        client.close()
    assert worker.returncode == 0 and "Traceback" not in out, out
