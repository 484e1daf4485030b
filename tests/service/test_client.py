"""``service.client`` against a live ``ctvis serve`` process (embedded defaults, tiny model)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from model.video.reader import FrameSource
from service.client import (
    ApiError,
    CtvisClient,
    JobFailedError,
    JobStatus,
    MissingDependencyError,
    ServiceUnreachableError,
    camera_frames,
)
from service.client.__main__ import main as client_main
from tests.service.conftest import free_port, png_bytes

API_KEY = "client-test-key"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Base URL of a ``ctvis serve`` process with an API key and the in-process store."""
    port = free_port()
    exe = shutil.which("ctvis") or str(Path(sys.executable).parent / "ctvis")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTVIS_")}
    env.update(CTVIS_API_KEYS=API_KEY, CTVIS_MAX_VIDEO_FRAMES="50", CTVIS_CHECKPOINT="tiny-random")
    proc = subprocess.Popen(
        [exe, "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        probe = CtvisClient(base, API_KEY, timeout=2)
        deadline = time.monotonic() + 120
        while not probe.ready():
            assert proc.poll() is None, "ctvis serve exited"
            assert time.monotonic() < deadline, "ctvis serve did not become ready"
            time.sleep(0.3)
        probe.close()
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture()
def client(server: str) -> Iterator[CtvisClient]:
    with CtvisClient(server, API_KEY) as c:
        yield c


def _tracks(results: list) -> list[list[tuple[int, str]]]:
    return [[(i.track_id, i.segmentation["counts"]) for i in r.instances] for r in results]


def test_health_models_and_api_key(client: CtvisClient, server: str) -> None:
    assert client.health() and client.ready()
    assert client.models()[0]["random_weights"] is True
    with CtvisClient(server) as anonymous, pytest.raises(ApiError) as info:
        anonymous.create_session()
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    assert info.value.message


def test_frames_over_http(client: CtvisClient, video_frames: list[np.ndarray]) -> None:
    session = client.create_session(tracker={"match_threshold": 0.4})
    first = client.send_frame(session, png_bytes(video_frames[0]))
    second = client.send_frame(session, video_frames[1])  # raw RGB
    assert (first.frame_index, second.frame_index) == (0, 1)
    assert (second.height, second.width) == video_frames[1].shape[:2]
    assert client.session_info(session)["frame_index"] == 2
    client.close_session(session)
    with pytest.raises(ApiError) as info:
        client.send_frame(session, video_frames[2])
    assert info.value.status == 404 and info.value.code


def test_stream_video_matches_http(client: CtvisClient, mp4_file: Path) -> None:
    decoded = list(FrameSource(mp4_file))
    over_http = [client.send_frame(client_session := client.create_session(), decoded[0])]
    over_http += [client.send_frame(client_session, frame) for frame in decoded[1:]]
    session = client.create_session()
    streamed = list(client.stream_video(session, mp4_file))
    assert [r.frame_index for r in streamed] == list(range(len(decoded)))
    assert _tracks(streamed) == _tracks(over_http)
    assert client.session_info(session)["frame_index"] == len(decoded)


def test_stream_with_bad_token_raises(client: CtvisClient, video_frames: list[np.ndarray]) -> None:
    session = client.create_session()
    forged = type(session)(session.session_id, "not-the-token", session.expires_at)
    with pytest.raises(ApiError):
        list(client.stream_frames(forged, [video_frames[0]]))


@pytest.mark.parametrize("mode", ["events", "poll"])
def test_video_job_waits_and_downloads(
    client: CtvisClient, mp4_file: Path, tmp_path: Path, mode: str
) -> None:
    submitted = client.submit_video(mp4_file, overlay=True, video_id=3, overlay_score=0.0)
    seen: list[JobStatus] = []
    final = client.wait_job(submitted.job_id, seen.append, timeout=120, mode=mode)  # type: ignore[arg-type]
    assert final.state == "done" and seen[-1] == final
    assert final.frames_done == final.frames_total == len(FrameSource(mp4_file))
    results = client.job_result(submitted.job_id)
    assert results and all(r["video_id"] == 3 for r in results)
    saved = client.download_result(submitted.job_id, tmp_path / "r.json")
    assert saved.read_bytes().startswith(b"[")
    overlay = client.download_overlay(submitted.job_id, tmp_path / "o.mp4")
    assert overlay.read_bytes()[4:8] == b"ftyp"
    client.cancel_job(submitted.job_id)  # deletes the finished job
    with pytest.raises(ApiError) as info:
        client.job_status(submitted.job_id)
    assert info.value.status == 404


def test_bad_upload_and_failed_job_errors(client: CtvisClient, tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-video.mp4"
    garbage.write_bytes(b"this is not a video" * 100)
    with pytest.raises((ApiError, JobFailedError)) as info:
        status = client.submit_video(garbage)
        client.wait_job(status.job_id, timeout=60)  # a server that accepts it fails the job
    assert info.value.code in ("unsupported_video", "video_unreadable", "failed")
    assert info.value.message
    body = {"job_id": "j1", "state": "dead_letter", "frames_done": 3, "frames_total": 9,
            "error": {"code": "frame_failed", "message": "boom"}, "attempts": 3}  # fmt: skip
    failed = JobFailedError(JobStatus.from_json(body))
    assert (failed.code, failed.message, failed.status.attempts) == ("frame_failed", "boom", 3)
    assert failed.status.finished and "dead_letter" in str(failed)


def test_command_line_job(server: str, mp4_file: Path, tmp_path: Path) -> None:
    argv = ["--url", server, "--api-key", API_KEY, "job", str(mp4_file), "--out", str(tmp_path)]
    assert client_main(argv) == 0
    assert len(list(tmp_path.glob("*.json"))) == 1
    assert client_main(["--url", server, "health"]) == 1  # no key: a clear error, exit 1


def test_unreachable_server_and_missing_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    with CtvisClient(f"http://127.0.0.1:{free_port()}", timeout=2) as client:
        with pytest.raises(ServiceUnreachableError):
            client.models()
        assert client.ready() is False
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    with pytest.raises(MissingDependencyError, match="opencv"):
        next(camera_frames(0))
