"""Pseudo videos: every generator keeps masks, boxes and ids consistent; COCO source and maps."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.training.helpers import erode
from training.data.augment import boxes_from_masks
from training.data.batch import Clip
from training.data.coco import (
    CATEGORY_MAPS,
    TARGET_NUM_CLASSES,
    CocoImage,
    CocoInstances,
)
from training.data.pseudo_video import (
    PseudoVideoConfig,
    PseudoVideoDataset,
    crop_shift_windows,
    crop_zoom_windows,
    generate_pseudo_clip,
    rotation_angles,
)

SMALL = PseudoVideoConfig(
    num_frames=4,
    crop_short_sizes=(32, 48),
    crop_range=(16, 40),
    min_sizes=(24, 32, 40),
    max_size=64,
)
GENERATORS = {
    "rotation": replace(SMALL, crop_prob=0.0),
    "crop-shift": replace(SMALL, crop_prob=1.0, max_angle=0.0),
    "crop-zoom": replace(SMALL, crop_prob=1.0, crop_shift=False, crop_zoom=True, max_angle=0.0),
    "crop-shift-zoom": replace(SMALL, crop_prob=1.0, crop_zoom=True, max_angle=0.0),
    "copy-paste": replace(SMALL, crop_prob=0.0, max_angle=0.0),
    "all": replace(SMALL, crop_prob=1.0, crop_zoom=True),
    "default": SMALL,
}


@st.composite
def scenes(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random image with 0..4 rectangular (possibly overlapping) instances."""
    h, w = draw(st.integers(20, 64)), draw(st.integers(20, 64))
    n = draw(st.integers(0, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((n, h, w), dtype=bool)
    for k in range(n):
        y0, x0 = int(rng.integers(0, h - 1)), int(rng.integers(0, w - 1))
        masks[k, y0 : int(rng.integers(y0 + 1, h + 1)), x0 : int(rng.integers(x0 + 1, w + 1))] = 1
    return image, masks, rng.integers(0, 40, n)


def _check_consistent(clip: Clip, labels: np.ndarray, cfg: PseudoVideoConfig) -> None:
    t_len, slots, height, width = clip.masks.shape
    assert t_len == cfg.num_frames and clip.masks.dtype == bool
    assert clip.frames.shape == (t_len, height, width, 3) and clip.frames.dtype == np.uint8
    assert clip.ids.shape == clip.labels.shape == (t_len, slots)
    nonempty = clip.masks.any(axis=(2, 3))
    assert np.array_equal(clip.ids >= 0, nonempty), "id -1 exactly where the mask is empty"
    for s in range(slots):
        assert set(clip.ids[:, s].tolist()) <= {s, -1}, "one id per slot, the same in all frames"
        assert len(set(clip.labels[:, s].tolist())) == 1
    assert np.array_equal(clip.labels[0, : len(labels)], labels)
    assert clip.boxes is not None and clip.boxes.shape == (t_len, slots, 4)
    assert np.array_equal(clip.boxes, boxes_from_masks(clip.masks))
    assert (clip.boxes[..., 0::2] <= width).all() and (clip.boxes[..., 1::2] <= height).all()
    assert (clip.boxes >= 0).all()
    ys, xs = np.nonzero(nonempty)
    for t, s in zip(ys, xs, strict=True):  # the box is the mask's extent: tight on every side
        x0, y0, x1, y1 = (int(v) for v in clip.boxes[t, s])
        m = clip.masks[t, s]
        assert m[y0:y1, x0:x1].sum() == m.sum()
        assert m[y0].any() and m[y1 - 1].any() and m[:, x0].any() and m[:, x1 - 1].any()


@pytest.mark.parametrize("generator", sorted(GENERATORS))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scene=scenes(), seed=st.integers(0, 2**32 - 1))
def test_generators_keep_masks_boxes_and_ids_consistent(
    generator: str, scene: tuple[np.ndarray, np.ndarray, np.ndarray], seed: int
) -> None:
    image, masks, labels = scene
    cfg = GENERATORS[generator]
    donor = None
    if generator in ("copy-paste", "all"):
        donor = CocoImage(image[::-1].copy(), masks[:, ::-1].copy(), labels + 1, 0)

    def run() -> Clip:
        rng = np.random.default_rng(seed)
        return generate_pseudo_clip(image, masks, labels, cfg, rng, donor=donor)

    clip = run()
    _check_consistent(clip, labels, cfg)
    assert clip.num_slots >= len(labels)
    if donor is not None and masks.any():
        assert clip.num_slots > len(labels), "a donor with instances pastes at least one"
        for t in range(cfg.num_frames):  # pasted instances occlude everything below them
            for s in range(len(labels), clip.num_slots):
                assert not (clip.masks[t, :s] & clip.masks[t, s]).any()
    again = run()
    assert np.array_equal(clip.frames, again.frames) and np.array_equal(clip.masks, again.masks)
    assert np.array_equal(clip.ids, again.ids)


def _painted() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    image = np.zeros((96, 128, 3), dtype=np.uint8)
    masks = np.zeros((3, 96, 128), dtype=bool)
    for k, (y0, x0, y1, x1) in enumerate([(8, 8, 40, 50), (50, 40, 90, 80), (10, 80, 60, 120)]):
        masks[k, y0:y1, x0:x1] = True
        image[y0:y1, x0:x1] = colours[k]
    return image, masks, colours


@pytest.mark.parametrize(
    "generator", ["rotation", "crop-shift", "crop-zoom", "crop-shift-zoom", "all"]
)
def test_masks_stay_on_their_pixels(generator: str) -> None:
    image, masks, colours = _painted()
    cfg = replace(
        GENERATORS[generator],
        crop_short_sizes=(96,),
        crop_range=(64, 96),
        min_sizes=(80, 96),
        max_size=160,
        num_frames=3,
    )
    for seed in range(4):
        clip = generate_pseudo_clip(image, masks, [0, 1, 2], cfg, np.random.default_rng(seed))
        for t in range(cfg.num_frames):
            for k in range(3):
                inner = erode(clip.masks[t, k], 2)
                if inner.any():
                    diff = np.abs(clip.frames[t][inner].astype(int) - colours[k].astype(int))
                    assert diff.max() <= 3, f"{generator} seed {seed}: mask {k} off its colour"


def test_identity_config_reproduces_the_image() -> None:
    image, masks, _ = _painted()
    cfg = PseudoVideoConfig(
        num_frames=3, crop_prob=0.0, min_sizes=(96,), max_size=1000, flip_prob=0.0, max_angle=0.0
    )
    clip = generate_pseudo_clip(image, masks, [4, 5, 6], cfg, np.random.default_rng(0))
    assert np.array_equal(clip.frames, np.stack([image] * 3))
    assert np.array_equal(clip.masks, np.stack([masks] * 3))
    assert clip.ids.tolist() == [[0, 1, 2]] * 3 and clip.labels.tolist() == [[4, 5, 6]] * 3


def test_crop_shift_windows_move_monotonically_with_fixed_size() -> None:
    for seed in range(100):
        win = crop_shift_windows(500, 700, 8, (384, 600), np.random.default_rng(seed))
        tops, lefts, hs, ws = win.T
        assert len(set(hs.tolist())) == 1 and len(set(ws.tolist())) == 1
        assert 384 <= hs[0] <= 500 and 384 <= ws[0] <= 600
        assert (tops >= 0).all() and (tops + hs <= 500).all() and (lefts + ws <= 700).all()
        dy, dx = np.diff(tops), np.diff(lefts)
        # both coordinates move the same way (down/right or up/left), never back
        assert ((dy >= 0).all() and (dx >= 0).all()) or ((dy <= 0).all() and (dx <= 0).all())


def test_crop_zoom_windows_keep_the_centre_and_zoom_monotonically() -> None:
    for seed in range(100):
        win = crop_zoom_windows(500, 700, 8, (384, 600), (0.6, 0.9), np.random.default_rng(seed))
        tops, lefts, hs, ws = win.T
        assert (tops >= 0).all() and (tops + hs <= 500).all() and (lefts + ws <= 700).all()
        assert np.all(np.diff(hs) >= 0) or np.all(np.diff(hs) <= 0)
        assert 0.55 <= hs.min() / hs.max() <= 0.95
        centre_y, centre_x = tops + hs / 2, lefts + ws / 2
        assert np.ptp(centre_y) <= 1.0 and np.ptp(centre_x) <= 1.0


def test_rotation_angles_are_monotone_and_bounded() -> None:
    directions = set()
    for seed in range(40):
        angles = rotation_angles(6, 15.0, np.random.default_rng(seed))
        assert np.abs(angles).max() <= 15.0
        d = np.diff(angles)
        assert (d >= 0).all() or (d <= 0).all()
        directions.add(bool((d >= 0).all()))
    assert directions == {True, False}


def test_category_maps_match_the_spec() -> None:
    assert {k: len(v) for k, v in CATEGORY_MAPS.items()} == {
        "ytvis19": 21,
        "ytvis21": 23,
        "ovis": 17,
    }
    for target, mapping in CATEGORY_MAPS.items():
        assert all(1 <= v <= TARGET_NUM_CLASSES[target] for v in mapping.values())
    ytvis19, ytvis21, ovis = (CATEGORY_MAPS[k] for k in ("ytvis19", "ytvis21", "ovis"))
    assert ytvis19[2] == ytvis19[4] == 21 and ytvis21[2] == ytvis21[4] == 23  # motorbike
    assert ovis[3] == ovis[6] == ovis[8] == 25  # car, bus, truck -> vehicle
    assert ytvis19[35] == ytvis19[36] == 33 and ytvis21[35] == ytvis21[36] == 31  # snowboard
    assert (ytvis19[1], ytvis21[1], ovis[1]) == (1, 26, 1)  # person


def _write_coco(root: Path) -> Path:
    """Three 40x60 PNGs: person + crowd person + toothbrush; toothbrush only; dog."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, 4):
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": 40, "width": 60})

    def ann(image_id: int, cat: int, poly: list[float], crowd: int = 0) -> None:
        fields = {"category_id": cat, "segmentation": [poly], "iscrowd": crowd}
        anns.append({"id": len(anns) + 1, "image_id": image_id, "area": 1.0, **fields})

    ann(1, 1, [5, 5, 25, 5, 25, 30, 5, 30])
    ann(1, 1, [30, 5, 50, 5, 50, 20], crowd=1)
    ann(1, 90, [40, 20, 55, 20, 55, 35])
    ann(2, 90, [1, 1, 20, 1, 20, 20])
    ann(3, 18, [10, 10, 40, 12, 20, 35])
    cats = [{"id": c, "name": str(c)} for c in (1, 18, 90)]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_coco_reader_applies_the_target_map(tmp_path: Path) -> None:
    path = _write_coco(tmp_path)
    mapped = CocoInstances(path, tmp_path, target="ytvis19")
    assert len(mapped) == 2 and mapped.num_classes == 40  # image 2 has no mapped instance
    first, dog = mapped.load(0), mapped.load(1)
    assert first.image.shape == (40, 60, 3) and first.labels.tolist() == [0]  # crowd dropped
    assert first.masks.shape == (1, 40, 60) and first.masks[0, 10, 10]
    assert not first.masks[0, 35, 50] and int(first.masks.sum()) > 400
    assert dog.labels.tolist() == [CATEGORY_MAPS["ytvis19"][18] - 1] and dog.image_id == 3
    plain = CocoInstances(path, tmp_path)
    assert len(plain) == 3 and plain.num_classes == 3
    assert plain.load(0).labels.tolist() == [0, 2]


def test_pseudo_video_dataset_is_deterministic_and_pastes(tmp_path: Path) -> None:
    source = CocoInstances(_write_coco(tmp_path), tmp_path, target="ytvis19")
    ds = PseudoVideoDataset(source, replace(SMALL, copy_paste_prob=1.0), seed=3)
    assert len(ds) == 2 and ds.num_classes == 40
    a, b, c = ds[4], ds[4], ds[6]
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.ids, b.ids)
    assert a.source == "coco:1" and c.source == "coco:1"
    assert not np.array_equal(a.frames, c.frames) or a.frames.shape != c.frames.shape
    assert a.num_slots > 1, "the donor's instances are pasted as new slots"
    _check_consistent(a, np.array([0]), ds.cfg)
