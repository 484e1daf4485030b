"""The pixel budget of video decoding (``FrameSource(max_pixels=...)``) and of the overlay
encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.video.overlay import LARGE_FRAME_PIXELS, OverlayWriter
from model.video.reader import FrameSource, VideoReadError, VideoTooLarge
from tests.media import h264_bytes


def _mp4(path: Path, width: int, height: int, frames: int = 3) -> Path:
    with OverlayWriter(path, 10, (width, height)) as writer:
        for i in range(frames):
            writer.write(np.full((height, width, 3), 30 * i, np.uint8))
    return path


def test_declared_size_over_budget_refused_before_decoding(tmp_path: Path) -> None:
    path = _mp4(tmp_path / "wide.mp4", 128, 96)
    with pytest.raises(VideoTooLarge, match=r"128x96 \(12288 pixels\).*limit of 4096 pixels"):
        FrameSource(path, max_pixels=64 * 64)
    source = FrameSource(path, max_pixels=128 * 96)
    assert (source.width, source.height) == (128, 96)
    assert source.duration_s == pytest.approx(0.3)
    assert len(list(source)) == 3


def test_resolution_change_mid_stream_stops_decoding(tmp_path: Path) -> None:
    path = tmp_path / "input"  # no suffix: as the service stores uploads
    path.write_bytes(h264_bytes(64, 64, 3) + h264_bytes(96, 80, 2))
    assert [f.shape for f in FrameSource(path)][-1] == (80, 96, 3)  # no budget: decodes
    source = FrameSource(path, max_pixels=64 * 64)
    assert (source.width, source.height) == (64, 64)  # the metadata shows the first size
    with pytest.raises(VideoReadError, match="limit of 4096 pixels"):
        list(source)  # FFmpeg's decoder refuses the larger frame before allocating it
    # Where a decoder does not enforce the budget, the frame check does.
    unchecked = FrameSource(path, max_pixels=64 * 64)
    unchecked._decoder_options = dict  # type: ignore[method-assign]
    with pytest.raises(VideoTooLarge, match=r"frame 3 is 96x80"):
        list(unchecked)


def test_frame_folder_images_over_budget(tmp_path: Path) -> None:
    for i in range(2):
        Image.new("RGB", (65, 64)).save(tmp_path / f"{i:05d}.png")
    with pytest.raises(VideoTooLarge, match="00000.png is 65x64"):
        list(FrameSource(tmp_path, max_pixels=64 * 64))
    assert len(list(FrameSource(tmp_path, max_pixels=65 * 64))) == 2


def test_large_overlays_use_the_low_memory_encoder(tmp_path: Path) -> None:
    small = OverlayWriter(tmp_path / "small.mp4", 10, (640, 480))
    large = OverlayWriter(tmp_path / "large.mp4", 10, (2048, 1088))
    assert 2048 * 1088 > LARGE_FRAME_PIXELS >= 640 * 480
    if large.codec != "libx264":
        pytest.skip("only libx264 gets the low-memory preset")
    assert small._stream.options.get("preset") is None
    assert large._stream.options.get("preset") == "ultrafast"
    with small, large:
        large.write(np.zeros((1088, 2048, 3), np.uint8))
    assert len(list(FrameSource(tmp_path / "large.mp4"))) == 1
