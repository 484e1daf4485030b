"""Data plumbing of the training loop: clip sources, per-rank batches, exact resume position.

The batch of iteration ``i`` is a pure function of ``(seed, i)`` (``training.data.mixing``): the
sampler is restarted at the resume iteration, and datasets seed their augmentation with the
item index, so resuming needs no saved data state beyond the iteration counter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch.utils.data

from training.config import DataConfig
from training.data.augment import AugmentConfig
from training.data.batch import Clip
from training.data.coco import CocoInstances
from training.data.mixing import MixedClipDataset, MixedClipSampler, MixingConfig
from training.data.pseudo_video import PseudoVideoConfig, PseudoVideoDataset
from training.data.synthetic import config_for
from training.data.synthetic_dataset import SyntheticClipDataset
from training.data.ytvis_dataset import ClipSamplingConfig, YtvisClipDataset

__all__ = [
    "RankBatchSampler",
    "build_clip_loader",
    "build_sources",
    "data_config_at",
    "pseudo_video_config",
]


def data_config_at(cfg: DataConfig, iteration: int) -> DataConfig:
    """The data settings that iteration ``iteration`` (0-based) trains with.

    From ``cfg.late_from`` on (when it is > 0), the late stage's resize settings replace
    ``min_size_train`` / ``max_size_train`` (``late_max_size_train`` 0 keeps the early one).
    """
    if cfg.late_from <= 0 or iteration < cfg.late_from:
        return cfg
    return dataclasses.replace(
        cfg,
        min_size_train=cfg.late_min_size_train,
        max_size_train=cfg.late_max_size_train or cfg.max_size_train,
    )


def _augment(cfg: DataConfig) -> AugmentConfig:
    return AugmentConfig(
        crop_prob=cfg.crop_prob,
        crop_range=cfg.crop_size,
        min_sizes=cfg.min_size_train,
        max_size=cfg.max_size_train,
        flip_prob=cfg.flip_prob,
    )


def pseudo_video_config(cfg: DataConfig) -> PseudoVideoConfig:
    """The pseudo-video generator settings of ``cfg`` (``data.pseudo`` + the clip's T, crop
    size, final resize and flip, which pseudo clips share with real ones as in the official
    ``INPUT.PSEUDO`` section)."""
    p = cfg.pseudo
    return PseudoVideoConfig(
        num_frames=cfg.clip_frames,
        crop_prob=p.crop_prob,
        crop_short_sizes=p.crop_short_sizes,
        crop_max_size=p.crop_max_size,
        crop_range=cfg.crop_size,
        crop_shift=p.crop_shift,
        crop_zoom=p.crop_zoom,
        zoom_range=p.zoom_range,
        min_sizes=cfg.min_size_train,
        max_size=cfg.max_size_train,
        flip_prob=cfg.flip_prob,
        max_angle=p.max_angle if p.rotation else 0.0,
        copy_paste_prob=p.copy_paste_prob,
        max_pasted=p.max_pasted,
    )


def _coco_source(cfg: DataConfig, seed: int) -> torch.utils.data.Dataset[Clip]:
    coco = CocoInstances(cfg.coco_json, cfg.coco_images, target=cfg.coco_target or None)
    return PseudoVideoDataset(coco, pseudo_video_config(cfg), seed)


def build_sources(
    cfg: DataConfig, seed: int
) -> tuple[list[torch.utils.data.Dataset[Clip]], tuple[float, ...]]:
    """Clip datasets and their mixing weights for ``cfg``.

    Returns:
        (sources, weights): ``synthetic`` -> one rendered source; ``ytvis`` -> the real videos,
        preceded by COCO pseudo videos when ``cfg.coco_prob > 0``; ``coco`` -> COCO pseudo
        videos only. With ``cfg.image_mode`` the video sources yield pseudo clips of one frame.
    """
    sampling = ClipSamplingConfig(num_frames=cfg.clip_frames, frame_range=cfg.frame_range)
    augment = _augment(cfg)
    image_mode = pseudo_video_config(cfg) if cfg.image_mode else None
    if cfg.kind == "coco":
        return [_coco_source(cfg, seed)], (1.0,)
    if cfg.kind == "synthetic":
        counts = {
            "min_instances": cfg.synth_min_instances,
            "max_instances": cfg.synth_max_instances,
        }
        if min(counts.values()) < 0:
            raise ValueError("data.synth_min_instances / synth_max_instances must be >= 0")
        synth = config_for(
            cfg.synth_split,
            height=cfg.synth_height,
            width=cfg.synth_width,
            num_frames=cfg.synth_frames,
            **{k: v for k, v in counts.items() if v > 0},
        )
        if synth.min_instances > synth.max_instances:
            raise ValueError(
                f"data.synth_min_instances ({synth.min_instances}) exceeds "
                f"data.synth_max_instances ({synth.max_instances})"
            )
        source = SyntheticClipDataset(
            cfg.synth_split,
            cfg.synth_videos,
            cfg.synth_seed,
            sampling,
            augment,
            synth,
            image_mode=image_mode,
        )
        return [source], (1.0,)
    real = YtvisClipDataset(
        cfg.ytvis_json, cfg.ytvis_frames, sampling, augment, seed, image_mode=image_mode
    )
    if cfg.coco_prob <= 0.0:
        return [real], (1.0,)
    return [_coco_source(cfg, seed), real], (cfg.coco_prob, 1.0 - cfg.coco_prob)


class RankBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """This rank's group of every iteration of a ``MixedClipSampler``."""

    def __init__(self, sampler: MixedClipSampler, rank: int, clips_per_group: int) -> None:
        """Args: sampler: global sampler; rank: group to take; clips_per_group: its size."""
        self.sampler = sampler
        self.rank = rank
        self.clips = clips_per_group

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        lo = self.rank * self.clips
        for batch in self.sampler:
            yield batch[lo : lo + self.clips]


def build_clip_loader(
    cfg: DataConfig, seed: int, rank: int, world_size: int, start_iteration: int
) -> Iterator[list[Clip]]:
    """Infinite iterator over this rank's per-iteration list of clips.

    Args:
        cfg: data settings.
        seed: base seed (identical on every rank).
        rank: this process's rank (its group of each iteration).
        world_size: number of ranks (groups per iteration).
        start_iteration: first data iteration to yield (micro-batches consumed so far).
    """
    sources, weights = build_sources(cfg, seed)
    mixing = MixingConfig(
        weights=weights, num_groups=world_size, clips_per_group=cfg.clips_per_batch
    )
    sizes = [len(s) for s in sources]  # type: ignore[arg-type]  # map-style datasets
    sampler = MixedClipSampler(sizes, mixing, seed, start_iteration)
    loader = torch.utils.data.DataLoader(
        MixedClipDataset(sources),
        batch_sampler=RankBatchSampler(sampler, rank, cfg.clips_per_batch),
        collate_fn=list,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        # its own generator: creating the iterator must not draw from the global RNG, or a
        # resumed run would diverge from the uninterrupted one
        generator=torch.Generator().manual_seed(seed),
    )
    return iter(loader)
