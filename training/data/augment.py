"""Clip-consistent augmentation of real video clips.

Follows the official ``build_augmentation`` (``ctvis/data/vis/augmentation.py`` of
https://github.com/KainingYing/CTVIS) with the released configs' ``INPUT.*`` values.

Every random parameter is drawn **once per clip** from a ``numpy.random.Generator`` passed in
by the caller, so all T frames of a clip get the same crop, resize and flip:

1. with probability ``crop_prob`` crop (on the original-resolution frame) an ``h x w`` window,
   ``h ~ U{min(H, lo)..min(H, hi)}``, ``w ~ U{min(W, lo)..min(W, hi)}``, top-left uniform
   (the official ``absolute_range`` crop; its moving-window variant only ever reads the first
   window, i.e. the same crop for every frame);
2. resize the short side to ``s`` drawn from ``min_sizes`` with the long side capped at
   ``max_size`` and ``int(x + 0.5)`` rounding (the test-time rule of
   :func:`model.preprocess.resize_shape`); PIL bilinear for images, nearest for masks;
3. horizontal flip with probability ``flip_prob``.

Masks are transformed as bit-planes: up to 8 masks are packed into one uint8 image, which
nearest-neighbour resizing, cropping, flipping and rotation copy bit-exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from model.config import PreprocessConfig
from model.preprocess import resize_shape

__all__ = [
    "DEFAULT_MIN_SIZES",
    "AugmentConfig",
    "ClipTransform",
    "augment_clip",
    "boxes_from_masks",
    "map_planes",
    "pack_masks",
    "resize_image",
    "resize_masks",
    "sample_clip_transform",
    "scaled_shape",
    "transform_image",
    "transform_masks",
    "unpack_masks",
]

# INPUT.MIN_SIZE_TRAIN of every released CTVIS config (official configs/_base_/*.yaml).
DEFAULT_MIN_SIZES: tuple[int, ...] = (320, 352, 392, 416, 448, 480, 512, 544, 576, 608, 640)


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the clip-consistent augmentation; defaults are the released configs.

    Attributes:
        crop_prob: probability that a clip goes through the crop pipeline (0.5).
        crop_range: (lo, hi) of the ``absolute_range`` crop size in pixels ((384, 600)).
        min_sizes: short-side sizes, one chosen per clip (``MIN_SIZE_TRAIN``).
        max_size: cap on the long side after resizing (``MAX_SIZE_TRAIN`` 768).
        flip_prob: probability of a horizontal flip per clip (0.5).
    """

    crop_prob: float = 0.5
    crop_range: tuple[int, int] = (384, 600)
    min_sizes: tuple[int, ...] = DEFAULT_MIN_SIZES
    max_size: int = 768
    flip_prob: float = 0.5


@dataclass(frozen=True)
class ClipTransform:
    """The geometric transform drawn for one clip.

    Attributes:
        crop: (top, left, height, width) in input pixels, or None for no crop.
        size: (height, width) of the output frames.
        flip: whether frames are flipped horizontally (after cropping and resizing).
    """

    crop: tuple[int, int, int, int] | None
    size: tuple[int, int]
    flip: bool


def scaled_shape(height: int, width: int, short_side: int, max_size: int) -> tuple[int, int]:
    """Output (h, w) of a short-side resize with a long-side cap and ``int(x + 0.5)`` rounding."""
    return resize_shape(height, width, PreprocessConfig(min_size=short_side, max_size=max_size))


def sample_crop_size(
    height: int, width: int, crop_range: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int]:
    """Draw an ``absolute_range`` crop size: each side uniform in ``[min(L, lo), min(L, hi)]``."""
    lo, hi = crop_range
    crop_h = int(rng.integers(min(height, lo), min(height, hi) + 1))
    crop_w = int(rng.integers(min(width, lo), min(width, hi) + 1))
    return crop_h, crop_w


