"""Test-time preprocessing exactly as the official CTVIS path does it.

detectron2 ``ResizeShortestEdge`` (PIL bilinear on uint8) -> float CHW -> ``(x - mean) / std``
-> ``ImageList.from_tensors``-style zero padding (after normalisation) at the bottom/right to a
multiple of the size divisibility.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model.config import PreprocessConfig
from model.structures import FrameBatch

__all__ = ["normalize_and_pad", "prepare_frames", "resize_frame", "resize_shape"]


def resize_shape(h: int, w: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """Output size of ``ResizeShortestEdge(min_size, max_size)`` for an HxW image.

    The short side goes to ``min_size``; if the long side then exceeds ``max_size`` both are
    scaled down to fit; each side is rounded with ``int(x + 0.5)``.

    Args:
        h: input height.
        w: input width.
        cfg: preprocessing settings.

    Returns:
        (new_h, new_w).
    """
    size = float(cfg.min_size)
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > cfg.max_size:
        scale = cfg.max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def resize_frame(frame: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Resize one frame like the official test path (PIL ``Image.BILINEAR`` on uint8).

    Args:
        frame: HxWx3 uint8 RGB.
        cfg: preprocessing settings.

    Returns:
        h'xw'x3 uint8 RGB with (h', w') = ``resize_shape(H, W, cfg)``.
    """
    from PIL import Image  # lazy: only the preprocessing path needs Pillow

    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 frame, got {frame.dtype} {frame.shape}")
    newh, neww = resize_shape(frame.shape[0], frame.shape[1], cfg)
    image = Image.fromarray(np.ascontiguousarray(frame))
    return np.asarray(image.resize((neww, newh), Image.Resampling.BILINEAR))


def normalize_and_pad(images: Sequence[torch.Tensor], cfg: PreprocessConfig) -> torch.Tensor:
    """Normalise CHW images and zero-pad them (bottom/right) into one batch.

    Args:
        images: per frame 3xhxw tensors with values 0..255 (any dtype).
        cfg: mean/std (RGB) and size divisibility.

    Returns:
        Bx3xHpxWp float32, Hp/Wp = max h/w rounded up to a multiple of ``size_divisibility``.
    """
    mean = torch.tensor(cfg.pixel_mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(cfg.pixel_std, dtype=torch.float32).view(-1, 1, 1)
    div = max(cfg.size_divisibility, 1)
    max_h = max(int(img.shape[-2]) for img in images)
    max_w = max(int(img.shape[-1]) for img in images)
    pad_h, pad_w = -(-max_h // div) * div, -(-max_w // div) * div
    batch = torch.zeros((len(images), 3, pad_h, pad_w), dtype=torch.float32)
    for i, img in enumerate(images):
        normalised = (img.to(device="cpu", dtype=torch.float32) - mean) / std
        batch[i, :, : img.shape[-2], : img.shape[-1]] = normalised
    return batch


def prepare_frames(frames: Sequence[np.ndarray] | np.ndarray, cfg: PreprocessConfig) -> FrameBatch:
    """Turn decoded frames into the network input.

    Args:
        frames: T frames, each HxWx3 uint8 RGB (a TxHxWx3 array works too); sizes may differ.
        cfg: preprocessing settings.

    Returns:
        FrameBatch with pixels Tx3xHpxWp (normalised, zero-padded bottom/right), the resized
        (h, w) and the original (H, W) of each frame.
    """
    if len(frames) == 0:
        raise ValueError("prepare_frames needs at least one frame")
    resized = [resize_frame(np.asarray(f), cfg) for f in frames]
    tensors = [torch.from_numpy(np.ascontiguousarray(r.transpose(2, 0, 1))) for r in resized]
    return FrameBatch(
        pixels=normalize_and_pad(tensors, cfg),
        image_sizes=tuple((int(r.shape[0]), int(r.shape[1])) for r in resized),
        original_sizes=tuple((int(np.shape(f)[0]), int(np.shape(f)[1])) for f in frames),
    )
