"""The ``reid`` preset of the synthetic benchmark: a video set where association is the test.

In the default splits (:mod:`training.data.synthetic`) every pair of instances differs in class
or colour, or is pixel-identical, so an identity is either trivial to keep or only position
can keep it. Here identities are kept by appearance alone:

* **Look-alike pairs**: ``pairs`` pairs of twins. Twins share class, shape, orientation, size
  and colour and differ in one subtle cue, chosen per pair: *shade* (the second twin's
  colours are ``shade_step`` grey levels brighter or darker) or *texture* (stripes turned by
  90 degrees, a larger checker cell or a sparser dot grid). Different pairs have different
  classes; ``distractors`` objects of yet other classes wander as well.
* **Texture in object coordinates**: each object is a sprite
  (:mod:`training.data.reid_sprites`) pasted at integer positions, with no rotation or
  scaling, so the pixels of a fully visible object are the same in every frame.
* **An occluded position swap**: the twins of pair 0 walk into a full-height occluder bar,
  stay fully hidden for ``min_hidden..max_hidden`` frames and come out where the other twin
  went in: ``cross`` (they enter from opposite sides on nearby rows and each leaves on the
  far side, on the other's row) or ``swap`` (they enter from one side on two rows and leave
  on the other side with their rows exchanged). A tracker that matches by position (box
  overlap or motion) swaps their identities; only appearance tells them apart.
* **An exit and re-entry**: the first twin of pair 1 leaves through the left or right frame
  edge, stays out for ``min_gap..max_gap`` frames (null masks) and comes back through either
  edge on a new random row, while its twin wanders in view.

Both events' objects are fully in view for a few frames before and after them. Wanderers
bounce off the walls of one side of the bar each (alternating sides), so the bar hides only
the events' objects. Draw order keeps the events exact: wanderers first, then pair 0, then
the re-entering twin, whose half of the frame is not pair 0's. There is no camera noise or
brightness change, so the pixels inside an object change only where something covers it.
Masks are the visible pixels, a ``null`` segmentation marks a frame where an instance is
invisible, and the output has the layout of the other splits (``instances.json`` + PNG
frames). Rendering is deterministic given the seed; a 32-frame video takes about 20 ms.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from training.data.reid_sprites import Cue, Sprite, single_sprite, twin_sprites
from training.data.synthetic import CATEGORIES, _background, write_videos

EventKind = Literal["cross", "swap", "reentry"]


@dataclass(frozen=True)
class ReidConfig:
    """Parameters of the ``reid`` preset (sizes in pixels, times in frames).

    Attributes:
        height, width: frame size.
        num_frames: video length (at least 24).
        pairs: look-alike pairs (at least 2: pair 0 swaps behind the occluder, pair 1's first
            twin exits and re-enters; further pairs wander).
        distractors: unique wandering objects.
        min_size, max_size: range of an object's diameter (twins share theirs).
        min_speed, max_speed: range of a wandering object's speed per frame; the objects of
            the two events move at ``max_speed..2 * max_speed``, faster where a short video
            needs it.
        shade_step: grey levels between a *shade* pair's twins.
        min_hidden, max_hidden: frames pair 0 stays fully behind the occluder.
        min_gap, max_gap: frames the re-entering twin stays out of the frame.
    """

    height: int = 192
    width: int = 256
    num_frames: int = 32
    pairs: int = 2
    distractors: int = 1
    min_size: int = 28
    max_size: int = 40
    min_speed: int = 3
    max_speed: int = 5
    shade_step: int = 28
    min_hidden: int = 2
    max_hidden: int = 5
    min_gap: int = 5
    max_gap: int = 20

    def __post_init__(self) -> None:
        if self.num_frames < 24:
            raise ValueError("num_frames must be at least 24")
        if self.pairs < 2 or self.pairs + self.distractors > len(CATEGORIES):
            raise ValueError(f"need pairs >= 2 and pairs + distractors <= {len(CATEGORIES)}")
        if not 8 <= self.min_size <= self.max_size or self.height < 4 * self.max_size + 8:
            raise ValueError("need 8 <= min_size <= max_size and height >= 4 * max_size + 8")
        if self.width < 6 * self.max_size:
            raise ValueError("need width >= 6 * max_size")
        if not 1 <= self.min_speed <= self.max_speed:
            raise ValueError("need 1 <= min_speed <= max_speed")
        if not 1 <= self.min_hidden <= self.max_hidden:
            raise ValueError("need 1 <= min_hidden <= max_hidden")
        if not 1 <= self.min_gap <= self.max_gap or self.min_gap > self.num_frames - 8:
            raise ValueError("need 1 <= min_gap <= max_gap and min_gap <= num_frames - 8")


@dataclass(frozen=True)
class ReidEvent:
    """One scripted event: ``tracks`` are invisible for frames ``start <= t < end``, visible at
    ``start - 1`` and at ``end``. For ``cross``/``swap`` ``tracks`` is the twin pair (each
    comes out where the other went in); for ``reentry`` it is the twin that left the frame."""

    kind: EventKind
    tracks: tuple[int, ...]
    start: int
    end: int


@dataclass
class ReidVideo:
    """A rendered ``reid`` video.

    Attributes:
        frames: T uint8 HxWx3 RGB frames.
        tracks: per instance ``{"category": int, "masks": [HxW bool or None per frame]}``.
        lookalikes: index pairs (into ``tracks``) of twins, pair 0 first.
        cues: what tells each pair's twins apart.
        events: the scripted swap and re-entry.
    """

    frames: list[np.ndarray]
    tracks: list[dict]
    lookalikes: list[tuple[int, int]] = field(default_factory=list)
    cues: list[Cue] = field(default_factory=list)
    events: list[ReidEvent] = field(default_factory=list)


def _fold(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect coordinates into ``[lo, hi]`` (a straight path bouncing off both walls)."""
    span = hi - lo
    y = np.mod(x - lo, 2 * span)
    return lo + np.where(y > span, 2 * span - y, y)


