"""The ``data`` section of ``TrainConfig``: clip sources, augmentation and pseudo videos.

Kept apart from ``training.config`` (which re-exports ``DataConfig``) so that the pseudo-video
settings, which the paper's Tables 5-7 vary, sit next to the data they shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["DataConfig", "PseudoConfig", "data_config_errors"]


@dataclass(frozen=True)
class PseudoConfig:
    """Pseudo videos from still images (paper Sec. 3.4, Tables 5-7; ``training.data.pseudo_video``).

    Used for COCO pseudo videos (``data.coco_prob`` > 0 or ``data.kind: coco``) and for
    ``data.image_mode`` (VIS or synthetic frames turned into pseudo clips). The generators
    combine freely; defaults are the released configs (``INPUT.PSEUDO``: rotation 15 degrees
    and, in half the clips, crop-shift). Crop size, final resize and flip come from
    ``data.crop_size`` / ``min_size_train`` / ``max_size_train`` / ``flip_prob``.

    Attributes:
        rotation: rotate frames monotonically within [-max_angle, max_angle]
            (``PSEUDO.AUGMENTATIONS ['rotation']``).
        max_angle: ``PSEUDO.ROTATE_ANGLE``.
        crop_prob: probability of the crop branch per clip (``RandomApplyClip`` 0.5).
        crop_shift: the crop window translates over the clip (official crop-shift).
        crop_zoom: the crop window shrinks or grows over the clip (paper's crop-zoom; ours).
            With ``crop_shift`` too, the window zooms while it moves.
        zoom_range: crop-zoom: range of the end/start crop scale, within (0, 1].
        crop_short_sizes: short side the image is resized to before cropping ({400, 500, 600}).
        crop_max_size: long-side cap of that resize (1333).
        copy_paste_prob: probability per clip of pasting instances of another image of the
            same source (paper's copy&paste; ours; 0 = off, as the released code).
        max_pasted: at most this many instances are pasted.
    """

    rotation: bool = True
    max_angle: float = 15.0
    crop_prob: float = 0.5
    crop_shift: bool = True
    crop_zoom: bool = False
    zoom_range: tuple[float, float] = (0.6, 0.9)
    crop_short_sizes: tuple[int, ...] = (400, 500, 600)
    crop_max_size: int = 1333
    copy_paste_prob: float = 0.0
    max_pasted: int = 3


@dataclass(frozen=True)
class DataConfig:
    """Training clips (official ``INPUT.*`` / ``DATASETS.*``).

    ``synthetic`` renders videos with ``training.data.synthetic``; ``ytvis`` reads a
    YouTube-VIS json + frame folder (``ytvis_json`` / ``ytvis_frames``) through
    ``training.data``'s datasets, optionally mixed with COCO pseudo videos with probability
    ``coco_prob`` per per-rank batch; ``coco`` trains on COCO pseudo videos only (the paper's
    Table 5). ``image_mode`` (official ``INPUT.IMAGE_MODE``, Table 7) turns every real or
    synthetic clip into a pseudo clip of one of its video's frames (``pseudo`` settings).
    """

    kind: Literal["synthetic", "ytvis", "coco"] = "synthetic"
    clip_frames: int = 10  # SAMPLING_FRAME_NUM
    frame_range: int = 20  # SAMPLING_FRAME_RANGE
    clips_per_batch: int = 2  # per rank (IMS_PER_BATCH / #GPUs)
    synth_split: str = "val"
    synth_seed: int = 1000
    synth_videos: int = 64
    synth_height: int = 96
    synth_width: int = 128
    synth_frames: int = 24
    synth_min_instances: int = 0  # 0: the split's own (val 1-4, hard 3-8)
    synth_max_instances: int = 0
    ytvis_json: str = ""
    ytvis_frames: str = ""
    coco_json: str = ""
    coco_images: str = ""
    coco_prob: float = 0.0
    coco_target: str = ""  # "ytvis19" / "ytvis21" / "ovis": COCO -> VIS category map
    min_size_train: tuple[int, ...] = (320, 352, 392, 416, 448, 480, 512, 544, 576, 608, 640)
    max_size_train: int = 768
    crop_prob: float = 0.5
    crop_size: tuple[int, int] = (384, 600)
    flip_prob: float = 0.5
    num_workers: int = 0
    # Progressive resizing (0 = off): from iteration ``late_from`` (0-based) on, clips are
    # resized with ``late_min_size_train`` / ``late_max_size_train`` instead, e.g. a short
    # last stage at the test scale after most of the schedule at a cheaper one.
    late_from: int = 0
    late_min_size_train: tuple[int, ...] = ()
    late_max_size_train: int = 0
    image_mode: bool = False
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)


def data_config_errors(cfg: DataConfig) -> list[str]:
    """What is wrong with ``cfg`` (empty when nothing): checks the types cannot express."""
    errors = []
    if cfg.late_from < 0:
        errors.append("data.late_from must be >= 0 (0: no late stage)")
    if cfg.late_from > 0 and not cfg.late_min_size_train:
        errors.append("data.late_from needs data.late_min_size_train")
    p = cfg.pseudo
    if not 0.0 < p.zoom_range[0] <= p.zoom_range[1] <= 1.0:
        errors.append("data.pseudo.zoom_range must satisfy 0 < lo <= hi <= 1")
    if p.max_angle < 0 or p.max_pasted < 0:
        errors.append("data.pseudo.max_angle and max_pasted must be >= 0")
    for name in ("crop_prob", "copy_paste_prob"):
        if not 0.0 <= getattr(p, name) <= 1.0:
            errors.append(f"data.pseudo.{name} must be in [0, 1]")
    if not p.crop_short_sizes:
        errors.append("data.pseudo.crop_short_sizes must not be empty")
    if cfg.kind == "coco" and not cfg.coco_json:
        errors.append("data.kind coco needs data.coco_json and data.coco_images")
    if cfg.kind == "coco" and cfg.image_mode:
        errors.append("data.image_mode applies to video sources (synthetic, ytvis), not coco")
    return errors
