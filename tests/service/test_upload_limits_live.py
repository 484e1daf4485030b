"""Oversized, slow and garbage uploads against a live ``ctvis serve`` process.

Each case is one the issue reproduced against the real server: the server must refuse it with
a clear 4xx (JSON ``{"code", "message"}``), at a bounded cost in memory and disk, and stay
healthy. Large bodies are sent over a raw socket from a generator (the client never holds
them) that stops sending as soon as the server answers: the server refuses early and closes
the connection, which an ordinary client would report as a failed write instead of the
answer.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from tests.service.live import LiveServer

MIB = 1 << 20
UPLOAD_LIMIT = 8 * MIB
BOUNDARY = b"ctvis-test-boundary"


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    env = {
        "CTVIS_CHECKPOINT": "tiny-random",
        "CTVIS_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "CTVIS_BODY_IDLE_TIMEOUT_S": "1",
        "CTVIS_MAX_PENDING_JOBS": "1",
    }
    with LiveServer(env) as live:
        yield live


@pytest.fixture()
def session(server: LiveServer) -> Iterator[tuple[str, dict[str, str]]]:
    created = httpx.post(server.url + "/v1/sessions", timeout=10).json()
    headers = {"X-Session-Token": created["token"]}
    yield created["session_id"], headers
    httpx.delete(f"{server.url}/v1/sessions/{created['session_id']}", headers=headers)


def _zeros(total: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    block = bytes(chunk)
    for start in range(0, total, chunk):
        yield block[: min(chunk, total - start)]


def _multipart(total: int) -> Iterator[bytes]:
    """A multipart form whose ``file`` part holds ``total`` zero bytes."""
    yield (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="big.mp4"\r\n'
        b"Content-Type: video/mp4\r\n\r\n"
    )
    yield from _zeros(total)
    yield b"\r\n--" + BOUNDARY + b"--\r\n"


MULTIPART_FRAMING = sum(len(p) for p in _multipart(0))


def _send(
    server: LiveServer,
    path: str,
    body: Iterable[bytes],
    *,
    length: int | None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], int]:
    """POST ``body`` (``Content-Length: length``, or chunked when None) and read the answer.

    Stops sending when the server answers (or closes) first. Returns the status, the JSON
    error body (``{}`` for other bodies) and the body bytes sent.
    """
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            for chunk in body:
                if select.select([conn], [], [], 0)[0]:
                    break  # the server answered (or closed) before the end of the body
                conn.sendall(chunk if length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            else:
                if length is None:
                    conn.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the server after its answer: read the answer
        response = http.client.HTTPResponse(conn)
        response.begin()
        raw = response.read()
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = {}
    return response.status, payload, sent


def _deleted_open_bytes(pid: int) -> int:
    """Bytes in files the process holds open after deleting them (spooled temp files)."""
    total = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd).endswith(" (deleted)"):
                total += os.stat(fd).st_size
        except OSError:
            pass
    return total


class Cost:
    """Peak growth of the server's resident memory and temp / job disk during a block."""

    rss_growth = 0
    disk_growth = 0


@contextmanager
def _measure(server: LiveServer) -> Iterator[Cost]:
    """Sample the server's RSS and disk use every 5 ms while the block runs; the kernel's
    peak RSS (``VmHWM``, reset first where allowed) catches spikes between samples."""
    assert server.proc is not None
    pid = server.proc.pid
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        hwm_reset = True
    except OSError:
        hwm_reset = False
    rss0 = server.rss_bytes()
    disk0 = server.temp_bytes() + _deleted_open_bytes(pid)
    cost = Cost()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                cost.rss_growth = max(cost.rss_growth, server.rss_bytes() - rss0)
                disk = server.temp_bytes() + _deleted_open_bytes(pid)
                cost.disk_growth = max(cost.disk_growth, disk - disk0)
            except (OSError, RuntimeError):
                pass
            stop.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield cost
    finally:
        stop.set()
        sampler.join()
        if hwm_reset:
            cost.rss_growth = max(cost.rss_growth, server.peak_rss_bytes() - rss0)


