"""Still image + instance masks -> a T-frame pseudo clip.

The paper (Ying et al., ICCV 2023, arXiv:2307.12616, Sec. 3.4) describes four generators; the
official code (``ctvis/data/pseudo_video/`` of https://github.com/KainingYing/CTVIS:
``augmentation.py``, ``rotate_coco_video_dataset_mapper.py``) implements rotation and
crop-shift. Four generators, composed in this order (all parameters drawn once per clip from the
caller's ``numpy.random.Generator``):

* **crop-shift** (official, default): with probability ``crop_prob`` resize the short side to
  ``s0 in crop_short_sizes`` (long side <= ``crop_max_size``), then crop a fixed-size window
  whose corner moves monotonically from a random start towards a random end corner
  (``round(p0 * u_i + p1 * (1 - u_i))`` with T sorted uniforms ``u_i``, order reversed with p 0.5);
* **crop-zoom** (``crop_zoom``; paper-inspired, unverified): the crop's size moves
  monotonically between a drawn size A and ``z * A``, ``z ~ U[zoom_range]``; every crop is
  resized to the same output size, so the camera zooms in or out. With ``crop_shift`` as well
  the zooming window also moves (``training.data.pseudo_motion``); with neither, the crop
  branch is a static crop;
* then, for every clip: short-side resize to ``s in min_sizes`` (long side <= ``max_size``,
  PIL bilinear / nearest for masks) and a horizontal flip with p ``flip_prob``;
* **rotation** (official, default): T angles ~ U[-max_angle, max_angle], sorted, reversed with
  p 0.5; one centre per clip at (U[0.4,0.6] W, U[0.4,0.6] H); counter-clockwise for positive
  angles, same canvas, bilinear with black fill (masks nearest);
* **copy&paste** (opt-in via a donor image; paper-inspired, unverified): 1..``max_pasted``
  instances of a donor image are cut out along their box, shrunk to at most half the frame,
  and pasted with a per-frame linearly moving offset; pasted pixels are removed from the masks
  underneath (occlusion) and pasted instances get new ids after the image's own.

Ids are annotation indices (0..N-1, the same in every frame) and become -1 in any frame where the
instance's mask is empty. Labels never change across frames. Masks are rasterised before the
geometric transforms (the official code transforms polygons instead), so they and the boxes
recomputed from them always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch.utils.data
from PIL import Image

from training.data.augment import (
    DEFAULT_MIN_SIZES,
    boxes_from_masks,
    map_planes,
    pack_masks,
    resize_image,
    resize_masks,
    scaled_shape,
    unpack_masks,
)
from training.data.batch import Clip
from training.data.coco import CocoImage, CocoInstances
from training.data.pseudo_motion import (
    crop_shift_windows,
    crop_windows,
    crop_zoom_windows,
    rotation_angles,
)

__all__ = [
    "PseudoPlan",
    "PseudoVideoConfig",
    "PseudoVideoDataset",
    "crop_shift_windows",
    "crop_windows",
    "crop_zoom_windows",
    "draw_donor",
    "generate_pseudo_clip",
    "paste_instances",
    "rotation_angles",
    "sample_plan",
]


@dataclass(frozen=True)
class PseudoVideoConfig:
    """Pseudo-video parameters; defaults are the released configs (crop-shift + rotation).

    Attributes:
        num_frames: T.
        crop_prob: probability of the crop branch per clip (0.5).
        crop_short_sizes: short side before cropping, one per clip ((400, 500, 600)).
        crop_max_size: long-side cap of that resize (1333).
        crop_range: (lo, hi) of the ``absolute_range`` crop size ((384, 600)).
        crop_shift: the crop window moves over the clip (official crop-shift).
        crop_zoom: the crop window's size changes over the clip (ours); combines with
            ``crop_shift``.
        zoom_range: crop-zoom only: range of the end/start crop scale ratio z, within (0, 1].
        min_sizes: short side of the final resize (``PSEUDO.MIN_SIZE_TRAIN``).
        max_size: long-side cap of the final resize (768).
        flip_prob: horizontal flip probability per clip.
        max_angle: rotation range in degrees (``ROTATE_ANGLE`` 15); 0 disables rotation.
        center_range: rotation centre range as a fraction of W and H.
        copy_paste_prob: probability that the dataset wrapper pastes a donor (0: off).
        max_pasted: at most this many donor instances are pasted.
    """

    num_frames: int = 10
    crop_prob: float = 0.5
    crop_short_sizes: tuple[int, ...] = (400, 500, 600)
    crop_max_size: int = 1333
    crop_range: tuple[int, int] = (384, 600)
    crop_shift: bool = True
    crop_zoom: bool = False
    zoom_range: tuple[float, float] = (0.6, 0.9)
    min_sizes: tuple[int, ...] = DEFAULT_MIN_SIZES
    max_size: int = 768
    flip_prob: float = 0.5
    max_angle: float = 15.0
    center_range: tuple[float, float] = (0.4, 0.6)
    copy_paste_prob: float = 0.0
    max_pasted: int = 3


@dataclass(frozen=True)
class PseudoPlan:
    """All random parameters of one pseudo clip.

    Attributes:
        pre_size: (h, w) the image is resized to before cropping; None without the crop branch.
        windows: Tx4 int64 (top, left, height, width) crops in the ``pre_size`` image, or None.
        out_size: (h, w) of every output frame.
        flip: horizontal flip (after resizing, before rotation).
        angles: T float64 rotation angles in degrees (counter-clockwise positive).
        center: (x, y) rotation centre in output pixels.
    """

    pre_size: tuple[int, int] | None
    windows: np.ndarray | None
    out_size: tuple[int, int]
    flip: bool
    angles: np.ndarray
    center: tuple[float, float]


def sample_plan(
    height: int, width: int, cfg: PseudoVideoConfig, rng: np.random.Generator
) -> PseudoPlan:
    """Draw every random parameter of one pseudo clip of an HxW image."""
    t = cfg.num_frames
    pre_size, windows = None, None
    crop_h, crop_w = height, width
    if rng.random() < cfg.crop_prob:
        s0 = int(cfg.crop_short_sizes[int(rng.integers(len(cfg.crop_short_sizes)))])
        pre_size = scaled_shape(height, width, s0, cfg.crop_max_size)
        zoom = cfg.zoom_range if cfg.crop_zoom else None
        windows = crop_windows(*pre_size, t, cfg.crop_range, rng, cfg.crop_shift, zoom)
        crop_h, crop_w = int(windows[:, 2].max()), int(windows[:, 3].max())
    short_side = int(cfg.min_sizes[int(rng.integers(len(cfg.min_sizes)))])
    out_size = scaled_shape(crop_h, crop_w, short_side, cfg.max_size)
    flip = bool(rng.random() < cfg.flip_prob)
    if cfg.max_angle > 0:
        angles = rotation_angles(t, cfg.max_angle, rng)
        lo, hi = cfg.center_range
        center = (rng.uniform(lo, hi) * out_size[1], rng.uniform(lo, hi) * out_size[0])
    else:
        angles, center = np.zeros(t), (out_size[1] / 2, out_size[0] / 2)
    return PseudoPlan(
        pre_size, windows, out_size, flip, angles, (float(center[0]), float(center[1]))
    )


def _render_frame(
    image: np.ndarray, planes: np.ndarray, plan: PseudoPlan, i: int
) -> tuple[np.ndarray, np.ndarray]:
    """Frame i of the plan: (crop) -> resize -> flip -> rotate, for the image and mask planes."""
    if plan.windows is not None:
        top, left, h, w = (int(v) for v in plan.windows[i])
        image = image[top : top + h, left : left + w]
        planes = planes[:, top : top + h, left : left + w]
    height, width = plan.out_size
    image = resize_image(image, plan.out_size)
    if planes.shape[1:] != (height, width):
        planes = map_planes(planes, lambda im: im.resize((width, height), Image.Resampling.NEAREST))
    if plan.flip:
        image, planes = image[:, ::-1], planes[:, :, ::-1]
    angle = float(plan.angles[i])
    if angle % 360 != 0:
        pil = Image.fromarray(np.ascontiguousarray(image))
        rotated = pil.rotate(
            angle, Image.Resampling.BILINEAR, center=plan.center, fillcolor=(0, 0, 0)
        )
        image = np.asarray(rotated)
        planes = map_planes(
            planes,
            lambda im: im.rotate(angle, Image.Resampling.NEAREST, center=plan.center, fillcolor=0),
        )
    return np.ascontiguousarray(image), np.ascontiguousarray(planes)


def paste_instances(
    frames: np.ndarray,
    masks: np.ndarray,
    donor: CocoImage,
    max_pasted: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copy&paste (ours; paper-inspired, unverified) donor instances with linear motion.

    Args:
        frames: TxHxWx3 uint8 clip frames.
        masks: TxNxHxW bool masks of the clip's own instances.
        donor: the image whose instances are pasted (its non-empty masks are candidates).
        max_pasted: at most this many instances are pasted (at least 1 if any candidate).
        rng: the clip's generator.

    Returns:
        frames: TxHxWx3 uint8 with the pasted pixels.
        masks: Tx(N+k)xHxW bool; underlying masks lose the pasted pixels.
        labels: k int64 labels of the pasted instances.
    """
    t_len, height, width = frames.shape[:3]
    candidates = np.flatnonzero(donor.masks.any(axis=(1, 2)))
    if candidates.size == 0 or max_pasted < 1:
        return frames, masks, np.zeros(0, dtype=np.int64)
    k = int(rng.integers(1, min(max_pasted, candidates.size) + 1))
    chosen = rng.choice(candidates, size=k, replace=False)
    frames = frames.copy()
    layers = list(masks.transpose(1, 0, 2, 3))  # N of TxHxW, bottom to top
    boxes = boxes_from_masks(donor.masks[chosen]).astype(np.int64)
    for j, box in zip(chosen, boxes, strict=True):
        x0, y0, x1, y1 = (int(v) for v in box)
        patch, patch_mask = donor.image[y0:y1, x0:x1], donor.masks[j, y0:y1, x0:x1]
        scale = min(1.0, 0.5 * height / (y1 - y0), 0.5 * width / (x1 - x0))
        size = (max(1, int(scale * (y1 - y0))), max(1, int(scale * (x1 - x0))))
        patch = resize_image(patch, size)
        patch_mask = resize_masks(patch_mask[None], size)[0]
        starts = rng.integers(0, [height - size[0] + 1, width - size[1] + 1])
        ends = rng.integers(0, [height - size[0] + 1, width - size[1] + 1])
        steps = np.linspace(0.0, 1.0, t_len)
        new_mask = np.zeros((t_len, height, width), dtype=bool)
        for t in range(t_len):
            y, x = np.round(starts + (ends - starts) * steps[t]).astype(np.int64)
            region = (slice(y, y + size[0]), slice(x, x + size[1]))
            new_mask[t][region] = patch_mask
            frames[t][region][patch_mask] = patch[patch_mask]
        layers = [m & ~new_mask for m in layers] + [new_mask]
    return frames, np.stack(layers, axis=1), donor.labels[chosen].astype(np.int64)


