"""Live frames save state deltas: the state folded from the store after every frame equals the
tracker's own state bit for bit, and ids equal a run that saves whole states."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model.tracker import codec
from model.tracker.delta import apply_delta
from model.tracker.state import TRACK_FIELDS, TrackState
from service.main import create_app
from service.settings import Settings
from tests.service.conftest import png_bytes

REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _bits(state: TrackState) -> list[torch.Tensor]:
    out = []
    for name in TRACK_FIELDS:
        value = getattr(state, name)
        out.append(value.view(torch.int32) if value.is_floating_point() else value)
    return out


def _folded(client: TestClient, session_id: str) -> TrackState:
    store = client.app.state.store
    stored = client.portal.call(store.load_state, session_id)
    state = codec.loads(stored.snapshot)
    for data in stored.deltas:
        state = apply_delta(state, data)
    return state


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_folded_states_equal_the_trackers_after_every_frame(
    backend: str, video_frames: list[np.ndarray]
) -> None:
    frames = video_frames * 3  # 24 frames: several snapshots and delta runs
    redis_url = REDIS_URL if backend == "redis" else None
    deltas = Settings(redis_url=redis_url, state_snapshot_every=5, state_cache_sessions=0)
    whole = Settings(state_snapshot_every=1)
    with TestClient(create_app(deltas)) as a, TestClient(create_app(whole)) as b:
        ids = []
        for c in (a, b):
            created = c.post("/v1/sessions").json()
            ids.append((created["session_id"], {"X-Session-Token": created["token"]}))
        for index, frame in enumerate(frames):
            got = [
                c.post(f"/v1/sessions/{sid}/frames", content=png_bytes(frame), headers=hdr)
                for c, (sid, hdr) in zip((a, b), ids, strict=True)
            ]
            assert all(r.status_code == 200 for r in got), [r.text for r in got]
            assert got[0].json()["instances"] == got[1].json()["instances"], index
            reference = b.app.state.sessions._states[ids[1][0]][1]  # the tracker's own state
            folded = _folded(a, ids[0][0])
            assert folded.frame_index == reference.frame_index == index + 1
            assert folded.next_track_id == reference.next_track_id
            for x, y in zip(_bits(folded), _bits(reference), strict=True):
                assert torch.equal(x, y), index
        info = a.get(f"/v1/sessions/{ids[0][0]}", headers=ids[0][1]).json()
        assert info["frame_index"] == len(frames)
        assert info["live_tracks"] == reference.num_tracks
        sizes = a.app.state.metrics.state_bytes.collect()[0].samples
        count = next(s.value for s in sizes if s.name.endswith("_count"))
    assert count == len(frames)  # one save per frame, measured in ctvis_state_save_bytes
