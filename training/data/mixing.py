"""Per-iteration choice between the COCO pseudo-video source and the real-video source.

The official ``CombinedDataLoader`` (``ctvis/data/combined_loader.py`` of
https://github.com/KainingYing/CTVIS) picks a loader with probability proportional to
``DATASET_RATIO``, and because of a shared buffer every per-GPU batch of 2 clips comes from the
single loader chosen for it. We reproduce that as: per group
(GPU) and iteration, choose a source with probability ``weight / sum(weights)``, then take
``clips_per_group`` clips from it. Each source is read as an infinite stream of shuffled passes
(detectron2 ``TrainingSampler``; aspect-ratio grouping is not reproduced).

Everything is a pure function of ``(seed, iteration)``: the sampler can be restarted at any
iteration and yields the same indices. The indices handed to a source are *virtual*
(``pass * len(source) + item``): datasets read item ``index % len`` and seed their
augmentation with the full index, so every pass gets fresh clips.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch.utils.data

from training.data.batch import Clip

__all__ = [
    "DATASET_RATIOS",
    "MixedClipDataset",
    "MixedClipSampler",
    "MixingConfig",
    "choose_sources",
    "coco_probability",
    "stream_index",
]

DATASET_RATIOS: dict[str, tuple[float, float]] = {
    "ytvis19": (1.0, 1.5),
    "ytvis21": (1.0, 0.8),
    "ovis": (1.0, 0.75),
}
"""``DATASETS.DATASET_RATIO`` of the released configs, (COCO pseudo videos, real videos)."""


def coco_probability(target: str) -> float:
    """P(a batch comes from COCO): 0.40 (YTVIS19), 0.556 (YTVIS21), 0.571 (OVIS)."""
    coco, real = DATASET_RATIOS[target]
    return coco / (coco + real)


@dataclass(frozen=True)
class MixingConfig:
    """How an iteration's clips are drawn.

    Attributes:
        weights: relative probability of each source (``DATASET_RATIO``), in source order;
            e.g. (1.0, 1.5) for (COCO, YTVIS19).
        num_groups: groups per iteration (GPUs in the official setup).
        clips_per_group: clips per group, all from one source (2 in the official setup).
    """

    weights: tuple[float, ...] = DATASET_RATIOS["ytvis19"]
    num_groups: int = 1
    clips_per_group: int = 2


def choose_sources(iteration: int, cfg: MixingConfig, seed: int) -> list[int]:
    """The source of each group of ``iteration``.

    Returns:
        ``num_groups`` source indices, drawn with ``default_rng((seed, iteration))``.
    """
    weights = np.asarray(cfg.weights, dtype=np.float64)
    if weights.ndim != 1 or weights.size == 0 or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"bad source weights {cfg.weights}")
    cumulative = np.cumsum(weights / weights.sum())
    draws = np.random.default_rng((seed, iteration)).random(cfg.num_groups)
    picks = np.searchsorted(cumulative, draws, side="right")
    return [int(min(p, weights.size - 1)) for p in picks]


def stream_index(position: int, size: int, source: int, seed: int) -> int:
    """The virtual index at ``position`` of a source's infinite shuffled stream.

    Pass ``e = position // size`` is ``default_rng((seed, source, e)).permutation(size)``.

    Returns:
        ``e * size + permutation[position % size]``.
    """
    epoch, offset = divmod(position, size)
    return epoch * size + int(_permutation(size, source, epoch, seed)[offset])


def _permutation(size: int, source: int, epoch: int, seed: int) -> np.ndarray:
    if size <= 0:
        raise ValueError("cannot draw from an empty source")
    return np.random.default_rng((seed, source, epoch)).permutation(size)


class MixedClipSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Infinite batch sampler: per iteration a list of (source, virtual index) pairs.

    Use with :class:`MixedClipDataset` as ``DataLoader(dataset, batch_sampler=sampler,
    collate_fn=list)``. The batch of an iteration is ``num_groups * clips_per_group`` pairs,
    group-major.
    """

    def __init__(
        self, sizes: Sequence[int], cfg: MixingConfig, seed: int = 0, start_iteration: int = 0
    ) -> None:
        """Set up the streams.

        Args:
            sizes: number of items of each source (same order as ``cfg.weights``).
            cfg: mixing parameters.
            seed: base seed.
            start_iteration: first iteration to yield (resuming replays the earlier choices).
        """
        if len(sizes) != len(cfg.weights):
            raise ValueError(f"{len(sizes)} sources but {len(cfg.weights)} weights")
        self.sizes = tuple(int(s) for s in sizes)
        self.cfg = cfg
        self.seed = seed
        self.start_iteration = start_iteration

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        positions = [0] * len(self.sizes)
        passes: dict[int, tuple[int, np.ndarray]] = {}  # source -> (pass, its permutation)
        iteration = 0
        while True:
            batch = []
            for source in choose_sources(iteration, self.cfg, self.seed):
                size = self.sizes[source]
                for _ in range(self.cfg.clips_per_group):
                    epoch, offset = divmod(positions[source], size)
                    if passes.get(source, (-1,))[0] != epoch:
                        passes[source] = (epoch, _permutation(size, source, epoch, self.seed))
                    positions[source] += 1
                    batch.append((source, epoch * size + int(passes[source][1][offset])))
            if iteration >= self.start_iteration:
                yield batch
            iteration += 1


class MixedClipDataset(torch.utils.data.Dataset[Clip]):
    """Routes ``(source, index)`` pairs to one of several clip datasets."""

    def __init__(self, sources: Sequence[torch.utils.data.Dataset[Clip]]) -> None:
        """Keep the sources.

        Args:
            sources: clip datasets (e.g. ``[PseudoVideoDataset, YtvisClipDataset]``), in the
                order of ``MixingConfig.weights``.
        """
        self.sources = list(sources)

    def __getitem__(self, key: tuple[int, int]) -> Clip:  # type: ignore[override]
        source, index = key
        return self.sources[source][index]
