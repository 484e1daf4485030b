"""API and workers as separate processes joined through Redis Streams."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model.tracker import init_state
from service.engine import FrameItem, FrameOutcome
from service.frame_stream import (
    WorkerLost,
    decode_item,
    decode_outcome,
    encode_item,
    encode_outcome,
)
from service.main import create_app
from service.settings import Settings
from tests.service.conftest import png_bytes

REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _frames(client: TestClient, frames: list[np.ndarray]) -> list[dict]:
    created = client.post("/v1/sessions").json()
    hdr = {"X-Session-Token": created["token"]}
    out = []
    for f in frames:
        resp = client.post(
            f"/v1/sessions/{created['session_id']}/frames", content=png_bytes(f), headers=hdr
        )
        assert resp.status_code == 200, resp.text
        out.append(resp.json())
    return out


def _strip(results: list[dict]) -> list[list[tuple]]:
    return [
        [(i["track_id"], i["category_id"], i["segmentation"]["counts"]) for i in r["instances"]]
        for r in results
    ]


def test_wire_codecs_round_trip(video_frames: list[np.ndarray]) -> None:
    from model.config import TrackerConfig

    item = FrameItem(video_frames[0], init_state(8, 3, 10), TrackerConfig(match_threshold=0.4))
    fields = encode_item(item, "m1", "r1")
    request_id, model_id, back = decode_item(
        {k.encode(): (v if isinstance(v, bytes) else v.encode()) for k, v in fields.items()}
    )
    assert (request_id, model_id) == ("r1", "m1")
    assert np.array_equal(back.frame, item.frame) and back.tracker_cfg == item.tracker_cfg
    outcome = FrameOutcome(item.state, [], 3.5, 2, ValueError("bad frame"))
    again = decode_outcome(encode_outcome(outcome, "m1"))
    assert again.model_ms == 3.5 and again.batch_size == 2
    assert "bad frame" in str(again.error) and again.state is not None
    assert not isinstance(again.error, WorkerLost)
    lost = decode_outcome(encode_outcome(FrameOutcome(None, [], 0.0, 0, WorkerLost("x")), "m1"))
    assert isinstance(lost.error, WorkerLost) and lost.state is None


def test_reply_carries_the_new_state_as_a_delta_against_the_request_state() -> None:
    """The worker's reply holds the rows the frame changed; the API rebuilds the state bit for
    bit from the state it sent, and the reply is a fraction of the whole state."""
    from model.config import TrackerConfig
    from model.structures import Detections
    from model.tracker import codec
    from model.tracker.state import TRACK_FIELDS
    from model.tracker.step import track_step

    cfg = TrackerConfig()
    gen = torch.Generator().manual_seed(0)
    state = init_state(32, 4, cfg.cache_size)
    for _ in range(12):  # 20 live tracks with full caches
        n = 20
        dets = Detections(
            query_indices=torch.arange(n),
            scores=torch.full((n,), 0.9),
            logits=torch.randn(n, 5, generator=gen),
            mask_logits=torch.randn(n, 8, 8, generator=gen),
            embeds=8.0 * torch.eye(32)[:n] + 0.1 * torch.randn(n, 32, generator=gen),
        )
        prev, (state, _) = state, track_step(state, dets, cfg)
    outcome = FrameOutcome(state, [], 1.0, 1)
    wire = encode_outcome(outcome, "m1", prev)
    back = decode_outcome(wire, prev)
    assert back.state is not None
    assert (back.state.frame_index, back.state.next_track_id) == (12, state.next_track_id)
    for name in TRACK_FIELDS:  # bit for bit, NaN and -0.0 included
        got, want = getattr(back.state, name), getattr(state, name)
        if want.is_floating_point():
            got, want = got.view(torch.int32), want.view(torch.int32)
        assert torch.equal(got, want), name
    # every track matched: its newest cache column and fused embeddings change, the rest not
    assert len(wire) < len(codec.dumps(state, "m1", compact=False)) / 2
    with pytest.raises(ValueError, match="needs the state"):
        decode_outcome(wire)


@pytest.mark.redis
def test_api_without_worker_uses_worker_process(video_frames: list[np.ndarray]) -> None:
    stream = f"ctvis:test-frames:{uuid.uuid4().hex}"
    exe = shutil.which("ctvis") or str(Path(sys.executable).parent / "ctvis")
    worker = subprocess.Popen(
        [exe, "worker", "--redis-url", REDIS_URL, "--stream", stream, "--log-level", "error"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert "ctvis worker: model" in worker.stdout.readline()  # loaded and consuming
        settings = Settings(redis_url=REDIS_URL, worker=False, frames_stream=stream)
        with TestClient(create_app(settings)) as api:
            remote = _frames(api, video_frames)
        with TestClient(create_app(Settings())) as local:
            direct = _frames(local, video_frames)
        assert _strip(remote) == _strip(direct)
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out
    assert f"stopped after {len(video_frames)} frames" in out


@pytest.mark.redis
def test_no_worker_answers_503_and_keeps_state(video_frames: list[np.ndarray]) -> None:
    stream = f"ctvis:test-frames:{uuid.uuid4().hex}"
    settings = Settings(redis_url=REDIS_URL, worker=False, frames_stream=stream, worker_timeout_s=1)
    with TestClient(create_app(settings)) as api:
        created = api.post("/v1/sessions").json()
        sid, hdr = created["session_id"], {"X-Session-Token": created["token"]}
        t0 = time.monotonic()
        resp = api.post(
            f"/v1/sessions/{sid}/frames", content=png_bytes(video_frames[0]), headers=hdr
        )
        assert resp.status_code == 503 and resp.json()["code"] == "worker_unavailable"
        assert time.monotonic() - t0 < 10
        assert api.get(f"/v1/sessions/{sid}", headers=hdr).json()["frame_index"] == 0


def test_no_worker_needs_redis() -> None:
    with pytest.raises(ValueError):
        Settings(worker=False)