def _wander(
    rng: np.random.Generator, cfg: ReidConfig, sprite: Sprite, bar: tuple[int, int], side: int
) -> np.ndarray:
    """A straight path bouncing off the walls of one side of the occluder bar (the bar hides
    only the events' objects; ``side`` picks the side, modulo the sides with room), or of the
    whole frame where neither side has room: int [T, 2] centres (x, y)."""
    r, (reach_l, reach_r) = sprite.radius, sprite.reach
    sides = [(r, bar[0] - 1 - reach_r), (bar[1] + reach_l, cfg.width - 1 - r)]
    sides = [s for s in sides if s[1] - s[0] >= 8] or [(r, cfg.width - 1 - r)]
    x_lo, x_hi = sides[side % len(sides)]
    lo = np.array([x_lo, r], np.float64)
    hi = np.array([x_hi, cfg.height - 1 - r], np.float64)
    start = rng.uniform(lo, hi)
    heading = rng.uniform(0, 2 * math.pi)
    speed = rng.uniform(cfg.min_speed, cfg.max_speed)
    vel = np.array([math.cos(heading), math.sin(heading)]) * speed
    path = start + vel * np.arange(cfg.num_frames)[:, None]
    path[:, 0] = _fold(path[:, 0], lo[0], hi[0])
    path[:, 1] = _fold(path[:, 1], lo[1], hi[1])
    return np.rint(path).astype(np.int64)


