"""YouTube-VIS clip dataset on the real sample: sampling, slots, dummies and ids."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from model.rle import decode as decode_rle
from training.data.augment import AugmentConfig, boxes_from_masks
from training.data.pseudo_video import PseudoVideoConfig
from training.data.ytvis_dataset import (
    ClipSamplingConfig,
    YtvisClipDataset,
    assemble_clip,
    sample_frame_indices,
)


@pytest.fixture(scope="module")
def sample_json(real_sample_dir: Path) -> dict[str, Any]:
    return json.loads((real_sample_dir / "instances.json").read_text())


def _dataset(
    real_sample_dir: Path, annotation_file: Path | None = None, **kwargs: Any
) -> YtvisClipDataset:
    return YtvisClipDataset(
        annotation_file or real_sample_dir / "instances.json",
        real_sample_dir / "JPEGImages",
        **kwargs,
    )


def test_frame_indices_follow_the_official_sampler() -> None:
    for seed in range(300):
        rng = np.random.default_rng(seed)
        length = int(rng.integers(1, 40))
        cfg = ClipSamplingConfig(
            num_frames=int(rng.integers(1, 12)), frame_range=int(rng.integers(1, 8))
        )
        idx = sample_frame_indices(length, cfg, np.random.default_rng(seed))
        assert idx.shape == (cfg.num_frames,) and idx.dtype == np.int64
        assert np.all(np.diff(idx) >= 0), "not sorted"
        assert idx.min() >= 0 and idx.max() < length
        # some drawn frame is a reference whose +-R window holds every other frame
        assert any(np.abs(idx - r).max() <= cfg.frame_range for r in idx)


def test_reference_is_drawn_first_and_always_included() -> None:
    cfg = ClipSamplingConfig(num_frames=6, frame_range=3)
    for seed in range(50):
        ref = int(np.random.default_rng(seed).integers(30))
        idx = sample_frame_indices(30, cfg, np.random.default_rng(seed))
        assert ref in idx
        others = list(idx)
        others.remove(ref)
        assert all(abs(i - ref) <= 3 for i in others)


def test_frames_are_drawn_with_replacement() -> None:
    cfg = ClipSamplingConfig(num_frames=10, frame_range=20)
    dup = sum(
        len(set(sample_frame_indices(25, cfg, np.random.default_rng(s)).tolist())) < 10
        for s in range(100)
    )
    assert dup > 20, "duplicates must be possible even when the window is large"
    # a 3-frame video cannot give 10 distinct frames
    idx = sample_frame_indices(3, cfg, np.random.default_rng(0))
    assert len(set(idx.tolist())) <= 3 and len(idx) == 10
    assert sample_frame_indices(1, cfg, np.random.default_rng(0)).tolist() == [0] * 10


def test_unaugmented_clip_matches_the_files(real_sample_dir: Path, sample_json: dict) -> None:
    sampling = ClipSamplingConfig(num_frames=4, frame_range=3)
    ds = _dataset(real_sample_dir, sampling=sampling, augment=None, seed=5)
    assert len(ds) == 5 and ds.num_classes == 40
    video, ann = sample_json["videos"][2], sample_json["annotations"][2]
    for index in (2, 7):  # index 7 wraps around to the same video, with other frames
        clip = ds[index]
        idx = sample_frame_indices(video["length"], sampling, np.random.default_rng((5, index)))
        assert clip.source == f"ytvis:{video['id']}"
        assert clip.frames.shape == (4, 480, 854, 3) and clip.masks.shape == (4, 1, 480, 854)
        for t, f in enumerate(idx):
            path = real_sample_dir / "JPEGImages" / video["file_names"][f]
            assert np.array_equal(clip.frames[t], np.asarray(Image.open(path).convert("RGB")))
            seg = ann["segmentations"][f]
            rle = mask_utils.frPyObjects(seg, seg["size"][0], seg["size"][1])
            assert np.array_equal(clip.masks[t, 0], decode_rle(rle))
        assert clip.ids[:, 0].tolist() == [ann["id"]] * 4
        assert clip.labels[:, 0].tolist() == [ann["category_id"] - 1] * 4
        assert np.array_equal(clip.boxes, boxes_from_masks(clip.masks))


def _with_extra_tracks(sample_json: dict, tmp_path: Path) -> Path:
    """Video 1 (25 frames) gets a track in frames 0..4, a crowd region, and one in frame 24."""
    doc = copy.deepcopy(sample_json)
    base = next(a for a in doc["annotations"] if a["video_id"] == 1)
    length = len(base["segmentations"])

    def track(ann_id: int, frames: range, category: int, crowd: int = 0) -> dict:
        segs = [base["segmentations"][f] if f in frames else None for f in range(length)]
        blank = [None] * length
        fields = {"id": ann_id, "category_id": category, "iscrowd": crowd, "areas": blank}
        return {**copy.deepcopy(base), **fields, "segmentations": segs, "bboxes": blank}

    doc["annotations"] += [
        track(100, range(0, 5), 26),
        track(101, range(length), 5, crowd=1),
        track(102, range(24, 25), 9),
    ]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))
    return path


def test_slots_dummies_and_crowd(real_sample_dir: Path, sample_json: dict, tmp_path: Path) -> None:
    sampling = ClipSamplingConfig(num_frames=5, frame_range=3)
    ds = _dataset(
        real_sample_dir, _with_extra_tracks(sample_json, tmp_path), sampling=sampling, augment=None
    )
    k = ds.num_classes
    seen_partial = seen_absent = 0
    for index in range(0, 60, 5):  # video 1 only
        clip = ds[index]
        idx = sample_frame_indices(25, sampling, np.random.default_rng((0, index)))
        expected = [1] + ([100] if idx.min() <= 4 else []) + [101] + ([102] if 24 in idx else [])
        assert clip.num_slots == len(expected)
        assert clip.masks.shape[:2] == clip.labels.shape == clip.ids.shape == (5, len(expected))
        seen_absent += 100 not in expected
        for s, ann_id in enumerate(expected):
            present = {1: idx >= 0, 100: idx <= 4, 101: idx < 0, 102: idx == 24}[ann_id]
            label = {1: 2, 100: 25, 101: 4, 102: 8}[ann_id]
            assert clip.ids[:, s].tolist() == [ann_id if p else -1 for p in present]
            assert clip.labels[:, s].tolist() == [label if p else k for p in present]
            assert np.array_equal(clip.masks[:, s].any(axis=(1, 2)), present)
            seen_partial += ann_id == 100 and not present.all()
    assert seen_partial and seen_absent, "pick seeds that exercise both cases"


def test_empty_mask_keeps_label_but_loses_id() -> None:
    frames = [np.zeros((8, 8, 3), np.uint8)] * 2
    full = np.ones((8, 8), bool)
    empty = np.zeros((8, 8), bool)
    clip = assemble_clip(
        frames, [[full, empty], [None, full]], [7, 9], [3, 4], 5, None, np.random.default_rng(0)
    )
    assert clip.ids.tolist() == [[7, -1], [-1, 9]]
    assert clip.labels.tolist() == [[3, 4], [5, 4]]


def test_augmented_clip_keeps_ids_consistent(real_sample_dir: Path) -> None:
    sampling = ClipSamplingConfig(num_frames=3, frame_range=4)
    augment = AugmentConfig(crop_range=(64, 160), min_sizes=(128, 160), max_size=256)
    ds = _dataset(real_sample_dir, sampling=sampling, augment=augment, seed=1)
    vanished = 0
    for index in range(10):
        clip = ds[index]
        t_len, slots, height, width = clip.masks.shape
        assert clip.frames.shape == (t_len, height, width, 3) and clip.frames.dtype == np.uint8
        assert min(height, width) in (128, 160) or max(height, width) == 256
        for s in range(slots):
            valid = clip.ids[:, s][clip.ids[:, s] >= 0]
            assert len(set(valid.tolist())) <= 1, "one identity per slot"
        assert np.array_equal(clip.ids >= 0, clip.masks.any(axis=(2, 3)))
        assert np.array_equal(clip.boxes, boxes_from_masks(clip.masks))
        vanished += int((clip.ids < 0).sum())
    again = ds[3]
    assert np.array_equal(again.frames, ds[3].frames) and np.array_equal(again.ids, ds[3].ids)
    assert vanished > 0, "small crops should sometimes cut an instance out"


def test_image_mode_builds_pseudo_clips_from_one_frame(real_sample_dir: Path) -> None:
    cfg = PseudoVideoConfig(num_frames=3, crop_range=(200, 300), min_sizes=(160,), max_size=320)
    ds = _dataset(real_sample_dir, augment=None, seed=2, image_mode=cfg)
    for index in range(5):
        clip = ds[index]
        assert clip.frames.shape[0] == 3 and clip.num_slots == 1
        assert set(clip.ids[:, 0].tolist()) <= {0, -1}
        assert np.array_equal(clip.ids >= 0, clip.masks.any(axis=(2, 3)))
        assert clip.source.startswith(f"ytvis:{index + 1}:")
    assert ds[4].labels[0, 0] == 25  # kite-surf: person (26)