def generate_pseudo_clip(
    image: np.ndarray,
    masks: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    cfg: PseudoVideoConfig,
    rng: np.random.Generator,
    donor: CocoImage | None = None,
    source: str = "",
) -> Clip:
    """Turn one image and its instances into a T-frame pseudo clip.

    Args:
        image: HxWx3 uint8 RGB.
        masks: NxHxW bool instance masks (crowd regions excluded).
        labels: N contiguous class labels.
        cfg: generator parameters.
        rng: the clip's random generator.
        donor: image to copy&paste instances from, or None.
        source: provenance string stored in the clip.

    Returns:
        A clip with S = N (+ pasted) slots; ``ids[t, s] = s`` where the mask is non-empty,
        -1 elsewhere; labels constant over frames; boxes recomputed from the masks.
    """
    height, width = image.shape[:2]
    n = int(masks.shape[0])
    plan = sample_plan(height, width, cfg, rng)
    planes = pack_masks(masks)  # 0xHxW when there are no instances: every op passes it through
    if plan.pre_size is not None:
        image = resize_image(image, plan.pre_size)
        planes = pack_masks(resize_masks(masks, plan.pre_size))
    frames, clip_masks = [], []
    for i in range(cfg.num_frames):
        frame, frame_planes = _render_frame(image, planes, plan, i)
        frames.append(frame)
        clip_masks.append(unpack_masks(frame_planes, n).reshape(n, *plan.out_size))
    out_frames, out_masks = np.stack(frames), np.stack(clip_masks)
    all_labels = np.asarray(labels, dtype=np.int64).reshape(n)
    if donor is not None:
        out_frames, out_masks, pasted = paste_instances(
            out_frames, out_masks, donor, cfg.max_pasted, rng
        )
        all_labels = np.concatenate([all_labels, pasted])
    slots = out_masks.shape[1]
    ids = np.broadcast_to(np.arange(slots, dtype=np.int64), (cfg.num_frames, slots)).copy()
    ids[~out_masks.any(axis=(2, 3))] = -1
    return Clip(
        frames=out_frames,
        labels=np.broadcast_to(all_labels, (cfg.num_frames, slots)).copy(),
        ids=ids,
        masks=out_masks,
        source=source,
        boxes=boxes_from_masks(out_masks),
    )


