"""Training clips from the procedural synthetic benchmark (the embedded default training data).

Two equivalent ways to read it:

* :class:`SyntheticClipDataset` renders videos on the fly with
  :func:`training.data.synthetic.render_video`; video ``v`` of ``(split, seed)`` uses the render
  seed ``seed * 100_003 + v``, exactly as :func:`training.data.synthetic.write_dataset` does;
* :func:`synthetic_directory_dataset` reads a directory written by ``write_dataset`` (YouTube-VIS
  layout) through :class:`training.data.ytvis_dataset.YtvisClipDataset`.

Both sample clips and slots with the real-video rules of :mod:`training.data.ytvis_dataset` and
the same ``default_rng((seed, index))`` per item, so for the same seed they yield the same
frames, masks and labels; only the id values differ (track index + 1 per video on the fly, the
file's annotation ids from a directory). With ``image_mode`` both build pseudo clips from one
frame (the official ``INPUT.IMAGE_MODE``), so pseudo videos can be studied on the CPU benchmark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data

from training.data.augment import AugmentConfig
from training.data.batch import Clip
from training.data.coco import CocoImage
from training.data.pseudo_video import PseudoVideoConfig, draw_donor, generate_pseudo_clip
from training.data.synthetic import CATEGORIES, SPLITS, SynthConfig, render_video
from training.data.ytvis_dataset import (
    ClipSamplingConfig,
    YtvisClipDataset,
    assemble_clip,
    sample_frame_indices,
    select_slots,
)

__all__ = [
    "SYNTHETIC_AUGMENT",
    "SyntheticClipDataset",
    "synthetic_directory_dataset",
    "video_seed",
]

SYNTHETIC_AUGMENT = AugmentConfig(
    crop_range=(128, 192),
    min_sizes=(160, 176, 192, 208, 224, 240, 256),
    max_size=384,
)
"""The official crop/resize recipe scaled from ~480p videos to the 192x256 synthetic frames
(ours: crop (384, 600) -> (128, 192), short side 320..640 -> 160..256, long side 768 -> 384)."""


def video_seed(seed: int, video: int) -> int:
    """Render seed of video ``video`` of a dataset seeded ``seed`` (as ``write_dataset``)."""
    return seed * 100_003 + video


class SyntheticClipDataset(torch.utils.data.Dataset[Clip]):
    """Map-style dataset of clips rendered on the fly from the synthetic benchmark.

    Item ``index`` (any non-negative int) renders video ``index % num_videos`` and samples a clip
    from it with ``numpy.random.default_rng((seed, index))``.
    """

    num_classes = len(CATEGORIES)

    def __init__(
        self,
        split: str = "val",
        num_videos: int = 64,
        seed: int = 0,
        sampling: ClipSamplingConfig = ClipSamplingConfig(),
        augment: AugmentConfig | None = SYNTHETIC_AUGMENT,
        synth: SynthConfig | None = None,
        cache_videos: int = 256,
        image_mode: PseudoVideoConfig | None = None,
    ) -> None:
        """Describe the videos (nothing is rendered yet).

        Args:
            split: a key of :data:`training.data.synthetic.SPLITS` ("val" or "hard").
            num_videos: distinct videos; indices wrap around.
            seed: seed of the videos and of the clip sampling.
            sampling: T and R of the clip sampler.
            augment: clip augmentation, or None.
            synth: generator settings overriding the split's (e.g. fewer frames).
            cache_videos: when ``num_videos`` is at most this, every rendered video is kept
                in memory for the dataset's lifetime (rendering is most of the data cost, and
                a clip re-uses 4-10 of 24 frames); with more videos clips rarely revisit one
                (generalisation wants many distinct videos, see ``docs/experiments.md``), so
                every clip renders afresh, as it does with 0. Each worker process holds its
                own cache.
            image_mode: pseudo-video settings to build clips from single frames instead.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLITS)}")
        if num_videos < 1:
            raise ValueError("num_videos must be positive")
        self.synth = synth or SPLITS[split]
        self.num_videos = num_videos
        self.seed = seed
        self.sampling = sampling
        self.augment = augment
        self.image_mode = image_mode
        self._cache: dict[int, tuple[list[np.ndarray], list[dict[str, Any]]]] | None = (
            {} if num_videos <= cache_videos else None
        )

    def _render(
        self, video: int, frame_indices: np.ndarray
    ) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
        if self._cache is None:  # a fresh video: composite only the clip's frames
            draw = {int(f) for f in frame_indices}
            return render_video(video_seed(self.seed, video), self.synth, draw_frames=draw)
        if video not in self._cache:
            self._cache[video] = render_video(video_seed(self.seed, video), self.synth)
        return self._cache[video]

    def __len__(self) -> int:
        return self.num_videos

    def __getitem__(self, index: int) -> Clip:
        if index < 0:
            raise IndexError(f"negative clip index {index}")
        rng = np.random.default_rng((self.seed, index))
        video = index % self.num_videos
        if self.image_mode is not None:
            return self.image_clip(video, rng)
        frame_indices = sample_frame_indices(self.synth.num_frames, self.sampling, rng)
        frames, tracks = self._render(video, frame_indices)
        present = np.array(
            [[m is not None for m in track["masks"]] for track in tracks], dtype=bool
        ).reshape(len(tracks), len(frames))
        slots = select_slots(present, frame_indices).tolist()
        return assemble_clip(
            [frames[f] for f in frame_indices],
            [[tracks[s]["masks"][f] for s in slots] for f in frame_indices],
            [s + 1 for s in slots],
            [int(tracks[s]["category"]) for s in slots],
            self.num_classes,
            self.augment,
            rng,
            source=f"synthetic:{video + 1}",
        )

    def frame_instances(self, video: int, frame: int) -> CocoImage:
        """Frame ``frame`` of video ``video`` with the masks and labels of its visible shapes."""
        frames, tracks = self._render(video, np.array([frame]))
        present = [t for t in tracks if t["masks"][frame] is not None]
        shape = (len(present), self.synth.height, self.synth.width)
        masks = np.stack([t["masks"][frame] for t in present]) if present else np.zeros(shape, bool)
        labels = np.array([int(t["category"]) for t in present], dtype=np.int64)
        return CocoImage(frames[frame], masks, labels, video + 1)

    def image_clip(self, video: int, rng: np.random.Generator) -> Clip:
        """A pseudo clip from one uniformly drawn frame of ``video`` (image mode); with
        ``copy_paste_prob`` > 0 the shapes of a random frame of another video are pasted."""
        assert self.image_mode is not None
        frame = int(rng.integers(self.synth.num_frames))
        item = self.frame_instances(video, frame)

        def donor_frame(r: np.random.Generator) -> CocoImage:
            other = int(r.integers(self.num_videos))
            return self.frame_instances(other, int(r.integers(self.synth.num_frames)))

        donor = draw_donor(self.image_mode, rng, donor_frame)
        return generate_pseudo_clip(
            item.image,
            item.masks,
            item.labels,
            self.image_mode,
            rng,
            donor=donor,
            source=f"synthetic:{video + 1}:{frame}",
        )


def synthetic_directory_dataset(
    root: str | Path,
    sampling: ClipSamplingConfig = ClipSamplingConfig(),
    augment: AugmentConfig | None = SYNTHETIC_AUGMENT,
    seed: int = 0,
    image_mode: PseudoVideoConfig | None = None,
) -> YtvisClipDataset:
    """Clips from a directory written by :func:`training.data.synthetic.write_dataset`.

    Args:
        root: folder holding ``instances.json`` and ``frames/``.
        sampling: T and R of the clip sampler.
        augment: clip augmentation, or None.
        seed: base seed of the clip sampling.
        image_mode: pseudo-video settings to build clips from single frames instead.

    Returns:
        A YouTube-VIS clip dataset over the written videos (labels = category id - 1).
    """
    root = Path(root)
    return YtvisClipDataset(
        root / "instances.json",
        root / "frames",
        sampling=sampling,
        augment=augment,
        seed=seed,
        image_mode=image_mode,
    )
