"""deploy/healthcheck.py (the image's HEALTHCHECK) and deploy/fetch_checkpoint.py."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from service import frame_stream
from tests.deploy.conftest import DEPLOY
from tests.modules import load_module

REDIS_URL = os.environ.get("CTVIS_REDIS_URL", "redis://127.0.0.1:6379/0")


healthcheck = load_module(DEPLOY / "healthcheck.py")
fetch = load_module(DEPLOY / "fetch_checkpoint.py")


@pytest.fixture()
def healthz_port() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = json.dumps({"status": "ok" if self.path == "/healthz" else "?"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_role_detection(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"/opt/venv/bin/python\0/opt/venv/bin/ctvis\0worker\0")
    assert healthcheck.detect_role(cmdline) == "worker"
    cmdline.write_bytes(b"/opt/venv/bin/python\0/opt/venv/bin/ctvis\0serve\0--no-worker\0")
    assert healthcheck.detect_role(cmdline) == "api"
    assert healthcheck.detect_role(tmp_path / "missing") == "api"


def test_api_probe(healthz_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    assert healthcheck.check_api(healthz_port, 2.0) is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert "healthz" in healthcheck.check_api(closed, 2.0)
    monkeypatch.setenv("CTVIS_PORT", str(healthz_port))
    assert healthcheck.main(["api"]) == 0
    monkeypatch.setenv("CTVIS_PORT", str(closed))
    assert healthcheck.main(["api"]) == 1


@pytest.mark.redis
def test_worker_probe_reads_the_consumer_group(monkeypatch: pytest.MonkeyPatch) -> None:
    assert healthcheck.WORKER_GROUP == frame_stream.WORKER_GROUP
    stream = f"ctvis:test-health:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(REDIS_URL)
    check = healthcheck.check_worker
    try:
        # No stream yet (a new or idle system: the API creates it with the first frame, the
        # worker waits for it): healthy.
        assert check(REDIS_URL, stream, 60, 2) is None
        monkeypatch.setenv("CTVIS_REDIS_URL", REDIS_URL)
        monkeypatch.setenv("CTVIS_FRAMES_STREAM", stream)
        assert healthcheck.main(["worker"]) == 0
        client.xadd(stream, {"frame": b"x"})
        assert "no consumer group" in check(REDIS_URL, stream, 60, 2)
        client.xgroup_create(stream, frame_stream.WORKER_GROUP, id="0")
        assert check(REDIS_URL, stream, 60, 2) is None  # started, idle
        # What run_worker does: take a batch as `<hostname>-<pid>` (acknowledged later).
        consumer = f"{socket.gethostname()}-{os.getpid()}"
        client.xreadgroup(frame_stream.WORKER_GROUP, consumer, {stream: ">"}, count=1, block=10)
        assert check(REDIS_URL, stream, 60, 2) is None  # busy, within the limit
        assert healthcheck.main(["worker"]) == 0
        time.sleep(0.05)
        assert "holding 1 frame" in check(REDIS_URL, stream, 0.01, 2)  # stuck on the batch
        assert check(REDIS_URL, stream, 0.01, 2, uptime_s=0.001) is None  # a previous run's
    finally:
        client.delete(stream)
        client.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert check(f"redis://127.0.0.1:{closed}/0", stream, 60, 1).startswith("redis:")
    monkeypatch.delenv("CTVIS_REDIS_URL")
    assert healthcheck.main(["worker"]) == 1


@pytest.mark.redis
def test_worker_probe_checks_every_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CTVIS_STREAM_SHARDS the probe looks at each shard stream the service names."""
    from service.keys import frames_stream_keys

    base = f"ctvis:test-health:{uuid.uuid4().hex}"
    for shards in (1, 2, 3, 8):
        assert healthcheck.frames_streams(base, shards) == frames_stream_keys(base, shards)
    streams = frames_stream_keys(base, 3)
    client = redis.Redis.from_url(REDIS_URL)
    check = healthcheck.check_worker
    try:
        assert check(REDIS_URL, base, 60, 2, shards=3) is None  # no shard has traffic yet
        for name in streams[:2]:
            client.xadd(name, {"frame": b"x"})
            client.xgroup_create(name, frame_stream.WORKER_GROUP, id="0")
        client.xadd(streams[2], {"frame": b"x"})
        problem = check(REDIS_URL, base, 60, 2, shards=3)
        assert problem is not None and streams[2] in problem and streams[0] not in problem
        client.xgroup_create(streams[2], frame_stream.WORKER_GROUP, id="0")
        assert check(REDIS_URL, base, 60, 2, shards=3) is None
        consumer = f"{socket.gethostname()}-{os.getpid()}"
        client.xreadgroup(frame_stream.WORKER_GROUP, consumer, {streams[1]: ">"}, count=1)
        time.sleep(0.05)
        assert "holding 1 frame" in check(REDIS_URL, base, 0.01, 2, shards=3)
        monkeypatch.setenv("CTVIS_REDIS_URL", REDIS_URL)
        monkeypatch.setenv("CTVIS_FRAMES_STREAM", base)
        monkeypatch.setenv("CTVIS_STREAM_SHARDS", "3")
        assert healthcheck.main(["worker", "--max-busy-s", "0.01"]) == 1
        assert healthcheck.main(["worker"]) == 0
    finally:
        client.delete(*streams)
        client.close()


def test_worker_probe_speaks_every_redis_the_service_does() -> None:
    """Sentinel URLs (and Cluster nodes) go through the service's own client factory."""
    sentinel = healthcheck.redis_client("redis+sentinel://127.0.0.1:1/primary/0", 1.0)
    assert type(sentinel.connection_pool).__name__ == "SentinelConnectionPool"
    sentinel.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    problem = healthcheck.check_worker(f"redis+sentinel://127.0.0.1:{closed}/p/0", "s", 60, 1)
    assert problem.startswith("redis:"), problem


def test_assess_consumers() -> None:
    assess = healthcheck.assess_consumers
    idle_70 = {"name": b"host-1", "pending": 0, "idle": 900_000}  # Redis 7.0: last success
    assert assess([idle_70], "host-", 120, None) is None
    stuck_72 = {"name": "host-1", "pending": 0, "idle": 200_000, "inactive": 200_000}
    assert "stuck for 200 s" in assess([stuck_72], "host-", 120, None)
    assert assess([stuck_72], "other-", 120, None) is None
    assert assess([stuck_72], "host-", 120, uptime_s=100) is None  # a previous run's consumer
    polling_72 = {"name": "host-1", "pending": 0, "idle": 150, "inactive": 900_000}
    assert assess([polling_72], "host-", 120, None) is None


def test_process_uptime() -> None:
    uptime = healthcheck.process_uptime_s(os.getpid())
    assert uptime is not None and 0 <= uptime < 3600
    assert healthcheck.process_uptime_s(2**22 + 7) is None


def _archive(tmp_path: Path, folder: str | None) -> Path:
    path = tmp_path / "ckpt.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {"config.json": b"{}", "model.safetensors": b"weights"}.items():
            info = tarfile.TarInfo(f"{folder}/{name}" if folder else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("folder", [None, "ctvis_r50"])
def test_fetch_checkpoint_unpacks(tmp_path: Path, folder: str | None) -> None:
    archive = _archive(tmp_path, folder)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    dest = fetch.fetch_checkpoint(archive.as_uri(), tmp_path / "demo", digest)
    assert dest is not None
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors"]
    assert fetch.fetch_checkpoint("", tmp_path / "none") is None
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="sha256"):
        fetch.fetch_checkpoint(archive.as_uri(), tmp_path / "bad", "0" * 64)
