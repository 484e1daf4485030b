"""Synthetic training clips: on the fly == from a written directory, contract, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.config import PreprocessConfig
from training.data.augment import boxes_from_masks
from training.data.batch import collate_clips
from training.data.synthetic import render_video, write_dataset
from training.data.synthetic_dataset import (
    SyntheticClipDataset,
    synthetic_directory_dataset,
)
from training.data.ytvis_dataset import ClipSamplingConfig

SAMPLING = ClipSamplingConfig(num_frames=4, frame_range=6)


def test_on_the_fly_equals_the_written_directory(tmp_path: Path) -> None:
    write_dataset(tmp_path, "val", seed=3, num_videos=2)
    live = SyntheticClipDataset("val", num_videos=2, seed=3, sampling=SAMPLING)
    disk = synthetic_directory_dataset(tmp_path, sampling=SAMPLING, seed=3)
    assert len(live) == len(disk) == 2 and disk.num_classes == live.num_classes == 6
    for index in (0, 1, 3):
        a, b = live[index], disk[index]
        assert np.array_equal(a.frames, b.frames)
        assert np.array_equal(a.masks, b.masks) and np.array_equal(a.labels, b.labels)
        # ids differ only by naming: track index + 1 vs. the file's annotation ids
        assert np.array_equal(a.ids < 0, b.ids < 0)
        pairs = {(int(x), int(y)) for x, y in zip(a.ids.ravel(), b.ids.ravel(), strict=True)}
        assert len({x for x, _ in pairs}) == len({y for _, y in pairs}) == len(pairs)


def test_cached_renders_give_the_same_clips() -> None:
    cached = SyntheticClipDataset("val", num_videos=2, seed=4, sampling=SAMPLING)
    fresh = SyntheticClipDataset("val", num_videos=2, seed=4, sampling=SAMPLING, cache_videos=0)
    assert cached._cache == {} and fresh._cache is None
    for index in (0, 1, 2, 3, 2):  # 2 and 3 revisit cached videos; 2 twice
        a, b = cached[index], fresh[index]
        for field in ("frames", "masks", "labels", "ids"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), (index, field)
    assert sorted(cached._cache) == [0, 1]
    big = SyntheticClipDataset("val", num_videos=300, seed=4, sampling=SAMPLING)
    assert big._cache is None  # more videos than the cache holds: render every clip


def test_clips_follow_the_contract_and_collate() -> None:
    ds = SyntheticClipDataset("hard", num_videos=3, seed=1, sampling=SAMPLING)
    clips = [ds[i] for i in range(3)]
    again = ds[1]
    assert np.array_equal(again.frames, clips[1].frames) and np.array_equal(again.ids, clips[1].ids)
    for clip in clips:
        t_len, slots, height, width = clip.masks.shape
        assert t_len == 4 and clip.frames.shape == (4, height, width, 3)
        assert clip.labels.shape == clip.ids.shape == (4, slots)
        assert ((clip.labels >= 0) & (clip.labels <= 6)).all()
        dummy = clip.labels == 6  # absent: empty and id -1 (cropped-away ones keep their class)
        assert not (dummy & (clip.masks.any(axis=(2, 3)) | (clip.ids >= 0))).any()
        for s in range(slots):
            assert len(set(clip.ids[:, s][clip.ids[:, s] >= 0].tolist())) <= 1
        assert np.array_equal(clip.ids >= 0, clip.masks.any(axis=(2, 3)))
        assert np.array_equal(clip.boxes, boxes_from_masks(clip.masks))
    batch = collate_clips(clips[:2], PreprocessConfig())
    assert batch.num_clips == 2 and batch.pixels.shape[0] == 8
    assert batch.pixels.shape[-2] % 32 == 0 and batch.pixels.shape[-1] % 32 == 0
    assert batch.masks[0].shape[-2:] == batch.pixels.shape[-2:]


def test_unaugmented_clip_keeps_the_rendered_size() -> None:
    ds = SyntheticClipDataset("val", num_videos=1, seed=0, sampling=SAMPLING, augment=None)
    clip = ds[5]
    assert clip.frames.shape == (4, 192, 256, 3)
    assert clip.source == "synthetic:1"


def test_training_config_sets_the_instance_count() -> None:
    from training.config import DataConfig
    from training.loop_data import build_sources

    cfg = DataConfig(
        clip_frames=2, frame_range=4, synth_frames=6, synth_videos=12,
        synth_min_instances=5, synth_max_instances=6,
    )  # fmt: skip
    (source,), _ = build_sources(cfg, seed=0)
    assert source.synth.min_instances == 5 and source.synth.max_instances == 6
    assert source.synth.num_frames == 6 and source.synth.min_size == 32.0  # the rest: val's
    counts = {len(render_video(seed, source.synth)[1]) for seed in range(12)}
    assert counts == {5, 6}
    assert all(c.frames.shape[0] == 2 for c in (source[0], source[1]))
    default = build_sources(DataConfig(), seed=0)[0][0]
    assert (default.synth.min_instances, default.synth.max_instances) == (1, 4)
    with pytest.raises(ValueError, match="synth_min_instances"):
        build_sources(DataConfig(synth_min_instances=5, synth_max_instances=2), seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        build_sources(DataConfig(synth_max_instances=-1), seed=0)
