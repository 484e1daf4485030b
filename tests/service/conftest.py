"""Service test helpers: a small synthetic video as PNG bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from training.data.synthetic import config_for, render_video


def png_bytes(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def video_frames() -> list[np.ndarray]:
    """Eight 72x96 RGB frames of moving textured shapes."""
    frames, _ = render_video(11, config_for("val", num_frames=8, height=72, width=96))
    return frames
