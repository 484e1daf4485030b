"""The service on Sentinel-managed Redis: a ``redis+sentinel://`` URL, and a failover of the
primary in the middle of a live session (the replica is promoted; ids continue unchanged)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.redis_conn import parse_sentinel_url
from service.settings import Settings
from tests.modules import REPO, load_module
from tests.service.conftest import png_bytes

pytestmark = pytest.mark.redis

LocalSentinel = load_module(REPO / "bench" / "_cluster.py", "ctvis_bench_cluster").LocalSentinel


@pytest.fixture()
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with LocalSentinel(tmp_path_factory.mktemp("sentinel")) as s:
        yield s


def test_sentinel_urls_parse_and_bad_ones_are_refused() -> None:
    assert parse_sentinel_url("redis+sentinel://a:1,b:2/svc/3") == ([("a", 1), ("b", 2)], "svc", 3)
    assert parse_sentinel_url("redis+sentinel://a:1/svc") == ([("a", 1)], "svc", 0)
    for bad in ("redis+sentinel://a:1", "redis+sentinel://a/svc", "redis+sentinel://a:1/s/x"):
        with pytest.raises(ValueError):
            parse_sentinel_url(bad)
        with pytest.raises(ValueError):
            Settings(redis_url=bad)


def _frame(
    api: TestClient, sid: str, hdr: dict[str, str], frame: np.ndarray, index: int
) -> list[tuple[int, int]]:
    """Send one frame, resending on the retryable answers of a failover."""
    deadline = time.monotonic() + 60
    while True:
        resp = api.post(f"/v1/sessions/{sid}/frames", content=png_bytes(frame), headers=hdr)
        if resp.status_code == 200:
            assert resp.json()["frame_index"] == index
            return [(i["track_id"], i["category_id"]) for i in resp.json()["instances"]]
        assert resp.status_code in (503, 409), resp.text
        assert time.monotonic() < deadline, resp.text
        time.sleep(0.25)


def test_a_session_survives_a_sentinel_failover(
    sentinel: Any, video_frames: list[np.ndarray]
) -> None:
    frames = video_frames * 2
    with TestClient(create_app(Settings())) as local:
        created = local.post("/v1/sessions").json()
        sid, hdr = created["session_id"], {"X-Session-Token": created["token"]}
        want = [_frame(local, sid, hdr, f, i) for i, f in enumerate(frames)]
    # the API replica keeps no state of its own between frames (state cache off)
    settings = Settings(redis_url=sentinel.url, state_cache_sessions=0, lease_ms=1000)
    with TestClient(create_app(settings)) as api:
        assert api.get("/readyz").status_code == 200
        created = api.post("/v1/sessions").json()
        sid, hdr = created["session_id"], {"X-Session-Token": created["token"]}
        half = len(frames) // 2
        got = [_frame(api, sid, hdr, f, i) for i, f in enumerate(frames[:half])]
        old = sentinel.kill_primary()
        got += [_frame(api, sid, hdr, f, half + i) for i, f in enumerate(frames[half:])]
        assert sentinel.primary_port() != old  # the replica was promoted
        assert api.get("/readyz").status_code == 200
    assert got == want
