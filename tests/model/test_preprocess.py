"""Preprocessing: official resize rule, PIL bilinear, normalisation, padding after normalising."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import PreprocessConfig
from model.preprocess import normalize_and_pad, prepare_frames, resize_frame, resize_shape


@pytest.mark.parametrize(
    ("h", "w", "min_size", "max_size", "expected"),
    [
        (90, 126, 104, 1333, (104, 146)),  # 145.6 rounds up (fixture case)
        (126, 90, 104, 1333, (146, 104)),  # portrait
        (720, 1280, 480, 1333, (480, 853)),  # 853.33 rounds down
        (480, 640, 480, 1333, (480, 640)),  # already at size
        (100, 10000, 480, 1333, (13, 1333)),  # long side capped, both rescaled
        (64, 64, 64, 1333, (64, 64)),
    ],
)
def test_resize_shape(h, w, min_size, max_size, expected):
    cfg = PreprocessConfig(min_size=min_size, max_size=max_size)
    assert resize_shape(h, w, cfg) == expected


def test_fixture_frames_match_official(fixtures_dir: Path):
    reference = torch.load(fixtures_dir / "per_frame_outputs.pt", weights_only=True)
    frames = np.load(fixtures_dir / "frames.npy")
    cfg = PreprocessConfig(min_size=104)
    resized = np.stack([resize_frame(f, cfg) for f in frames]).transpose(0, 3, 1, 2)
    assert np.array_equal(resized, reference["resized_images_uint8"].numpy())
    batch = prepare_frames(frames, cfg)
    assert batch.pixels.dtype == torch.float32
    assert batch.padded_size == (128, 160)
    assert batch.image_sizes == ((104, 146),) * 8
    assert batch.original_sizes == ((90, 126),) * 8
    assert float((batch.pixels - reference["input_tensor"]).abs().max()) <= 1e-5


def test_padding_is_zero_after_normalisation():
    cfg = PreprocessConfig(min_size=40)
    frames = [
        np.full((40, 50, 3), 255, dtype=np.uint8),
        np.zeros((60, 40, 3), dtype=np.uint8),  # portrait: resized to 40 wide, 60 high
    ]
    batch = prepare_frames(frames, cfg)
    assert batch.image_sizes == ((40, 50), (60, 40))
    assert batch.padded_size == (64, 64)
    white = (255.0 - torch.tensor(cfg.pixel_mean)) / torch.tensor(cfg.pixel_std)
    assert torch.allclose(batch.pixels[0, :, 0, 0], white)
    assert torch.count_nonzero(batch.pixels[0, :, 40:, :]) == 0
    assert torch.count_nonzero(batch.pixels[0, :, :, 50:]) == 0
    assert torch.count_nonzero(batch.pixels[1, :, :, 40:]) == 0
    black = -torch.tensor(cfg.pixel_mean) / torch.tensor(cfg.pixel_std)
    assert torch.allclose(batch.pixels[1, :, 59, 39], black)


def test_normalize_and_pad_divisibility():
    images = [torch.zeros(3, 33, 65, dtype=torch.uint8)]
    out = normalize_and_pad(images, PreprocessConfig(size_divisibility=32))
    assert out.shape == (1, 3, 64, 96)


def test_downscale_is_antialiased_like_pil():
    # a 1-pixel checkerboard halved: PIL's bilinear filter averages it to ~127 everywhere
    board = ((np.indices((80, 80)).sum(0) % 2) * 255).astype(np.uint8)
    frame = np.repeat(board[:, :, None], 3, axis=2)
    out = resize_frame(frame, PreprocessConfig(min_size=40))
    assert out.shape == (40, 40, 3)
    assert np.abs(out[2:-2, 2:-2].astype(int) - 127).max() <= 2


def test_rejects_bad_frames():
    with pytest.raises(ValueError, match="uint8"):
        resize_frame(np.zeros((10, 10, 3), dtype=np.float32), PreprocessConfig())
    with pytest.raises(ValueError, match="uint8"):
        resize_frame(np.zeros((10, 10), dtype=np.uint8), PreprocessConfig())
    with pytest.raises(ValueError, match="at least one"):
        prepare_frames([], PreprocessConfig())
