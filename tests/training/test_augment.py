"""Clip-consistent augmentation: one crop/resize/flip per clip, masks aligned with pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.training.helpers import erode
from training.data.augment import (
    AugmentConfig,
    augment_clip,
    boxes_from_masks,
    pack_masks,
    resize_masks,
    sample_clip_transform,
    scaled_shape,
    transform_image,
    unpack_masks,
)


def _painted(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A black image with three coloured, non-overlapping rectangles and their masks."""
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    boxes = [(10, 10, 60, 90), (70, 120, 130, 200), (20, 220, 110, 300)]
    image = np.zeros((height, width, 3), dtype=np.uint8)
    masks = np.zeros((3, height, width), dtype=bool)
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        masks[k, y0:y1, x0:x1] = True
        image[y0:y1, x0:x1] = colours[k]
    return image, masks, colours


def test_scaled_shape_rounding_and_cap() -> None:
    assert scaled_shape(480, 854, 320, 768) == (320, int(854 * 320 / 480 + 0.5))
    # 640 short side would make the long side 1138.7 > 768: both sides scale to fit
    h = 640 * 768 / (854 * 640 / 480)
    assert scaled_shape(480, 854, 640, 768) == (int(h + 0.5), 768)
    assert scaled_shape(854, 480, 320, 768) == (int(854 * 320 / 480 + 0.5), 320)


@pytest.mark.parametrize(("height", "width"), [(480, 854), (300, 200), (700, 1000)])
def test_sampled_transform_respects_ranges(height: int, width: int) -> None:
    cfg = AugmentConfig()
    crops = flips = 0
    for seed in range(300):
        tf = sample_clip_transform(height, width, cfg, np.random.default_rng(seed))
        in_h, in_w = height, width
        if tf.crop is not None:
            crops += 1
            top, left, ch, cw = tf.crop
            assert min(height, 384) <= ch <= min(height, 600)
            assert min(width, 384) <= cw <= min(width, 600)
            assert 0 <= top <= height - ch and 0 <= left <= width - cw
            in_h, in_w = ch, cw
        assert tf.size in {scaled_shape(in_h, in_w, s, 768) for s in cfg.min_sizes}
        flips += tf.flip
    assert 110 < crops < 190 and 110 < flips < 190  # p = 0.5 each over 300 clips


def test_identity_and_flip_configs() -> None:
    image, masks, _ = _painted(160, 320)
    frames = [image, image[::-1].copy()]
    clip_masks = np.stack([masks, masks[:, ::-1]])
    keep = AugmentConfig(crop_prob=0.0, min_sizes=(160,), max_size=10_000, flip_prob=0.0)
    out, out_masks = augment_clip(frames, clip_masks, keep, np.random.default_rng(0))
    assert np.array_equal(out, np.stack(frames)) and np.array_equal(out_masks, clip_masks)
    flip = AugmentConfig(crop_prob=0.0, min_sizes=(160,), max_size=10_000, flip_prob=1.0)
    out, out_masks = augment_clip(frames, clip_masks, flip, np.random.default_rng(0))
    assert np.array_equal(out, np.stack(frames)[:, :, ::-1])
    assert np.array_equal(out_masks, clip_masks[..., ::-1])


def test_crop_without_resize_is_a_window_of_the_frame() -> None:
    image, masks, _ = _painted(160, 320)
    cfg = AugmentConfig(crop_prob=1.0, crop_range=(64, 64), min_sizes=(64,), flip_prob=0.0)
    tf = sample_clip_transform(160, 320, cfg, np.random.default_rng(3))
    assert tf.crop is not None and tf.size == (64, 64)
    top, left, _, _ = tf.crop
    out, out_masks = augment_clip([image], masks[None], cfg, np.random.default_rng(3))
    assert np.array_equal(out[0], image[top : top + 64, left : left + 64])
    assert np.array_equal(out_masks[0], masks[:, top : top + 64, left : left + 64])


def test_every_frame_gets_the_same_transform_and_masks_stay_aligned() -> None:
    image, masks, colours = _painted(160, 320)
    t_len = 4
    cfg = AugmentConfig(crop_range=(120, 150), min_sizes=(150, 170, 190), max_size=400)
    for seed in range(8):
        frames, out_masks = augment_clip(
            [image] * t_len, np.stack([masks] * t_len), cfg, np.random.default_rng(seed)
        )
        assert frames.dtype == np.uint8 and out_masks.dtype == bool
        assert frames.shape[:3] == out_masks.shape[:1] + out_masks.shape[2:]
        assert all(np.array_equal(frames[0], f) for f in frames)
        assert all(np.array_equal(out_masks[0], m) for m in out_masks)
        for k in range(3):
            inner = erode(out_masks[0, k], 2)
            if inner.any():
                diff = np.abs(frames[0][inner].astype(int) - colours[k].astype(int))
                assert diff.max() <= 2, f"seed {seed}: mask {k} is not on its colour"
        background = erode(~out_masks[0].any(axis=0), 2)
        assert frames[0][background].max() <= 2


def test_deterministic_per_seed() -> None:
    image, masks, _ = _painted(160, 320)
    cfg = AugmentConfig(crop_range=(100, 150), min_sizes=(96, 128, 160), max_size=400)

    def run(seed: int) -> tuple[np.ndarray, np.ndarray]:
        return augment_clip([image], masks[None], cfg, np.random.default_rng(seed))

    a, b = run(11), run(11)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    shapes = {run(s)[0].shape for s in range(6)}
    assert len(shapes) > 1


@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 17])
def test_bit_planes_round_trip_and_match_per_mask_nearest(count: int) -> None:
    rng = np.random.default_rng(count)
    masks = rng.random((count, 37, 53)) < 0.3
    assert np.array_equal(unpack_masks(pack_masks(masks), count), masks)
    resized = resize_masks(masks, (50, 41))
    assert resized.shape == (count, 50, 41)
    for k in range(count):
        pil = Image.fromarray(masks[k].astype(np.uint8)).resize((41, 50), Image.Resampling.NEAREST)
        assert np.array_equal(resized[k], np.asarray(pil).astype(bool))


def test_transform_image_bilinear_matches_pil() -> None:
    image, _, _ = _painted(160, 320)
    tf = sample_clip_transform(
        160, 320, AugmentConfig(crop_prob=0.0, flip_prob=0.0), np.random.default_rng(0)
    )
    expected = Image.fromarray(image).resize(tf.size[::-1], Image.Resampling.BILINEAR)
    assert np.array_equal(transform_image(image, tf), np.asarray(expected))


def test_boxes_from_masks() -> None:
    masks = np.zeros((2, 3, 20, 30), dtype=bool)
    masks[0, 1, 5:9, 7:12] = True
    masks[1, 2, 0, 29] = True
    boxes = boxes_from_masks(masks)
    assert boxes.shape == (2, 3, 4) and boxes.dtype == np.float32
    assert boxes[0, 1].tolist() == [7, 5, 12, 9]
    assert boxes[1, 2].tolist() == [29, 0, 30, 1]
    assert not boxes[0, 0].any() and not boxes[1, 0].any()


@pytest.mark.parametrize("count", [0, 1, 5, 8, 9, 17])
def test_mask_planes_match_numpy_packbits_and_round_trip(count: int) -> None:
    masks = np.random.default_rng(count).random((count, 13, 21)) < 0.5
    planes = pack_masks(masks)
    assert planes.dtype == np.uint8
    np.testing.assert_array_equal(planes, np.packbits(masks, axis=0))
    np.testing.assert_array_equal(unpack_masks(planes, count), masks)