def _event_speed(
    rng: np.random.Generator, cfg: ReidConfig, span: int, budget: int
) -> tuple[int, int]:
    """Speed of an event object (``max_speed..2 * max_speed``, raised so that crossing an edge
    takes at most ``budget`` frames) and the frames it is partly in view while its ``span``
    columns cross an edge (the frame's or the occluder's)."""
    speed = max(int(rng.integers(cfg.max_speed, 2 * cfg.max_speed + 1)), -(-span // budget))
    return speed, -(-span // speed)


def _swap_paths(
    rng: np.random.Generator,
    cfg: ReidConfig,
    sprite: Sprite,
    band: tuple[int, int],
    bar: tuple[int, int],
) -> tuple[list[np.ndarray], ReidEvent]:
    """Paths of pair 0's twins through the occluder ``bar`` (columns ``bar[0]..bar[1]-1``).

    Each twin walks into the bar until fully hidden at frame ``t_a``, slides while hidden to
    where it comes out (``cross``: the far side, on the other twin's row; ``swap``: the far
    side, rows exchanged) and is partly in view again at ``t_b + 1``. Both are fully in view
    for at least 3 frames before going in and after coming out."""
    t_len = cfg.num_frames
    kind: EventKind = "cross" if rng.random() < 0.5 else "swap"
    hidden = int(rng.integers(cfg.min_hidden, cfg.max_hidden + 1))
    r, (reach_l, reach_r) = sprite.radius, sprite.reach
    speed, edge = _event_speed(rng, cfg, reach_l + reach_r + 1, (t_len - hidden - 5) // 2)
    t_a = int(rng.integers(edge + 2, t_len - hidden - edge - 3 + 1))
    t_b = t_a + hidden
    left, right = bar[0] + reach_l, bar[1] - 1 - reach_r  # centres fully behind the bar
    y0 = int(rng.integers(band[0], band[1] - 2 * r - 1))  # room for a second row below
    if kind == "cross":  # near rows, so each comes out where the other went in
        y1 = int(np.clip(y0 + rng.integers(-(r // 2), r // 2 + 1), *band))
        plans = [(left, y0, 1, right, y1, 1), (right, y1, -1, left, y0, -1)]
    else:  # rows far enough apart for the twins never to touch
        y1 = int(rng.integers(y0 + 2 * r + 2, band[1] + 1))
        d = 1 if rng.random() < 0.5 else -1
        near, far = (left, right) if d == 1 else (right, left)
        plans = [(near, y0, d, far, y1, d), (near, y1, d, far, y0, d)]
    t = np.arange(t_len)
    frac = np.clip((t - t_a) / hidden, 0.0, 1.0)
    lo, hi = r, cfg.width - 1 - r
    paths = []
    for x_in, y_in, d_in, x_out, y_out, d_out in plans:
        before = _fold(x_in - d_in * speed * (t_a - t), lo, hi)
        after = _fold(x_out + d_out * speed * (t - t_b), lo, hi)
        x = np.where(t < t_a, before, np.where(t > t_b, after, x_in + (x_out - x_in) * frac))
        y = y_in + (y_out - y_in) * frac
        paths.append(np.rint(np.stack([x, y], axis=1)).astype(np.int64))
    return paths, ReidEvent(kind, (0, 1), t_a, t_b + 1)


def _reentry_path(
    rng: np.random.Generator,
    cfg: ReidConfig,
    sprite: Sprite,
    band: tuple[int, int],
    bar: tuple[int, int],
) -> tuple[np.ndarray, ReidEvent]:
    """A path leaving through a side edge at ``t_out`` and back ``gap`` frames later.

    The object is fully in view for at least 3 frames before it starts to leave and at least
    2 after it is back in (its speed, ``max_speed..2 * max_speed``, is raised where the
    video is too short for that); it comes back on a new row, through either side edge. Until
    it leaves it keeps to its side of the occluder bar where there is room, so its first null
    frame is its first frame outside. Frames out of view get a far-off centre."""
    t_len, w = cfg.num_frames, cfg.width
    r, (reach_l, reach_r) = sprite.radius, sprite.reach
    speed, edge = _event_speed(rng, cfg, reach_l + reach_r + 1, (t_len - 4 - cfg.min_gap) // 2)
    exit_left = rng.random() < 0.5
    room = bar[0] - 1 if exit_left else w - bar[1]  # columns between the edge and the bar
    gap = int(rng.integers(cfg.min_gap, min(cfg.max_gap, t_len - 2 * edge - 4) + 1))
    latest = max(edge + 2, min(room // speed, t_len - edge - 2 - gap))
    t_out = int(rng.integers(edge + 2, latest + 1))
    t_in = t_out + gap
    enter_left = rng.random() < 0.5
    rows = rng.integers(band[0], band[1] + 1, size=2)
    t = np.arange(t_len)
    out_x = -reach_r - 1 if exit_left else w + reach_l  # the first centre with nothing in view
    x_before = out_x + (speed if exit_left else -speed) * (t_out - t)
    in_x = -reach_r - 1 + speed if enter_left else w + reach_l - speed  # partly in view
    if enter_left:
        x_after = _fold(in_x + speed * (t - t_in), in_x, w - 1 - r)
    else:
        x_after = _fold(in_x - speed * (t - t_in), r, in_x)
    x = np.where(t < t_out, x_before, np.where(t >= t_in, x_after, -10 * (w + r)))
    y = np.where(t < t_out, rows[0], rows[1])
    path = np.rint(np.stack([x, y], axis=1)).astype(np.int64)
    return path, ReidEvent("reentry", (2,), t_out, t_in)


@dataclass
class _Plan:
    sprites: list[Sprite]  # index order: pair 0, pair 1 (re-entering twin first), ..., distractors
    paths: list[np.ndarray]
    classes: list[int]
    bar: tuple[int, int]
    bar_color: np.ndarray
    cues: list[Cue]
    events: list[ReidEvent]


def _plan(rng: np.random.Generator, cfg: ReidConfig) -> _Plan:
    """Lay out one video: sprites, paths, the occluder bar and the two events."""
    h = cfg.height
    categories = [int(c) for c in rng.permutation(len(CATEGORIES))]
    radii = [int(rng.integers(cfg.min_size, cfg.max_size + 1)) // 2 for _ in categories]
    sprites: list[Sprite] = []
    cues: list[Cue] = []
    for p in range(cfg.pairs):
        pair, cue = twin_sprites(rng, categories[p], radii[p], cfg.shade_step)
        sprites += pair
        cues.append(cue)
    r0, r1 = radii[0], radii[1]
    bar_w = 2 * r0 + 1 + int(rng.integers(6, 17))
    bar_x0 = int(rng.uniform(0.4, 0.6) * cfg.width - bar_w / 2)
    bar = (bar_x0, bar_x0 + bar_w)
    half = h // 2
    if rng.random() < 0.5:  # pair 0 in the top half, the re-entering twin in the bottom half
        band0, band1 = (r0, half - 1 - r0), (half + r1, h - 1 - r1)
    else:
        band0, band1 = (half + r0, h - 1 - r0), (r1, half - 1 - r1)
    swap_paths, swap_event = _swap_paths(rng, cfg, sprites[0], band0, bar)
    reentry, reentry_event = _reentry_path(rng, cfg, sprites[2], band1, bar)
    paths = [*swap_paths, reentry]
    side = int(rng.integers(2))  # wanderers alternate sides, so that they rarely overlap
    paths += [_wander(rng, cfg, sprites[k], bar, side + k) for k in range(3, 2 * cfg.pairs)]
    classes = [categories[k // 2] for k in range(2 * cfg.pairs)]
    for j in range(cfg.distractors):
        k = cfg.pairs + j
        sprites.append(single_sprite(rng, categories[k], radii[k]))
        paths.append(_wander(rng, cfg, sprites[-1], bar, side + len(paths)))
        classes.append(categories[k])
    bar_color = rng.uniform(20, 90, 3).astype(np.float32)
    return _Plan(sprites, paths, classes, bar, bar_color, cues, [swap_event, reentry_event])


def _paste(
    img: np.ndarray, visible: np.ndarray, k: int, sprite: Sprite, centre: np.ndarray
) -> None:
    """Draw sprite ``k`` at integer ``centre`` over the earlier ones (clipped to the frame)."""
    h, w = visible.shape[1:]
    r = sprite.radius
    x0, y0 = int(centre[0]) - r, int(centre[1]) - r
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + 2 * r + 1, w), min(y0 + 2 * r + 1, h)
    if fx0 >= fx1 or fy0 >= fy1:
        return
    sy, sx = slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0)
    m = sprite.mask[sy, sx]
    visible[:, fy0:fy1, fx0:fx1] &= ~m
    visible[k, fy0:fy1, fx0:fx1] = m
    img[fy0:fy1, fx0:fx1][m] = sprite.rgb[sy, sx][m]


def render_reid_video(seed: int, cfg: ReidConfig | None = None) -> ReidVideo:
    """Render one ``reid`` video (deterministic given ``seed``; layout: module docstring)."""
    cfg = cfg or ReidConfig()
    rng = np.random.default_rng(seed)
    plan = _plan(rng, cfg)
    background = _background(rng, cfg.height, cfg.width)
    n = len(plan.sprites)
    # wanderers first, then pair 0, then the re-entering twin on top
    draw_order = [*range(3, n), 0, 1, 2]
    frames: list[np.ndarray] = []
    masks: list[list[np.ndarray | None]] = [[] for _ in range(n)]
    x0, x1 = plan.bar
    for t in range(cfg.num_frames):
        img = background.copy()
        visible = np.zeros((n, cfg.height, cfg.width), bool)
        for k in draw_order:
            _paste(img, visible, k, plan.sprites[k], plan.paths[k][t])
        img[:, x0:x1] = plan.bar_color
        visible[:, :, x0:x1] = False
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        for k in range(n):
            masks[k].append(visible[k].copy() if visible[k].any() else None)
    tracks = [{"category": c, "masks": m} for c, m in zip(plan.classes, masks, strict=True)]
    pairs = [(2 * p, 2 * p + 1) for p in range(cfg.pairs)]
    return ReidVideo(frames, tracks, pairs, plan.cues, plan.events)


def write_reid_dataset(
    out_dir: str | Path, seed: int, num_videos: int, cfg: ReidConfig | None = None
) -> Path:
    """Write ``num_videos`` ``reid`` videos to ``out_dir`` in YouTube-VIS layout.

    Video ``v`` is rendered from seed ``seed * 100_003 + v`` (as the other splits) and named
    ``reid_<seed>_<v>``. Writes ``out_dir/instances.json`` and
    ``out_dir/frames/<video>/<frame>.png``.

    Returns:
        Path of ``instances.json``.
    """
    cfg = cfg or ReidConfig()

    def videos() -> Iterator[tuple[str, list[np.ndarray], list[dict]]]:
        # rendered lazily: one video in memory at a time
        for v in range(num_videos):
            video = render_reid_video(seed * 100_003 + v, cfg)
            yield f"reid_{seed}_{v:04d}", video.frames, video.tracks

    return write_videos(
        out_dir, videos(), cfg.height, cfg.width, f"ctvis synthetic VIS, preset=reid, seed={seed}"
    )
