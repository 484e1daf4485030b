"""The pieces deploy/smoke_drive.py checks with: the compose project's containers (``Stack``),
the synthetic inputs it sends, and mask comparison (``iou``).

Runs on the host with the project's virtual environment, next to smoke_drive.py.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import numpy as np


class CheckFailed(Exception):
    """One check of the drive failed; ``args[0]`` names it, ``args[1]`` says why."""


def check(ok: object, name: str, reason: str) -> None:
    if not ok:
        raise CheckFailed(name, reason)


# ---- the containers of the compose project ---------------------------------------------------


class Stack:
    """The containers of one compose project, through the engine's command line."""

    def __init__(self, engine: str, project: str, stream_shards: int = 1) -> None:
        self.engine, self.project = engine, project
        self.stream_shards = stream_shards  # the stack's CTVIS_STREAM_SHARDS

    def run(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [self.engine, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{self.engine} {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def containers(self, service: str) -> list[str]:
        """Ids of the running containers of ``service`` (docker compose and podman-compose
        both label them with ``com.docker.compose.project`` / ``.service``)."""
        out = self.run(
            "ps", "-q", "--no-trunc",
            "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        )  # fmt: skip
        return sorted(out.split())

    def hostname(self, container: str) -> str:
        return self.run("inspect", "--format", "{{.Config.Hostname}}", container).strip()

    def exec(self, container: str, *argv: str, timeout: float = 60) -> str:
        return self.run("exec", container, *argv, timeout=timeout)

    def redis_cli(self, *argv: str) -> str:
        """``redis-cli`` in the stack's Redis: the single ``redis`` service, or a node of the
        Redis Cluster of deploy/compose.redis-cluster.yml (``-c`` follows redirections)."""
        nodes = self.containers("redis-node-1")
        if nodes:
            return self.exec(nodes[0], "redis-cli", "-c", *argv)
        (redis,) = self.containers("redis")
        return self.exec(redis, "redis-cli", *argv)

    def metrics(self, container: str, port: int) -> str:
        """``/metrics`` of a container, fetched inside it (worker ports are not published)."""
        code = (
            "import urllib.request, sys; "
            f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', "
            "timeout=10).read().decode())"
        )
        return self.exec(container, "python", "-c", code)


# ---- inputs ----------------------------------------------------------------------------------


def synthetic_video(seed: int, frames: int) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    from training.data.synthetic import config_for, render_video

    return render_video(seed, config_for("val", num_frames=frames))


def png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def write_mp4(frames: list[np.ndarray], path: Path) -> Path:
    from model.video.overlay import OverlayWriter

    h, w = frames[0].shape[:2]
    with OverlayWriter(path, 10, (w, h)) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def rle(segmentation: dict[str, Any]) -> dict[str, Any]:
    counts = segmentation["counts"]
    return {
        "size": segmentation["size"],
        "counts": counts.encode() if isinstance(counts, str) else counts,
    }


def iou(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float:
    from pycocotools import mask as mask_utils

    if a is None or b is None:
        return 1.0 if a is b else 0.0
    ra, rb = rle(a), rle(b)
    if not mask_utils.area(ra) and not mask_utils.area(rb):
        return 1.0
    return float(mask_utils.iou([ra], [rb], [0])[0][0])
