"""The training batch contract between ``training/data/*`` and the trainer.

A dataset yields ``Clip`` values (one video clip, T frames, already augmented, uint8);
``collate_clips`` turns a list of clips into a ``ClipBatch`` (normalised, padded tensors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.config import PreprocessConfig
from model.preprocess import normalize_and_pad


@dataclass(frozen=True)
class Clip:
    """One augmented training clip with S instance slots shared by all frames.

    Attributes:
        frames: T uint8 HxWx3 RGB frames (all the same size after augmentation).
        labels: TxS int64 contiguous class per slot and frame; ``num_classes`` (no-object)
            where the slot's instance is absent in that frame.
        ids: TxS int64 instance identity per slot (the same value in every frame where it is
            present); -1 where absent or where its mask became empty after augmentation.
        masks: TxSxHxW bool instance masks (empty where absent).
        source: where the clip came from, e.g. ``"ytvis:12"`` or ``"coco:345"``.
        boxes: optional TxSx4 float32 XYXY pixel boxes recomputed from ``masks`` (exclusive
            right/bottom, as detectron2 ``BitMasks.get_bounding_boxes``; zeros where the mask
            is empty). Informational: Mask2Former's losses do not use boxes.
    """

    frames: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    masks: np.ndarray
    source: str = ""
    boxes: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_slots(self) -> int:
        return int(self.labels.shape[1])


@dataclass(frozen=True)
class ClipBatch:
    """B clips of T frames, flattened clip-major into one image batch of B*T frames.

    Attributes:
        pixels: (B*T)x3xHpxWp float32, normalised and zero-padded bottom/right (multiple of 32),
            ordered clip0 f0..fT-1, clip1 f0.. (as the official trainer does).
        labels: per clip a TxS int64 tensor (see ``Clip.labels``).
        ids: per clip a TxS int64 tensor (-1 = invalid slot in that frame).
        masks: per clip a TxSxHpxWp bool tensor zero-padded to the padded size.
        image_sizes: (h, w) of every frame before padding, clip-major.
        num_frames: T.
    """

    pixels: torch.Tensor
    labels: list[torch.Tensor]
    ids: list[torch.Tensor]
    masks: list[torch.Tensor]
    image_sizes: tuple[tuple[int, int], ...]
    num_frames: int

    @property
    def num_clips(self) -> int:
        return len(self.labels)


def collate_clips(clips: Sequence[Clip], cfg: PreprocessConfig) -> ClipBatch:
    """Normalise and pad the frames of all clips together; pad the masks to match."""
    if not clips:
        raise ValueError("collate_clips needs at least one clip")
    t = clips[0].num_frames
    if any(c.num_frames != t for c in clips):
        raise ValueError("all clips of a batch must have the same number of frames")
    images = [
        torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1)))
        for c in clips
        for f in c.frames
    ]
    pixels = normalize_and_pad(images, cfg)
    hp, wp = int(pixels.shape[-2]), int(pixels.shape[-1])
    masks = []
    for c in clips:
        m = torch.zeros((t, c.num_slots, hp, wp), dtype=torch.bool)
        h, w = c.masks.shape[-2:]
        m[..., :h, :w] = torch.from_numpy(np.asarray(c.masks, dtype=bool))
        masks.append(m)
    return ClipBatch(
        pixels=pixels,
        labels=[torch.from_numpy(np.asarray(c.labels, dtype=np.int64)) for c in clips],
        ids=[torch.from_numpy(np.asarray(c.ids, dtype=np.int64)) for c in clips],
        masks=masks,
        image_sizes=tuple((int(f.shape[0]), int(f.shape[1])) for c in clips for f in c.frames),
        num_frames=t,
    )