def draw_donor(
    cfg: PseudoVideoConfig,
    rng: np.random.Generator,
    load: Callable[[np.random.Generator], CocoImage],
) -> CocoImage | None:
    """The copy&paste donor of a clip: with probability ``cfg.copy_paste_prob``, ``load(rng)``
    (which draws another image of the same source); None otherwise. Draws nothing when
    copy&paste is off, so clips without it keep their random stream."""
    if cfg.copy_paste_prob <= 0 or rng.random() >= cfg.copy_paste_prob:
        return None
    return load(rng)


class PseudoVideoDataset(torch.utils.data.Dataset[Clip]):
    """Map-style dataset of pseudo clips built from COCO images on the fly.

    Item ``index`` (any non-negative int) uses image ``index % len(self)`` and
    ``numpy.random.default_rng((seed, index))``; with ``cfg.copy_paste_prob > 0`` a donor
    image is drawn from the same (category-filtered) source.
    """

    def __init__(self, source: CocoInstances, cfg: PseudoVideoConfig, seed: int = 0) -> None:
        """Wrap a COCO source.

        Args:
            source: COCO images and instances (with the target category map applied).
            cfg: pseudo-video parameters.
            seed: base seed of every item's generator.
        """
        self.source = source
        self.cfg = cfg
        self.seed = seed
        self.num_classes = source.num_classes

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Clip:
        if index < 0:
            raise IndexError(f"negative clip index {index}")
        rng = np.random.default_rng((self.seed, index))
        item = self.source.load(index % len(self.source))
        donor = draw_donor(
            self.cfg, rng, lambda r: self.source.load(int(r.integers(len(self.source))))
        )
        return generate_pseudo_clip(
            item.image,
            item.masks,
            item.labels,
            self.cfg,
            rng,
            donor=donor,
            source=f"coco:{item.image_id}",
        )
