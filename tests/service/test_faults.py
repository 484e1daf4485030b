"""Fault tolerance: poison frames, workers killed mid-frame, retry then worker_lost."""

from __future__ import annotations

import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.keys import WORKER_GROUP, frames_stream_key, frames_stream_keys, shard_of
from service.main import create_app
from service.settings import Settings
from tests.service.conftest import png_bytes
from tests.service.faults import FaultInjection, install, worker_command, worker_env

REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POISON = (1, 2, 3)


def _poisoned(frame: np.ndarray) -> np.ndarray:
    out = frame.copy()
    out[0, 0] = POISON
    return out


def _session(client: TestClient) -> tuple[str, dict[str, str]]:
    created = client.post("/v1/sessions").json()
    return created["session_id"], {"X-Session-Token": created["token"]}


def test_fault_spec_parsing() -> None:
    spec = FaultInjection.parse("poison_rgb=1,2,3;crash_after_frames=4")
    assert spec == FaultInjection((1, 2, 3), 4)
    assert FaultInjection.parse(None) is None
    with pytest.raises(ValueError):
        FaultInjection.parse("explode=1")


def test_poison_frame_fails_only_itself(
    video_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    install(FaultInjection(poison_rgb=POISON), monkeypatch.setattr)
    settings = Settings(max_wait_ms=300, max_batch_size=4)
    with TestClient(create_app(settings)) as c:
        sessions = [_session(c) for _ in range(4)]
        bodies = [png_bytes(video_frames[0])] * 3 + [png_bytes(_poisoned(video_frames[0]))]

        def send(i: int) -> tuple[int, dict]:
            sid, hdr = sessions[i]
            r = c.post(f"/v1/sessions/{sid}/frames", content=bodies[i], headers=hdr)
            return r.status_code, r.json()

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(send, range(4)))
        assert [code for code, _ in results[:3]] == [200, 200, 200]
        assert results[3][0] == 422 and results[3][1]["code"] == "frame_failed"
        assert "poison" in results[3][1]["message"]
        # the three healthy sessions got identical answers, whatever their batch mates did
        assert (
            results[0][1]["instances"] == results[1][1]["instances"] == results[2][1]["instances"]
        )
        # the poisoned session did not advance and its next frame works
        sid, hdr = sessions[3]
        assert c.get(f"/v1/sessions/{sid}", headers=hdr).json()["frame_index"] == 0
        resp = c.post(f"/v1/sessions/{sid}/frames", content=bodies[0], headers=hdr)
        assert resp.status_code == 200 and resp.json()["frame_index"] == 0
        assert 'ctvis_errors_total{code="frame_failed"} 1.0' in c.get("/metrics").text


def _worker(
    stream: str, *extra: str, fault: str | None = None, shards: int = 1
) -> subprocess.Popen[str]:
    """A ``ctvis worker`` process on ``stream`` (in ``shards`` shards), with ``fault`` (a
    ``FaultInjection`` spec)."""
    args = ["--redis-url", REDIS_URL, "--stream", stream, "--log-level", "error", *extra]
    proc = subprocess.Popen(
        worker_command(fault, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=worker_env({**os.environ, "CTVIS_STREAM_SHARDS": str(shards)}),
    )
    assert proc.stdout is not None
    assert "ctvis worker: model" in proc.stdout.readline()
    return proc


def _stop(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
        p.communicate(timeout=60)  # also closes the stdout pipe


@pytest.mark.redis
@pytest.mark.parametrize("shards", [1, 3])
def test_worker_killed_mid_frame_is_retried_on_another(
    video_frames: list[np.ndarray], shards: int
) -> None:
    """Also with the stream in shards: the frame held on its session's shard is claimed
    there by the other worker, which reads every shard."""
    stream = f"ctvis:test-frames:{uuid.uuid4().hex}"
    dying = _worker(stream, fault="crash_after_frames=3", shards=shards)
    survivor = None
    try:
        settings = Settings(
            redis_url=REDIS_URL, worker=False, frames_stream=stream, stream_shards=shards
        )
        with ThreadPoolExecutor(1) as pool, TestClient(create_app(settings)) as api:
            sid, hdr = _session(api)
            url = f"/v1/sessions/{sid}/frames"
            got = [api.post(url, content=png_bytes(f), headers=hdr) for f in video_frames[:3]]
            pending = pool.submit(api.post, url, content=png_bytes(video_frames[3]), headers=hdr)
            dying.wait(timeout=60)  # exits abruptly while holding frame 3
            assert dying.returncode == 137
            survivor = _worker(stream, "--claim-idle-ms", "300", shards=shards)
            got.append(pending.result(timeout=60))
            got += [api.post(url, content=png_bytes(f), headers=hdr) for f in video_frames[4:]]
        assert [r.status_code for r in got] == [200] * len(video_frames)
        _assert_all_acknowledged_on_the_session_shard(stream, sid, shards)
        interrupted = [r.json() for r in got]
        with TestClient(create_app(Settings())) as local:
            sid, hdr = _session(local)
            straight = [
                local.post(f"/v1/sessions/{sid}/frames", content=png_bytes(f), headers=hdr).json()
                for f in video_frames
            ]
        assert [r["frame_index"] for r in interrupted] == list(range(len(video_frames)))
        assert [r["instances"] for r in interrupted] == [r["instances"] for r in straight]
    finally:
        _stop(dying, *([survivor] if survivor else []))


def _assert_all_acknowledged_on_the_session_shard(stream: str, sid: str, shards: int) -> None:
    """Only the session's shard stream exists, and no frame is pending there."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        shard = frames_stream_key(stream, shard_of(sid, shards), shards)
        names = frames_stream_keys(stream, shards)
        assert [n for n in names if client.exists(n)] == [shard]
        assert client.xpending(shard, WORKER_GROUP)["pending"] == 0
    finally:
        client.delete(*names)
        client.close()


@pytest.mark.redis
def test_frame_lost_twice_answers_worker_lost(video_frames: list[np.ndarray]) -> None:
    stream = f"ctvis:test-frames:{uuid.uuid4().hex}"
    procs = [_worker(stream, fault="crash_after_frames=0")]
    try:
        settings = Settings(redis_url=REDIS_URL, worker=False, frames_stream=stream)
        with ThreadPoolExecutor(1) as pool, TestClient(create_app(settings)) as api:
            sid, hdr = _session(api)
            url = f"/v1/sessions/{sid}/frames"
            body = png_bytes(video_frames[0])
            pending = pool.submit(api.post, url, content=body, headers=hdr)
            procs[0].wait(timeout=60)  # first delivery: the worker dies
            procs.append(_worker(stream, "--claim-idle-ms", "300", fault="crash_after_frames=0"))
            procs[1].wait(timeout=60)  # the one retry: dies too
            procs.append(_worker(stream, "--claim-idle-ms", "300"))
            resp = pending.result(timeout=60)
            assert resp.status_code == 503, resp.text
            assert resp.json()["code"] == "worker_lost"
            assert api.get(f"/v1/sessions/{sid}", headers=hdr).json()["frame_index"] == 0
            again = api.post(url, content=body, headers=hdr)  # retryable: the next try works
            assert again.status_code == 200 and again.json()["frame_index"] == 0
    finally:
        _stop(*procs)