def _huge_frame_video() -> bytes:
    """One flat 8000x8000 H.264 frame in an MP4: ~190 KB that decodes to 96 MB of YUV."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(
            "libx264", rate=10, options={"preset": "ultrafast", "tune": "zerolatency"}
        )
        stream.width = stream.height = 8000
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame(8000, 8000, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([90]) * plane.buffer_size)
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def test_frame_over_limit_refused_before_reading(
    server: LiveServer, session: tuple[str, dict[str, str]]
) -> None:
    sid, headers = session
    size = 200 * MIB
    with _measure(server) as cost:
        started = time.monotonic()
        status, body, sent = _send(
            server, f"/v1/sessions/{sid}/frames", _zeros(size), length=size, headers=headers
        )
        took = time.monotonic() - started
    assert status == 413 and body["code"] == "frame_too_large", body
    assert str(size) in body["message"] and str(16 * MIB) in body["message"]
    assert sent < 64 * MIB and took < 5  # answered from the header, not after the body
    assert cost.rss_growth < 100 * 10**6, cost.rss_growth
    assert server.alive()


def test_chunked_frame_stops_at_limit(
    server: LiveServer, session: tuple[str, dict[str, str]]
) -> None:
    sid, headers = session
    with _measure(server) as cost:
        status, body, sent = _send(
            server, f"/v1/sessions/{sid}/frames", _zeros(200 * MIB), length=None, headers=headers
        )
    assert status == 413 and body["code"] == "frame_too_large", body
    assert sent < 100 * MIB  # the server stopped reading at its 16 MiB limit
    assert cost.rss_growth < 100 * 10**6, cost.rss_growth
    assert server.alive()


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_multipart_over_limit_never_spooled(server: LiveServer, declared: bool) -> None:
    size = 64 * MIB
    headers = {"Content-Type": "multipart/form-data; boundary=" + BOUNDARY.decode()}
    length = size + MULTIPART_FRAMING if declared else None
    with _measure(server) as cost:
        status, body, sent = _send(
            server, "/v1/videos", _multipart(size), length=length, headers=headers
        )
    assert status == 413 and body["code"] == "upload_too_large", body
    assert cost.disk_growth < 9 * MIB, cost.disk_growth
    assert sent < (16 * MIB if declared else 48 * MIB)  # socket buffers take a few MiB
    assert server.temp_bytes() == 0  # the partial upload is gone
    assert server.alive()


def test_huge_frame_video_refused_from_metadata(server: LiveServer) -> None:
    video = _huge_frame_video()
    with _measure(server) as cost:
        resp = httpx.post(server.url + "/v1/videos", content=video, timeout=30)
    assert resp.status_code == 413, resp.text
    error = resp.json()
    assert error["code"] == "video_too_large"
    assert "8000x8000" in error["message"] and str(4096 * 4096) in error["message"]
    assert cost.rss_growth < 300 * 10**6, cost.rss_growth
    assert server.temp_bytes() == 0
    assert server.alive()


@pytest.mark.parametrize("route", ["frames", "videos"])
def test_stalled_body_times_out(
    server: LiveServer, session: tuple[str, dict[str, str]], route: str
) -> None:
    sid, headers = session
    path = f"/v1/sessions/{sid}/frames" if route == "frames" else "/v1/videos"

    started = time.monotonic()
    # 7 of the 1000 declared bytes, then nothing: _send waits for the answer
    status, body, _ = _send(server, path, [b"\x89PNG\r\n"], length=1000, headers=headers)
    assert status == 408 and body["code"] == "body_timeout", body
    assert time.monotonic() - started < 5
    assert server.alive()


def test_pending_job_cap(server: LiveServer, mp4_file: Path) -> None:
    # An upload under way holds the only place (CTVIS_MAX_PENDING_JOBS=1): trickle its body.
    holder = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    holder.sendall(b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.2):  # well inside the 1 s idle timeout
            holder.sendall(b"\x00")

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        time.sleep(0.5)
        refused = httpx.post(server.url + "/v1/videos", content=mp4_file.read_bytes(), timeout=10)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "too_many_jobs"
    finally:
        stop.set()
        feeder.join()
        holder.close()  # the abandoned upload frees its place
    deadline = time.monotonic() + 5
    while True:
        resp = httpx.post(server.url + "/v1/videos", content=mp4_file.read_bytes(), timeout=10)
        if resp.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert resp.status_code == 202, resp.text
    job = resp.json()["job_id"]
    deadline = time.monotonic() + 60
    while (state := httpx.get(f"{server.url}/v1/videos/{job}").json()["state"]) in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert state == "done"  # and its place is free again for the other tests
    assert server.alive()


def test_huge_video_id_refused(server: LiveServer, mp4_file: Path) -> None:
    resp = httpx.post(
        server.url + "/v1/videos", params={"video_id": 10**30}, content=mp4_file.read_bytes()
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["code"] == "invalid_request" and "video_id" in resp.json()["message"]
    assert server.alive()


def test_garbage_frame_message_has_no_repr(
    server: LiveServer, session: tuple[str, dict[str, str]]
) -> None:
    sid, headers = session
    garbage = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    resp = httpx.post(
        f"{server.url}/v1/sessions/{sid}/frames", content=garbage, headers=headers, timeout=10
    )
    assert resp.status_code == 415, resp.text
    error = resp.json()
    assert error["code"] == "unsupported_frame"
    assert "0x" not in error["message"] and "object at" not in error["message"]
    assert server.alive()
