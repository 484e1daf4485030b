"""Container health probe of the ctvis-serve image (the Dockerfile's HEALTHCHECK).

    python /opt/ctvis/healthcheck.py            # role read from PID 1's command line
    python /opt/ctvis/healthcheck.py api        # GET /healthz answers {"status": "ok"}
    python /opt/ctvis/healthcheck.py worker     # this host's `ctvis worker` reads its stream

The image runs either ``ctvis serve`` or ``ctvis worker``; a worker has no HTTP port, so its
probe asks Redis instead: some consumer of the workers' group named ``<hostname>-<pid>``
(the name ``service.remote.run_worker`` gives itself) must have polled the frames stream
within ``--max-idle-s`` seconds (a live worker polls every 0.5 s while idle). Exit status 0
means healthy, 1 unhealthy. Settings come from the same ``CTVIS_*`` variables as the service.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.request
from pathlib import Path

WORKER_GROUP = "ctvis-workers"  # service.remote.WORKER_GROUP (a test keeps them equal)


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


def check_worker(redis_url: str, stream: str, max_idle_s: float, timeout: float) -> str | None:
    """None when a consumer of this host polled ``stream`` within ``max_idle_s`` seconds."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        consumers = client.xinfo_consumers(stream, WORKER_GROUP)
    except redis.RedisError as exc:
        return f"redis: {exc}"
    finally:
        client.close()
    prefix = f"{socket.gethostname()}-"
    idle = [
        int(c["idle"])
        for c in consumers
        if (c["name"].decode() if isinstance(c["name"], bytes) else c["name"]).startswith(prefix)
    ]
    if not idle:
        return f"no consumer named {prefix}* in group {WORKER_GROUP} of {stream}"
    if min(idle) > max_idle_s * 1000:
        return f"the worker has not polled {stream} for {min(idle) / 1000:.0f} s"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the probe; returns 0 when healthy, 1 otherwise (reason on stderr)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("role", nargs="?", choices=["api", "worker"], help="default: detect")
    parser.add_argument("--max-idle-s", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    role = args.role or detect_role()
    if role == "api":
        problem = check_api(int(os.environ.get("CTVIS_PORT", "8000")), args.timeout)
    else:
        redis_url = os.environ.get("CTVIS_REDIS_URL", "")
        stream = os.environ.get("CTVIS_FRAMES_STREAM", "ctvis:frames")
        problem = (
            check_worker(redis_url, stream, args.max_idle_s, args.timeout)
            if redis_url
            else "CTVIS_REDIS_URL is not set"
        )
    if problem:
        print(f"unhealthy ({role}): {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
