"""Source mixing: P(COCO) per group, whole groups from one source, deterministic streams."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch.utils.data

from training.data.batch import Clip
from training.data.mixing import (
    DATASET_RATIOS,
    MixedClipDataset,
    MixedClipSampler,
    MixingConfig,
    choose_sources,
    coco_probability,
    stream_index,
)


def test_coco_probability_matches_the_config_table() -> None:
    assert coco_probability("ytvis19") == pytest.approx(0.40)
    assert coco_probability("ytvis21") == pytest.approx(0.556, abs=5e-4)
    assert coco_probability("ovis") == pytest.approx(0.571, abs=5e-4)


@pytest.mark.parametrize("target", sorted(DATASET_RATIOS))
def test_source_frequency_is_p_coco(target: str) -> None:
    cfg = MixingConfig(weights=DATASET_RATIOS[target], num_groups=2)
    picks = np.array([choose_sources(i, cfg, seed=0) for i in range(3000)])
    assert picks.shape == (3000, 2)
    assert abs((picks == 0).mean() - coco_probability(target)) < 0.03


def test_choices_are_a_function_of_seed_and_iteration() -> None:
    cfg = MixingConfig(num_groups=4)
    assert choose_sources(17, cfg, 5) == choose_sources(17, cfg, 5)
    runs = {tuple(choose_sources(i, cfg, 5)) for i in range(50)}
    assert len(runs) > 5
    other = [choose_sources(i, cfg, 6) for i in range(50)]
    assert other != [choose_sources(i, cfg, 5) for i in range(50)]
    with pytest.raises(ValueError):
        choose_sources(0, MixingConfig(weights=(0.0, 0.0)), 0)


def test_streams_visit_every_item_once_per_pass() -> None:
    size = 7
    first = [stream_index(p, size, 1, 0) for p in range(size)]
    second = [stream_index(p, size, 1, 0) for p in range(size, 2 * size)]
    assert sorted(first) == list(range(size))
    assert sorted(second) == list(range(size, 2 * size))
    assert [i % size for i in first] != [i % size for i in second]  # reshuffled each pass


def test_sampler_groups_come_from_one_source_and_resume_exactly() -> None:
    cfg = MixingConfig(weights=(1.0, 1.5), num_groups=3, clips_per_group=2)
    sampler = MixedClipSampler([5, 11], cfg, seed=2)
    batches = list(itertools.islice(iter(sampler), 40))
    for i, batch in enumerate(batches):
        assert len(batch) == 6
        sources = choose_sources(i, cfg, 2)
        for g in range(3):
            assert [s for s, _ in batch[2 * g : 2 * g + 2]] == [sources[g]] * 2
    for source, size in ((0, 5), (1, 11)):
        drawn = [idx for batch in batches for s, idx in batch if s == source]
        assert drawn == [stream_index(p, size, source, 2) for p in range(len(drawn))]
    resumed = list(itertools.islice(iter(MixedClipSampler([5, 11], cfg, 2, 25)), 15))
    assert resumed == batches[25:]
    assert batches == list(itertools.islice(iter(sampler), 40))


class _Fake(torch.utils.data.Dataset[Clip]):
    def __init__(self, name: str, size: int) -> None:
        self.name, self.size = name, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Clip:
        z = np.zeros((2, 0), np.int64)
        frames = np.zeros((2, 4, 4, 3), np.uint8)
        return Clip(frames, z, z, np.zeros((2, 0, 4, 4), bool), f"{self.name}:{index}")


def test_dataloader_integration() -> None:
    coco, video = _Fake("coco", 4), _Fake("video", 3)
    cfg = MixingConfig(weights=(1.0, 1.5), clips_per_group=2)
    sampler = MixedClipSampler([len(coco), len(video)], cfg, seed=0)
    loader = torch.utils.data.DataLoader(
        MixedClipDataset([coco, video]), batch_sampler=sampler, collate_fn=list
    )
    for batch, keys in zip(loader, itertools.islice(iter(sampler), 10), strict=False):
        names = ["coco", "video"]
        assert [c.source for c in batch] == [f"{names[s]}:{i}" for s, i in keys]
