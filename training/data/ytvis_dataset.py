"""YouTube-VIS / OVIS annotations + frame folders -> a map-style dataset of training ``Clip``s.

Clip sampling and instance slots follow the official ``YTVISDatasetMapper.prepare_video``
(``ctvis/data/vis/dataset_mapper.py`` of https://github.com/KainingYing/CTVIS):

* a reference frame ``ref ~ U[0, L)``; ``T - 1`` more frames drawn **with replacement** from
  ``[max(0, ref - R), min(L, ref + R + 1))`` minus ``ref``; all T sorted ascending, so
  duplicates are possible (L = 1, which crashes the official code, repeats the only frame);
* slots = the union of the annotation ids present in the selected frames (in ascending id
  order; the official code enumerates a Python ``set``); crowd annotations keep their slot but
  are never filled, as in the official code;
* a slot whose instance is absent from a frame is a dummy there: class K (no-object), id -1,
  empty mask; a slot whose mask is empty after augmentation keeps its class but gets id -1;
* dataset category ids map to contiguous labels 0..K-1 in ascending id order
  (``dataset id - 1`` for YTVIS19/21 and OVIS, whose ids are 1..K).

``image_mode`` (the official ``INPUT.IMAGE_MODE``, off in every released config) instead builds a
pseudo clip from one random frame with :func:`training.data.pseudo_video.generate_pseudo_clip`;
slot = index of the (non-crowd) annotation present in that frame.

Randomness comes from ``numpy.random.default_rng((seed, index))``: item ``index`` reads video
``index % num_videos``, so a sampler that hands out ever-growing indices gets fresh clips of
every video while each (seed, index) pair stays reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.utils.data
from PIL import Image

from model.rle import decode as decode_rle
from training.data.augment import AugmentConfig, augment_clip, boxes_from_masks
from training.data.batch import Clip
from training.data.coco import CocoImage
from training.data.pseudo_video import PseudoVideoConfig, draw_donor, generate_pseudo_clip
from training.ytvis_json import GroundTruth, Track, Video, load_ground_truth

__all__ = [
    "ClipSamplingConfig",
    "VideoRecord",
    "YtvisClipDataset",
    "assemble_clip",
    "contiguous_category_map",
    "sample_frame_indices",
    "select_slots",
]


@dataclass(frozen=True)
class ClipSamplingConfig:
    """Real-video clip sampling (``INPUT.SAMPLING_FRAME_NUM`` / ``SAMPLING_FRAME_RANGE``).

    Attributes:
        num_frames: T, frames per clip (10 for the R50 configs).
        frame_range: R, the half-width of the window around the reference frame (20).
    """

    num_frames: int = 10
    frame_range: int = 20


@dataclass(frozen=True)
class VideoRecord:
    """One video with its ground-truth tracks.

    Attributes:
        video: the video's size and frame file names.
        tracks: the video's annotations (crowd ones included), in file order.
    """

    video: Video
    tracks: tuple[Track, ...]


def sample_frame_indices(
    length: int, cfg: ClipSamplingConfig, rng: np.random.Generator
) -> np.ndarray:
    """Draw the frame indices of one clip (official ``prepare_video`` sampling).

    Args:
        length: number of frames L of the video (>= 1).
        cfg: T and R.
        rng: the clip's random generator (draws: ref, then T - 1 choices).

    Returns:
        T int64 frame indices in [0, L), sorted ascending, possibly repeated, containing ref.
    """
    if length < 1:
        raise ValueError("cannot sample a clip from an empty video")
    ref = int(rng.integers(length))
    start, end = max(0, ref - cfg.frame_range), min(length, ref + cfg.frame_range + 1)
    window = np.array([i for i in range(start, end) if i != ref], dtype=np.int64)
    if window.size == 0:  # L == 1 (or R == 0): the official code crashes; repeat ref
        window = np.array([ref], dtype=np.int64)
    others = rng.choice(window, size=cfg.num_frames - 1, replace=True)
    return np.sort(np.concatenate([others, [ref]]).astype(np.int64))


def select_slots(present: np.ndarray, frame_indices: np.ndarray) -> np.ndarray:
    """Indices of the instances annotated in at least one selected frame.

    Args:
        present: NxL bool, instance n has an annotation in frame l.
        frame_indices: T selected frame indices.

    Returns:
        S int64 instance indices, ascending.
    """
    if present.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(present[:, frame_indices].any(axis=1)).astype(np.int64)


def assemble_clip(
    frames: Sequence[np.ndarray],
    slot_masks: Sequence[Sequence[np.ndarray | None]],
    slot_ids: Sequence[int],
    slot_labels: Sequence[int],
    num_classes: int,
    augment: AugmentConfig | None,
    rng: np.random.Generator,
    source: str = "",
) -> Clip:
    """Build a ``Clip`` from T frames and per-frame, per-slot masks (None = absent).

    Args:
        frames: T HxWx3 uint8 RGB frames.
        slot_masks: T lists of S masks (HxW bool, or None where the slot is a dummy).
        slot_ids: S instance ids (>= 0).
        slot_labels: S contiguous class labels in [0, num_classes).
        num_classes: K; dummies get label K.
        augment: clip-consistent augmentation, or None to keep the frames as they are.
        rng: the clip's random generator (used only by ``augment``).
        source: provenance string stored in the clip.

    Returns:
        The clip; ids are -1 for dummies and for masks empty after augmentation.
    """
    t_len, slots = len(frames), len(slot_ids)
    height, width = frames[0].shape[:2]
    masks = np.zeros((t_len, slots, height, width), dtype=bool)
    present = np.zeros((t_len, slots), dtype=bool)
    for t, row in enumerate(slot_masks):
        for s, mask in enumerate(row):
            if mask is not None:
                masks[t, s] = mask
                present[t, s] = True
    if augment is not None:
        out_frames, masks = augment_clip(frames, masks, augment, rng)
    else:
        out_frames = np.stack([np.asarray(f, dtype=np.uint8) for f in frames])
    ids_row = np.asarray(slot_ids, dtype=np.int64).reshape(1, slots)
    labels_row = np.asarray(slot_labels, dtype=np.int64).reshape(1, slots)
    labels = np.where(present, labels_row, num_classes).astype(np.int64)
    ids = np.where(present, ids_row, -1).astype(np.int64)
    ids[~masks.any(axis=(2, 3))] = -1
    return Clip(
        frames=out_frames,
        labels=labels,
        ids=ids,
        masks=masks,
        source=source,
        boxes=boxes_from_masks(masks),
    )


def contiguous_category_map(category_ids: Sequence[int]) -> dict[int, int]:
    """Dataset category id -> contiguous label, in ascending id order."""
    return {cid: k for k, cid in enumerate(sorted(set(int(c) for c in category_ids)))}


def load_rgb(path: Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class YtvisClipDataset(torch.utils.data.Dataset[Clip]):
    """Map-style dataset of augmented T-frame clips from a YouTube-VIS / OVIS split.

    Item ``index`` (any non-negative int) samples a clip of video ``index % len(self)`` with
    ``numpy.random.default_rng((seed, index))``.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_root: str | Path,
        sampling: ClipSamplingConfig = ClipSamplingConfig(),
        augment: AugmentConfig | None = AugmentConfig(),
        seed: int = 0,
        category_map: dict[int, int] | None = None,
        image_mode: PseudoVideoConfig | None = None,
    ) -> None:
        """Read the annotations (frames are read lazily).

        Args:
            annotation_file: YouTube-VIS format json (``videos``, ``annotations``, ``categories``).
            image_root: folder the videos' ``file_names`` are relative to (``JPEGImages/``).
            sampling: T and R.
            augment: clip augmentation, or None for unaugmented clips.
            seed: base seed of every item's generator.
            category_map: dataset category id -> contiguous label; default: ascending ids of
                the file's ``categories``.
            image_mode: pseudo-video settings to build clips from single frames instead.
        """
        gt = load_ground_truth(annotation_file)
        self.image_root = Path(image_root)
        self.sampling = sampling
        self.augment = augment
        self.seed = seed
        self.image_mode = image_mode
        self.category_map = category_map or contiguous_category_map(list(gt.categories))
        self.num_classes = len(set(self.category_map.values()))
        self.records = _group_tracks(gt)
        for record in self.records:
            for track in record.tracks:
                if track.category_id not in self.category_map:
                    raise ValueError(
                        f"annotation {track.id}: category {track.category_id} has no label"
                    )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Clip:
        if index < 0:
            raise IndexError(f"negative clip index {index}")
        rng = np.random.default_rng((self.seed, index))
        if self.image_mode is not None:
            return self.image_clip(index % len(self.records), rng)
        return self.sample_clip(index % len(self.records), rng)

    def frame_instances(self, video_index: int, frame: int) -> CocoImage:
        """Frame ``frame`` of video ``video_index`` with its annotated (non-crowd) instances."""
        record = self.records[video_index]
        image = load_rgb(self.image_root / record.video.file_names[frame])
        found = [(t, _frame_mask(t, frame)) for t in record.tracks]
        present = [(t, m) for t, m in found if m is not None]
        masks = np.zeros((len(present), *image.shape[:2]), dtype=bool)
        for k, (_, mask) in enumerate(present):
            masks[k] = mask
        labels = np.array([self.category_map[t.category_id] for t, _ in present], np.int64)
        return CocoImage(image, masks, labels, record.video.id)

    def _random_frame(self, rng: np.random.Generator) -> CocoImage:
        """A uniformly drawn frame of a uniformly drawn video (a copy&paste donor)."""
        video_index = int(rng.integers(len(self.records)))
        frame = int(rng.integers(self.records[video_index].video.length))
        return self.frame_instances(video_index, frame)

    def image_clip(self, video_index: int, rng: np.random.Generator) -> Clip:
        """A pseudo clip from one uniformly drawn frame of video ``video_index`` (image mode);
        with ``copy_paste_prob`` > 0, instances of a random frame of the split are pasted."""
        assert self.image_mode is not None
        record = self.records[video_index]
        frame = int(rng.integers(record.video.length))
        item = self.frame_instances(video_index, frame)
        donor = draw_donor(self.image_mode, rng, self._random_frame)
        return generate_pseudo_clip(
            item.image,
            item.masks,
            item.labels,
            self.image_mode,
            rng,
            donor=donor,
            source=f"ytvis:{record.video.id}:{frame}",
        )

    def sample_clip(self, video_index: int, rng: np.random.Generator) -> Clip:
        """Sample and augment one clip of video ``video_index`` with ``rng``."""
        record = self.records[video_index]
        frame_indices = sample_frame_indices(record.video.length, self.sampling, rng)
        present = np.array(
            [[seg is not None for seg in track.segmentations] for track in record.tracks],
            dtype=bool,
        ).reshape(len(record.tracks), record.video.length)
        slots = [record.tracks[i] for i in select_slots(present, frame_indices)]
        slots.sort(key=lambda track: track.id)
        cache: dict[int, np.ndarray] = {}
        frames, slot_masks = [], []
        for f in frame_indices.tolist():
            if f not in cache:
                cache[f] = load_rgb(self.image_root / record.video.file_names[f])
            frames.append(cache[f])
            slot_masks.append([_frame_mask(track, f) for track in slots])
        return assemble_clip(
            frames,
            slot_masks,
            [track.id for track in slots],
            [self.category_map[track.category_id] for track in slots],
            self.num_classes,
            self.augment,
            rng,
            source=f"ytvis:{record.video.id}",
        )


def _frame_mask(track: Track, frame: int) -> np.ndarray | None:
    """The track's HxW bool mask in ``frame``; None if absent or a crowd region."""
    rle = track.segmentations[frame]
    if rle is None or track.iscrowd:
        return None
    return decode_rle(rle)


def _group_tracks(gt: GroundTruth) -> list[VideoRecord]:
    by_video: dict[int, list[Track]] = {vid: [] for vid in gt.videos}
    for track in gt.tracks:
        by_video[track.video_id].append(track)
    return [VideoRecord(video=gt.videos[vid], tracks=tuple(by_video[vid])) for vid in gt.videos]
