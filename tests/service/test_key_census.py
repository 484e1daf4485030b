"""Every Redis key the system writes has a TTL, and none outlives its use (also with the
frames stream in shards)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.keys import frames_stream_key, session_key, shard_of
from service.main import create_app
from service.settings import Settings
from tests.service.conftest import free_port, png_bytes
from tests.service.test_redis_processes import _redis_server

pytestmark = pytest.mark.redis


def _our_keys(client: redis.Redis) -> dict[str, int]:
    """Every key of the private server (the shard streams are named ``{ctvis:frames:...}``)."""
    return {k.decode(): int(client.pttl(k)) for k in client.scan_iter("*")}


@pytest.mark.parametrize("shards", [1, 3])
def test_key_census_after_sessions_end(
    tmp_path: Path, video_frames: list[np.ndarray], shards: int
) -> None:
    port = free_port()
    server = _redis_server(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    exe = shutil.which("ctvis") or str(Path(sys.executable).parent / "ctvis")
    worker = subprocess.Popen(
        [exe, "worker", "--redis-url", url, "--log-level", "error"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "CTVIS_STREAM_SHARDS": str(shards)},
    )
    client = redis.Redis(port=port)
    try:
        assert worker.stdout is not None and "ctvis worker" in worker.stdout.readline()
        settings = Settings(
            redis_url=url, worker=False, session_ttl_s=2, stream_ttl_s=3, stream_shards=shards
        )
        with TestClient(create_app(settings)) as api:
            ids = []
            for _ in range(2):
                created = api.post("/v1/sessions").json()
                sid, hdr = created["session_id"], {"X-Session-Token": created["token"]}
                for f in video_frames[:3]:
                    resp = api.post(f"/v1/sessions/{sid}/frames", content=png_bytes(f), headers=hdr)
                    assert resp.status_code == 200, resp.text
                ids.append((sid, hdr))
            assert api.delete(f"/v1/sessions/{ids[0][0]}", headers=ids[0][1]).status_code == 204
            keys = _our_keys(client)
            assert keys, "expected live keys"
            assert all(ttl > 0 for ttl in keys.values()), keys  # -1 would mean no TTL
            assert session_key(ids[0][0]) not in keys
            assert session_key(ids[1][0]) in keys
            streams = {frames_stream_key("ctvis:frames", shard_of(sid, shards), shards)
                       for sid, _ in ids}  # fmt: skip
            assert streams <= keys.keys()  # each session's frames went to its shard
        deadline = time.monotonic() + 15
        while _our_keys(client) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _our_keys(client) == {}
        time.sleep(1.0)  # a running worker must not bring the expired stream back
        assert _our_keys(client) == {}
    finally:
        try:
            worker.terminate()
            worker.communicate(timeout=60)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
            client.close()
            server.terminate()
            server.wait(timeout=30)
