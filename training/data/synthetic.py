"""A procedural synthetic video instance segmentation benchmark (the embedded default dataset).

Textured shapes of six categories move over textured backgrounds. Videos contain 1..8
instances, look-alike instances (same class and colour), bounces, acceleration, scale and
rotation changes, static occluders that hide an instance completely for several frames,
exits and re-entries, and sudden brightness changes. Everything is drawn with numpy and
Pillow and is deterministic given the seed. Masks are the visible (modal) pixels; a frame
where an instance is invisible has a ``null`` segmentation, as in YouTube-VIS.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 60, 50), (50, 160, 230), (240, 200, 40), (80, 200, 90), (180, 80, 220),
    (250, 130, 30), (240, 240, 240), (30, 30, 30),
)  # fmt: skip


@dataclass(frozen=True)
class SynthConfig:
    """Difficulty knobs of the generator."""

    height: int = 192
    width: int = 256
    num_frames: int = 24
    min_instances: int = 1
    max_instances: int = 4
    speed: float = 4.0
    acceleration: float = 0.15
    lookalike_prob: float = 0.3
    occluder_prob: float = 0.3
    exit_prob: float = 0.15
    brightness_prob: float = 0.2
    min_size: float = 18.0
    max_size: float = 40.0


SPLITS: dict[str, SynthConfig] = {
    "val": SynthConfig(min_size=32.0, max_size=64.0),
    "hard": SynthConfig(
        num_frames=36,
        min_instances=3,
        max_instances=8,
        speed=6.0,
        acceleration=0.4,
        lookalike_prob=0.7,
        occluder_prob=0.8,
        exit_prob=0.5,
        brightness_prob=0.6,
        min_size=14.0,
    ),
}


@dataclass
class _Object:
    category: int
    color: tuple[int, int, int]
    texture: Literal["stripes", "checker", "dots"]
    pos: np.ndarray
    vel: np.ndarray
    acc: np.ndarray
    size: float
    growth: float
    angle: float
    spin: float
    exits: bool


def _shape_polygon(category: int, cx: float, cy: float, r: float, angle: float) -> list[float]:
    name = CATEGORIES[category]
    if name == "square":
        pts = [(r, r), (-r, r), (-r, -r), (r, -r)]
    elif name == "triangle":
        pts = [
            (r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
    elif name == "hexagon":
        pts = [(r * math.cos(k * math.pi / 3), r * math.sin(k * math.pi / 3)) for k in range(6)]
    elif name == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif name == "cross":
        w = 0.35 * r
        pts = [(w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w), (-w, -r), (w, -r),
               (w, -w), (r, -w), (r, w), (w, w)]  # fmt: skip
    else:  # circle
        pts = [(r * math.cos(k * math.pi / 16), r * math.sin(k * math.pi / 16)) for k in range(32)]
    c, s = math.cos(angle), math.sin(angle)
    out: list[float] = []
    for x, y in pts:
        out += [cx + c * x - s * y, cy + s * x + c * y]
    return out


def _texture(
    kind: str, color: tuple[int, int, int], yy: np.ndarray, xx: np.ndarray, phase: int
) -> np.ndarray:
    """Texture colours at pixels ``(yy, xx)`` (frame coordinates, any equal shapes), float32.

    The pattern is a function of the frame position, so evaluating it only where a shape is
    drawn gives the same pixels as evaluating it over the whole frame.
    """
    if kind == "stripes":
        pattern = ((xx + yy + phase) // 4) % 2
    elif kind == "checker":
        pattern = ((xx // 5) + (yy // 5)) % 2
    else:
        pattern = (((xx % 7) - 3) ** 2 + ((yy % 7) - 3) ** 2 < 5).astype(np.int64)
    base = np.array(color, np.float32)
    dark = base * 0.6
    return np.where(pattern[..., None] == 1, base, dark).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    fx, fy = rng.uniform(0.01, 0.06, size=2)
    base = rng.uniform(60, 160, size=3)
    # separable: the same values as over the full (h, w) grid, in h + w sin/cos evaluations
    sin_x = np.sin(np.arange(w, dtype=np.float32) * fx + rng.uniform(0, 6))
    cos_y = np.cos(np.arange(h, dtype=np.float32) * fy + rng.uniform(0, 6))
    wave = 30 * sin_x[None, :] * cos_y[:, None]
    img = base[None, None, :] + wave[..., None]
    img += rng.normal(0, 6, size=(h, w, 3))
    return np.clip(img, 0, 255, out=img).astype(np.float32)


def _spawn(rng: np.random.Generator, cfg: SynthConfig, template: _Object | None) -> _Object:
    if template is not None:  # a look-alike: same class, colour and texture
        category, color, texture = template.category, template.color, template.texture
    else:
        category = int(rng.integers(len(CATEGORIES)))
        color = PALETTE[int(rng.integers(len(PALETTE)))]
        texture = ("stripes", "checker", "dots")[int(rng.integers(3))]
    size = min(float(rng.uniform(cfg.min_size, cfg.max_size)) / 2, _max_radius(cfg))
    margin = size + 2
    pos = np.array(
        [rng.uniform(margin, cfg.width - margin), rng.uniform(margin, cfg.height - margin)]
    )
    heading = rng.uniform(0, 2 * math.pi)
    speed = rng.uniform(0.5, 1.0) * cfg.speed
    return _Object(
        category=category,
        color=color,
        texture=texture,
        pos=pos,
        vel=np.array([math.cos(heading), math.sin(heading)]) * speed,
        acc=rng.normal(0, cfg.acceleration, size=2),
        size=size,
        growth=float(rng.uniform(-0.01, 0.015)),
        angle=float(rng.uniform(0, 2 * math.pi)),
        spin=float(rng.normal(0, 0.08)),
        exits=bool(rng.random() < cfg.exit_prob),
    )


def _max_radius(cfg: SynthConfig) -> float:
    """Largest shape radius: a quarter of the shorter frame side (the split's sizes are meant
    for 256x192 frames, where this bound never applies; smaller frames cap them)."""
    return min(cfg.width, cfg.height) / 4


def _advance(obj: _Object, cfg: SynthConfig, t: int) -> None:
    obj.vel = np.clip(obj.vel + obj.acc, -2.5 * cfg.speed, 2.5 * cfg.speed)
    obj.pos = obj.pos + obj.vel
    upper = min(cfg.max_size / 1.5, _max_radius(cfg))
    obj.size = float(np.clip(obj.size * (1 + obj.growth), cfg.min_size / 2.5, upper))
    obj.angle += obj.spin
    limits = (cfg.width, cfg.height)
    for d in range(2):
        if obj.exits:
            # leave the frame, then come back: reverse once the object is well outside
            lo, hi = -2.5 * obj.size, limits[d] + 2.5 * obj.size
            if (obj.pos[d] < lo and obj.vel[d] < 0) or (obj.pos[d] > hi and obj.vel[d] > 0):
                obj.vel[d] = -obj.vel[d]
                obj.acc[d] = -obj.acc[d]
        else:
            if (obj.pos[d] < obj.size and obj.vel[d] < 0) or (
                obj.pos[d] > limits[d] - obj.size and obj.vel[d] > 0
            ):
                obj.vel[d] = -obj.vel[d]
                obj.acc[d] = -obj.acc[d]


def render_video(
    seed: int, cfg: SynthConfig, draw_frames: Collection[int] | None = None
) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Render one video.

    Args:
        seed: makes the video reproducible.
        cfg: difficulty knobs.
        draw_frames: frame indices whose images are needed (None: all). Motion and masks are
            always computed for every frame (they are sequential and decide which instances
            exist), but only these frames are composited; the others come back as None.
            The frames drawn are identical whichever subset is asked for.

    Returns:
        frames: T uint8 HxWx3 RGB arrays (None for frames not in ``draw_frames``).
        tracks: per instance ``{"category": int, "masks": [HxW bool or None per frame]}``.
    """
    rng = np.random.default_rng(seed)
    h, w, t_len = cfg.height, cfg.width, cfg.num_frames
    n = int(rng.integers(cfg.min_instances, cfg.max_instances + 1))
    objects: list[_Object] = []
    for _ in range(n):
        template = (
            objects[int(rng.integers(len(objects)))]
            if objects and rng.random() < cfg.lookalike_prob
            else None
        )
        objects.append(_spawn(rng, cfg, template))
    background = _background(rng, h, w)
    occluder = None
    if rng.random() < cfg.occluder_prob:
        ow = int(rng.uniform(0.15, 0.25) * w)
        ox = int(rng.uniform(0.2, 0.8) * w - ow / 2)
        occluder = (ox, ox + ow, tuple(int(v) for v in rng.uniform(20, 90, 3)))
    flash_at = int(rng.integers(2, t_len)) if rng.random() < cfg.brightness_prob else -1
    phases = [int(rng.integers(8)) for _ in objects]
    frames: list[np.ndarray] = []
    masks: list[list[np.ndarray | None]] = [[] for _ in objects]
    for t in range(t_len):
        img = background.copy() if draw_frames is None or t in draw_frames else None
        visible = np.zeros((n, h, w), bool)
        for k, obj in enumerate(objects):  # later objects are drawn on top
            canvas = Image.new("L", (w, h), 0)
            ImageDraw.Draw(canvas).polygon(
                _shape_polygon(obj.category, obj.pos[0], obj.pos[1], obj.size, obj.angle), fill=1
            )
            box = canvas.getbbox()
            if box is None:  # entirely outside the frame
                continue
            # everything below touches only the shape's bounding box
            x0, y0, x1, y1 = box
            m = np.asarray(canvas, bool)[y0:y1, x0:x1]
            visible[:k, y0:y1, x0:x1] &= ~m
            visible[k, y0:y1, x0:x1] = m
            if img is not None:
                yy, xx = np.nonzero(m)
                yy += y0
                xx += x0
                img[yy, xx] = _texture(obj.texture, obj.color, yy, xx, phases[k])
        if occluder is not None:
            x0, x1, color = occluder
            if img is not None:
                img[:, max(x0, 0) : max(x1, 0)] = np.array(color, np.float32)
            visible[:, :, max(x0, 0) : max(x1, 0)] = False
        if img is not None:
            if flash_at >= 0 and t >= flash_at:
                img = img * 1.45 + 10
            frames.append(np.clip(img, 0, 255).astype(np.uint8))
        else:
            frames.append(None)  # type: ignore[arg-type]
        for k in range(n):
            masks[k].append(visible[k].copy() if visible[k].any() else None)
        for obj in objects:
            _advance(obj, cfg, t)
    tracks = [
        {"category": obj.category, "masks": masks[k]}
        for k, obj in enumerate(objects)
        if any(m is not None for m in masks[k])
    ]
    return frames, tracks


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_dataset(out_dir: str | Path, split: str, seed: int, num_videos: int) -> Path:
    """Write ``num_videos`` videos of ``split`` to ``out_dir`` in YouTube-VIS layout.

    Writes ``out_dir/instances.json`` and ``out_dir/frames/<video>/<frame>.png``.

    Returns:
        Path of ``instances.json``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLITS)}")
    cfg = SPLITS[split]

    def videos() -> Iterator[tuple[str, list[np.ndarray], list[dict[str, Any]]]]:
        for v in range(num_videos):  # rendered lazily: one video in memory at a time
            yield f"{split}_{seed}_{v:04d}", *render_video(seed * 100_003 + v, cfg)

    description = f"ctvis synthetic VIS, split={split}, seed={seed}"
    return write_videos(out_dir, videos(), cfg.height, cfg.width, description)


def write_videos(
    out_dir: str | Path,
    videos: Iterable[tuple[str, list[np.ndarray], list[dict[str, Any]]]],
    height: int,
    width: int,
    description: str,
) -> Path:
    """Write rendered ``(name, frames, tracks)`` videos in YouTube-VIS layout (ids from 1).

    Tracks are :func:`render_video`'s ``{"category", "masks"}`` dicts. Writes
    ``out_dir/instances.json`` (with every category of :data:`CATEGORIES`) and
    ``out_dir/frames/<name>/<frame>.png``.

    Returns:
        Path of ``instances.json``.
    """
    out = Path(out_dir)
    entries: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for vid, (name, frames, tracks) in enumerate(videos, start=1):
        (out / "frames" / name).mkdir(parents=True, exist_ok=True)
        files = []
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(out / "frames" / name / f"{t:05d}.png")
            files.append(f"{name}/{t:05d}.png")
        entries.append({"id": vid, "width": width, "height": height, "length": len(frames),
                        "file_names": files})  # fmt: skip
        for track in tracks:
            segs = [None if m is None else _rle(m) for m in track["masks"]]
            areas = [None if m is None else int(m.sum()) for m in track["masks"]]
            boxes = [
                None if s is None else [float(x) for x in mask_utils.toBbox(
                    {"size": s["size"], "counts": s["counts"].encode()})]
                for s in segs
            ]  # fmt: skip
            annotations.append({
                "id": len(annotations) + 1, "video_id": vid, "category_id": track["category"] + 1,
                "iscrowd": 0, "height": height, "width": width, "length": 1,
                "segmentations": segs, "areas": areas, "bboxes": boxes,
            })  # fmt: skip
    doc = {
        "info": {"description": description},
        "videos": entries,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)
        ],
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "instances.json"
    path.write_text(json.dumps(doc))
    return path


def config_for(split: str, **overrides: Any) -> SynthConfig:
    """The split's config with field overrides (e.g. ``num_frames=8``)."""
    return replace(SPLITS[split], **overrides)
