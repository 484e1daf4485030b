"""The service on a real Redis Cluster (3 primaries + 3 replicas on loopback).

One node's address is enough: the store asks it ``INFO cluster`` and uses the cluster client;
every key of a session shares its hash tag, so its scripts never cross slots. With
``stream_shards`` the frames stream and the job queue spread over the primaries too.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.keys import frames_stream_keys, job_queue_keys, session_key, state_key
from service.main import create_app
from service.settings import Settings
from service.store import RedisStore, SessionRecord
from tests.modules import REPO, load_module
from tests.service.conftest import png_bytes

LocalCluster = load_module(REPO / "bench" / "_cluster.py", "ctvis_bench_cluster").LocalCluster

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


def _track(client: TestClient, frames: list[np.ndarray]) -> list[list[tuple[int, int]]]:
    created = client.post("/v1/sessions").json()
    sid, hdr = created["session_id"], {"X-Session-Token": created["token"]}
    out = []
    for frame in frames:
        resp = client.post(f"/v1/sessions/{sid}/frames", content=png_bytes(frame), headers=hdr)
        assert resp.status_code == 200, resp.text
        out.append([(i["track_id"], i["category_id"]) for i in resp.json()["instances"]])
    assert client.delete(f"/v1/sessions/{sid}", headers=hdr).status_code == 204
    return out


def test_sessions_on_a_cluster_match_the_in_process_store(
    cluster: Any, video_frames: list[np.ndarray]
) -> None:
    with TestClient(create_app(Settings())) as local:
        want = _track(local, video_frames)
    with TestClient(create_app(Settings(redis_url=cluster.url))) as api:
        ready = api.get("/readyz")
        assert ready.status_code == 200, ready.text
        # several sessions, so their keys land on different primaries
        for _ in range(3):
            assert _track(api, video_frames) == want


def test_a_session_keeps_its_keys_on_one_slot(cluster: Any) -> None:
    from redis.cluster import key_slot

    assert key_slot(session_key("abc").encode()) == key_slot(state_key("abc").encode())

    async def run() -> None:
        store = RedisStore(cluster.url)
        await store.create(SessionRecord("abc", {"k": 1}, b"x" * 100, 0), 30)
        lease = await store.acquire_frame("abc", "me", 1000)
        assert lease is not None and lease.acquired
        assert await store.save_state("abc", 0, b"y" * 200, 30, release_owner="me") == 1
        assert await store.count_live() >= 1
        assert await store.delete("abc")
        await store.close()

    asyncio.run(run())
    keys = cluster.all_keys()
    assert all(ttl > 0 for ttl in keys.values()), keys  # nothing without a TTL


def test_readiness_says_no_for_a_client_that_cannot_use_the_cluster(
    cluster: Any,
) -> None:
    with TestClient(create_app(Settings(redis_url=cluster.url, redis_mode="single"))) as api:
        body = api.get("/readyz")
        assert body.status_code == 503 and body.json()["store_reachable"] is False
    with TestClient(create_app(Settings(redis_url=cluster.url, redis_mode="cluster"))) as api:
        assert api.get("/readyz").status_code == 200


def test_readiness_says_no_when_nothing_answers(tmp_path: Path) -> None:
    from tests.service.conftest import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    with TestClient(create_app(Settings(redis_url=url))) as api:
        assert api.get("/readyz").status_code == 503


def _wait_job(api: TestClient, job_id: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = api.get(f"/v1/videos/{job_id}").json()
        if status["state"] in ("done", "failed", "dead_letter", "cancelled"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished: {status}")


def _primaries_holding(cluster: Any, keys: list[str]) -> set[int]:
    """Ports of the primaries whose slots hold ``keys``."""
    from redis.cluster import RedisCluster

    client = RedisCluster.from_url(cluster.url)
    try:
        return {int(client.get_node_from_key(key).port) for key in keys}
    finally:
        client.close()


@pytest.mark.parametrize("shards", [1, 3])
def test_api_replicas_and_workers_on_a_cluster(
    cluster: Any, video_frames: list[np.ndarray], mp4_file: Path, tmp_path: Path, shards: int
) -> None:
    with TestClient(create_app(Settings())) as local:
        want = _track(local, video_frames)
        job = local.post("/v1/videos", content=mp4_file.read_bytes()).json()["job_id"]
        assert _wait_job(local, job)["state"] == "done"
        want_result = local.get(f"/v1/videos/{job}/result").json()
    exe = shutil.which("ctvis") or str(Path(sys.executable).parent / "ctvis")
    env = {"CTVIS_JOB_DIR": str(tmp_path / "jobs"), "CTVIS_CHECKPOINT": "tiny-random",
           "CTVIS_STREAM_SHARDS": str(shards)}  # fmt: skip
    worker = subprocess.Popen(
        [exe, "worker", "--redis-url", cluster.url, "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **env},
    )  # fmt: skip
    try:
        settings = Settings(redis_url=cluster.url, worker=False,
                            job_dir=str(tmp_path / "jobs"), stream_shards=shards)  # fmt: skip
        with TestClient(create_app(settings)) as api:
            assert api.get("/readyz").status_code == 200
            for _ in range(shards):  # frames go to the worker over the cluster (shards: spread)
                assert _track(api, video_frames) == want
            job = api.post("/v1/videos", content=mp4_file.read_bytes()).json()["job_id"]
            assert _wait_job(api, job)["state"] == "done"
            assert api.get(f"/v1/videos/{job}/result").json() == want_result
            assert api.delete(f"/v1/videos/{job}").status_code == 204
    finally:
        worker.terminate()
        out, _ = worker.communicate(timeout=60)
    assert "Traceback" not in out, out
    keys = cluster.all_keys()
    assert all(ttl > 0 for ttl in keys.values()), keys
    if shards > 1:  # one shard of each stream on every primary (see service.keys.shard_name)
        primaries = set(cluster.primaries())
        assert _primaries_holding(cluster, frames_stream_keys("ctvis:frames", shards)) == primaries
        queues = [q.queue for q in job_queue_keys("ctvis:jobs", shards)]
        assert _primaries_holding(cluster, queues) == primaries


def test_primary_killed_while_sessions_stream_and_a_job_runs() -> None:
    failover = load_module(REPO / "bench" / "failover.py", "ctvis_bench_failover")
    report = failover.run_failover(
        sessions=10, frames_per_session=24, kill_after_s=3.0, worker_timeout_s=5.0
    )
    # the replica took over: every session has the reference ids, the job the same result;
    # frames caught by the election got retryable answers only
    assert report.sessions_matching == 10, report
    assert not report.other_errors, report
    assert report.job_state == "done" and report.job_result_equal, report
    assert report.frames == 10 * 24
    assert set(report.retries) <= {
        "state_store_unavailable", "worker_unavailable", "session_busy", "transport:ReadError",
    }, report  # fmt: skip
