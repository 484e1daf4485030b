"""Container health probe of the ctvis-serve image (the Dockerfile's HEALTHCHECK).

    python /opt/ctvis/healthcheck.py            # role read from PID 1's command line
    python /opt/ctvis/healthcheck.py api        # GET /healthz answers {"status": "ok"}
    python /opt/ctvis/healthcheck.py worker     # this host's `ctvis worker` reads its stream

The image runs either ``ctvis serve`` or ``ctvis worker``. A worker serves no API (at most
metrics), so its probe asks Redis instead (``check_worker``): Redis must answer, the workers'
consumer group must exist on every shard of the frames stream (``CTVIS_STREAM_SHARDS``) once
that shard's stream does, and no consumer of this host
(``service.frame_stream.run_frame_worker`` names itself ``<hostname>-<pid>``) may be stuck on a
batch for longer than ``--max-busy-s``. Exit status 0 means healthy, 1 unhealthy.
Settings come from the same ``CTVIS_*`` variables as the service.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

WORKER_GROUP = "ctvis-workers"  # service.keys.WORKER_GROUP (a test keeps them equal)
SLOTS = 16384  # hash slots of a Redis Cluster


def frames_streams(stream: str, shards: int) -> list[str]:
    """The shard streams of ``stream``: ``service.keys.frames_stream_keys``, repeated here so
    that the probe runs without the service installed (a test keeps them equal)."""
    if shards == 1:
        return [stream]
    return [f"{{{_shard_name(stream, shard, shards)}}}" for shard in range(shards)]


def _shard_name(name: str, shard: int, shards: int) -> str:
    """``service.keys.shard_name``: ``name:shard`` with the first ``.<salt>`` that puts its
    hash slot in the middle half of the shard-th of ``shards`` equal slot ranges."""
    from redis.crc import key_slot

    low, high = (shard + 0.25) * SLOTS / shards, (shard + 0.75) * SLOTS / shards
    salt = 0
    while True:
        text = f"{name}:{shard}" + (f".{salt}" if salt else "")
        if low <= key_slot(text.encode()) < high:
            return text
        salt += 1


def detect_role(cmdline_file: Path = Path("/proc/1/cmdline")) -> str:
    """``worker`` when PID 1 runs ``ctvis worker``, else ``api``."""
    try:
        argv = cmdline_file.read_bytes().split(b"\0")
    except OSError:
        return "api"
    return "worker" if b"worker" in argv else "api"


def check_api(port: int, timeout: float) -> str | None:
    """None when ``/healthz`` on ``port`` answers ok, else the reason."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
            body = json.load(r)
    except (OSError, ValueError) as exc:
        return f"/healthz: {exc}"
    return None if body.get("status") == "ok" else f"/healthz answered {body}"


def process_uptime_s(pid: int = 1) -> float | None:
    """Seconds since process ``pid`` started (from /proc), or None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, in ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def redis_client(redis_url: str, timeout: float) -> Any:
    """A blocking client the way the service makes one: one server, a Redis Cluster
    (``CTVIS_REDIS_MODE``, ``auto`` asks the node) or a ``redis+sentinel://`` URL."""
    options = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    try:
        from service.redis_conn import open_sync
    except ImportError:  # run outside the image, without the service installed
        import redis

        return redis.Redis.from_url(redis_url, **options)
    return open_sync(redis_url, os.environ.get("CTVIS_REDIS_MODE", "auto"), **options)


def check_worker(
    redis_url: str,
    stream: str,
    max_busy_s: float,
    timeout: float,
    uptime_s: float | None = None,
    shards: int = 1,
) -> str | None:
    """None when this host's worker is attached to every shard of ``stream`` and not stuck
    on a batch.

    Healthy while a shard's stream does not exist: the API creates it with the first frame
    routed there (and it expires when idle); workers only wait for it
    (``service.frame_stream.run_frame_worker``), so a new or idle system has no stream and no
    group. Unhealthy: Redis unreachable, a shard's stream there but the workers' group missing
    (a waiting worker creates it within 0.1 s), or a consumer of this host stuck on any shard
    for more than ``max_busy_s`` seconds (see ``assess_consumers``).
    """
    import redis

    client = None
    consumers: list[dict[str, Any]] = []
    missing: list[str] = []
    try:
        client = redis_client(redis_url, timeout)
        for name in frames_streams(stream, shards):
            if not client.exists(name):
                continue  # no traffic yet, or the idle stream expired
            if _has([g["name"] for g in client.xinfo_groups(name)]):
                consumers += client.xinfo_consumers(name, WORKER_GROUP)
            else:
                missing.append(name)
    except (redis.RedisError, OSError) as exc:
        return f"redis: {exc}"
    finally:
        if client is not None:
            client.close()
    if missing:
        where = ", ".join(missing)
        return f"no consumer group {WORKER_GROUP} on {where}: the worker has not started"
    return assess_consumers(consumers, f"{socket.gethostname()}-", max_busy_s, uptime_s)


def assess_consumers(
    consumers: list[dict[str, Any]], prefix: str, max_busy_s: float, uptime_s: float | None
) -> str | None:
    """None unless a consumer named ``prefix*`` has been stuck for more than ``max_busy_s``.

    Stuck: it holds unacknowledged frames, or (Redis >= 7.2, which reports ``inactive`` and
    counts ``idle`` from the last read *attempt*) it has not even tried to read; a live
    worker tries every 0.2 s between batches. Consumers idle for longer than this process
    has run (``uptime_s``) belong to a previous run and are left out.
    """
    newest = float("inf") if uptime_s is None else uptime_s * 1000
    for consumer in consumers:
        name = consumer["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        idle = int(consumer["idle"])
        busy = bool(consumer.get("pending")) or "inactive" in consumer
        if name.startswith(prefix) and busy and max_busy_s * 1000 < idle < newest:
            pending = consumer.get("pending", 0)
            return f"{name} stuck for {idle / 1000:.0f} s holding {pending} frame(s)"
    return None


def _has(groups: list[str | bytes]) -> bool:
    return any(g in (WORKER_GROUP, WORKER_GROUP.encode()) for g in groups)


def main(argv: list[str] | None = None) -> int:
    """Run the probe; returns 0 when healthy, 1 otherwise (reason on stderr)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("role", nargs="?", choices=["api", "worker"], help="default: detect")
    parser.add_argument(
        "--max-busy-s", type=float, default=120.0, help="longest time one batch may take"
    )
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    role = args.role or detect_role()
    if role == "api":
        problem = check_api(int(os.environ.get("CTVIS_PORT", "8000")), args.timeout)
    else:
        redis_url = os.environ.get("CTVIS_REDIS_URL", "")
        stream = os.environ.get("CTVIS_FRAMES_STREAM", "ctvis:frames")
        shards = int(os.environ.get("CTVIS_STREAM_SHARDS", "1"))
        uptime = process_uptime_s()
        problem = (
            check_worker(redis_url, stream, args.max_busy_s, args.timeout, uptime, shards)
            if redis_url
            else "CTVIS_REDIS_URL is not set"
        )
    if problem:
        print(f"unhealthy ({role}): {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
