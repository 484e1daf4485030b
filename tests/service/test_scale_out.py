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
