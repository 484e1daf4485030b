"""The replica-local state cache: a replica reuses the state it saved itself, and re-reads the
store as soon as another replica has advanced the session, so ids never fork."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.service.conftest import assert_same_instances, png_bytes

pytestmark = pytest.mark.redis

REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _misses(client: TestClient) -> float:
    text = client.get("/metrics").text
    match = re.search(r"^ctvis_state_cache_misses_total ([0-9.e+]+)$", text, re.M)
    assert match is not None, "state cache metric missing"
    return float(match.group(1))


def _post(client: TestClient, sid: str, hdr: dict[str, str], frame: np.ndarray) -> dict:
    resp = client.post(f"/v1/sessions/{sid}/frames", content=png_bytes(frame), headers=hdr)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_alternating_replicas_continue_exactly(video_frames: list[np.ndarray]) -> None:
    with TestClient(create_app(Settings())) as alone:
        created = alone.post("/v1/sessions").json()
        hdr = {"X-Session-Token": created["token"]}
        want = [_post(alone, created["session_id"], hdr, f) for f in video_frames]

    settings = Settings(redis_url=REDIS_URL)
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        created = a.post("/v1/sessions").json()
        sid, hdr = created["session_id"], {"X-Session-Token": created["token"]}
        plan = [a, a, a, b, b, b, a, a]  # A's cached version is stale when it gets frame 6
        got = [_post(client, sid, hdr, f) for client, f in zip(plan, video_frames, strict=True)]
        # A created the session and saved frames 0-2 itself: one read, at frame 6; B read
        # once, at frame 3
        assert (_misses(a), _misses(b)) == (1.0, 1.0)
        assert a.delete(f"/v1/sessions/{sid}", headers=hdr).status_code == 204
        # B still holds the state it saved; the session is gone for it all the same
        assert b.post(f"/v1/sessions/{sid}/frames", content=png_bytes(video_frames[0]),
                      headers=hdr).status_code == 404  # fmt: skip
    assert [r["frame_index"] for r in got] == list(range(len(video_frames)))
    for t, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_same_instances(g["instances"], w["instances"], where=f"frame {t}")


def test_cache_off_reads_every_frame(video_frames: list[np.ndarray]) -> None:
    settings = Settings(redis_url=REDIS_URL, state_cache_sessions=0)
    with TestClient(create_app(settings)) as a:
        created = a.post("/v1/sessions").json()
        sid, hdr = created["session_id"], {"X-Session-Token": created["token"]}
        for f in video_frames[:3]:
            _post(a, sid, hdr, f)
        assert _misses(a) == 3.0
        a.delete(f"/v1/sessions/{sid}", headers=hdr)
