"""Service test helpers: a small synthetic video as PNG bytes."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.synthetic import config_for, render_video


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for server processes in tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def png_bytes(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def mp4_file(tmp_path_factory: pytest.TempPathFactory, video_frames: list[np.ndarray]) -> Path:
    """``video_frames`` encoded as an MP4 at 10 fps."""
    from model.video.overlay import OverlayWriter

    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    h, w = video_frames[0].shape[:2]
    with OverlayWriter(path, 10, (w, h)) as writer:
        for frame in video_frames:
            writer.write(frame)
    return path


@pytest.fixture(scope="session")
def video_frames() -> list[np.ndarray]:
    """Eight 72x96 RGB frames of moving textured shapes."""
    frames, _ = render_video(11, config_for("val", num_frames=8, height=72, width=96))
    return frames


def assert_same_instances(got: list[dict], want: list[dict], where: object = "") -> None:
    """Same track ids and classes in the same order; scores within 1e-4; mask IoU >= 0.99.

    Frames batched with other sessions' frames go through the network in a different batch,
    which changes logits by float rounding (~1e-6; the reference documents the same for clip
    vs frame-by-frame runs), so a few borderline mask pixels may flip. Ids must not change.
    """
    from pycocotools import mask as mask_utils

    assert [(i["track_id"], i["category_id"]) for i in got] == [
        (i["track_id"], i["category_id"]) for i in want
    ], where
    for a, b in zip(got, want, strict=True):
        assert abs(a["score"] - b["score"]) < 1e-4, where
        ra = {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
        rb = {"size": b["segmentation"]["size"], "counts": b["segmentation"]["counts"].encode()}
        if mask_utils.area(ra) or mask_utils.area(rb):
            iou = float(mask_utils.iou([ra], [rb], [0])[0][0])
            assert iou >= 0.99, (where, iou)