def sample_clip_transform(
    height: int, width: int, cfg: AugmentConfig, rng: np.random.Generator
) -> ClipTransform:
    """Draw the crop, resize and flip parameters of one clip.

    Args:
        height: input frame height H.
        width: input frame width W.
        cfg: augmentation parameters.
        rng: the clip's random generator (draw order: crop?, crop size, top, left, size, flip).

    Returns:
        The transform to apply to every frame and mask of the clip.
    """
    crop = None
    in_h, in_w = height, width
    if rng.random() < cfg.crop_prob:
        crop_h, crop_w = sample_crop_size(height, width, cfg.crop_range, rng)
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        crop = (top, left, crop_h, crop_w)
        in_h, in_w = crop_h, crop_w
    short_side = int(cfg.min_sizes[int(rng.integers(len(cfg.min_sizes)))])
    size = scaled_shape(in_h, in_w, short_side, cfg.max_size)
    flip = bool(rng.random() < cfg.flip_prob)
    return ClipTransform(crop=crop, size=size, flip=flip)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL-bilinear resize of an HxWx3 uint8 image to ``size`` = (h, w); no-op if equal."""
    if image.shape[:2] == tuple(size):
        return image
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """Pack NxHxW bool masks into ceil(N/8)xHxW uint8 bit-planes (mask k -> plane k//8).

    Bit order as ``np.packbits(masks, axis=0)`` (mask k is bit ``7 - k % 8``), built with one
    shift-or per mask: packing along the slow axis is several times slower.
    """
    masks = np.asarray(masks, dtype=bool)
    planes = np.zeros(((masks.shape[0] + 7) // 8, *masks.shape[1:]), dtype=np.uint8)
    for k, mask in enumerate(masks):
        planes[k // 8] |= mask.view(np.uint8) << np.uint8(7 - k % 8)
    return planes


def unpack_masks(planes: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`pack_masks`: PxHxW uint8 planes -> ``count``xHxW bool masks."""
    if count == 0:
        return np.zeros((0, *planes.shape[1:]), dtype=bool)
    return np.unpackbits(planes, axis=0, count=count).astype(bool)


def map_planes(planes: np.ndarray, op: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """Apply a PIL ``Image -> Image`` operation (nearest-only) to every uint8 bit-plane.

    Args:
        planes: PxHxW uint8.
        op: callable taking and returning a mode-"L" PIL image.

    Returns:
        PxH'xW' uint8.
    """
    out = [np.asarray(op(Image.fromarray(np.ascontiguousarray(p)))) for p in planes]
    return np.stack(out) if out else planes


def resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of NxHxW bool masks to ``size`` = (h, w) (PIL NEAREST)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.shape[1:] == tuple(size):
        return masks
    if masks.shape[0] == 0:
        return np.zeros((0, *size), dtype=bool)
    planes = map_planes(
        pack_masks(masks), lambda im: im.resize((size[1], size[0]), Image.Resampling.NEAREST)
    )
    return unpack_masks(planes, masks.shape[0])


def transform_image(image: np.ndarray, tf: ClipTransform) -> np.ndarray:
    """Apply a clip transform to one HxWx3 uint8 frame.

    Returns:
        h'xw'x3 uint8 with (h', w') = ``tf.size``.
    """
    if tf.crop is not None:
        top, left, h, w = tf.crop
        image = image[top : top + h, left : left + w]
    image = resize_image(image, tf.size)
    if tf.flip:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def transform_masks(masks: np.ndarray, tf: ClipTransform) -> np.ndarray:
    """Apply a clip transform to NxHxW bool masks (nearest resize).

    Returns:
        Nxh'xw' bool with (h', w') = ``tf.size``.
    """
    masks = np.asarray(masks, dtype=bool)
    if tf.crop is not None:
        top, left, h, w = tf.crop
        masks = masks[:, top : top + h, left : left + w]
    masks = resize_masks(masks, tf.size)
    if tf.flip:
        masks = masks[:, :, ::-1]
    return np.ascontiguousarray(masks)


def augment_clip(
    frames: Sequence[np.ndarray],
    masks: np.ndarray,
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment a clip with one transform drawn for all its frames.

    Args:
        frames: T HxWx3 uint8 RGB frames of the same size.
        masks: TxSxHxW bool instance masks.
        cfg: augmentation parameters.
        rng: the clip's random generator.

    Returns:
        frames: Txh'xw'x3 uint8.
        masks: TxSxh'xw' bool.
    """
    height, width = frames[0].shape[:2]
    tf = sample_clip_transform(height, width, cfg, rng)
    out_frames = np.stack([transform_image(f, tf) for f in frames])
    t_len, slots = masks.shape[:2]
    flat = transform_masks(masks.reshape(t_len * slots, height, width), tf)
    return out_frames, flat.reshape(t_len, slots, *tf.size)


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of masks, as detectron2 ``BitMasks.get_bounding_boxes``.

    Args:
        masks: ...xHxW bool.

    Returns:
        ...x4 float32 XYXY in pixels with exclusive right/bottom (x0, y0, x1 + 1, y1 + 1);
        all zeros for an empty mask.
    """
    masks = np.asarray(masks, dtype=bool)
    lead = masks.shape[:-2]
    flat = masks.reshape(-1, *masks.shape[-2:])
    boxes = np.zeros((flat.shape[0], 4), dtype=np.float32)
    rows = np.any(flat, axis=2)  # per mask: which rows / columns hold a pixel
    cols = np.any(flat, axis=1)
    for k in np.flatnonzero(rows.any(axis=1)):
        ys = np.flatnonzero(rows[k])
        xs = np.flatnonzero(cols[k])
        boxes[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes.reshape(*lead, 4)
