"""Sprites of the ``reid`` preset (:mod:`training.data.reid_synth`): look-alike twins.

A sprite is a shape's mask and colours drawn once around its centre; pasting it at integer
positions, unrotated and unscaled, makes its texture a function of object coordinates, so it
moves with the object. Twins share class, shape, orientation, size and colour and differ in one
cue: *shade* (the second twin's colours are offset by a number of grey levels) or *texture*
(stripes turned by 90 degrees, a larger checker cell or a sparser dot grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from training.data.synthetic import PALETTE, _shape_polygon

Cue = Literal["shade", "texture"]


@dataclass
class Sprite:
    """A shape's mask and colours, centred in a square of side ``2 * radius + 1``."""

    mask: np.ndarray  # bool [S, S], S = 2r + 1, centre at (r, r)
    rgb: np.ndarray  # float32 [S, S, 3]

    @property
    def radius(self) -> int:
        return self.mask.shape[0] // 2

    @property
    def reach(self) -> tuple[int, int]:
        """Columns the shape covers left and right of its centre (its pixels' extent)."""
        cols = np.flatnonzero(self.mask.any(axis=0))
        return self.radius - int(cols[0]), int(cols[-1]) - self.radius


def _pattern(kind: int, variant: bool, size: int) -> np.ndarray:
    """0/1 texture over a ``size`` x ``size`` sprite in object coordinates (centre at 0)."""
    r = size // 2
    v, u = np.mgrid[-r : r + 1, -r : r + 1]
    if kind == 0:  # stripes; the variant turns them by 90 degrees
        return ((u if variant else v) + 64) // 4 % 2
    if kind == 1:  # checker; the variant's cells are larger
        cell = 7 if variant else 5
        return ((u + 64) // cell + (v + 64) // cell) % 2
    period = 9 if variant else 7  # dots; the variant's grid is sparser
    du, dv = (u + 64) % period - period // 2, (v + 64) % period - period // 2
    return (du**2 + dv**2 < 5).astype(np.int64)


def _sprite(category: int, radius: int, angle: float, rgb_of: np.ndarray) -> Sprite:
    """The shape's mask at ``angle`` (centre at ``(radius, radius)``) with colours ``rgb_of``."""
    size = 2 * radius + 1
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon(_shape_polygon(category, radius, radius, radius, angle), fill=1)
    return Sprite(np.asarray(canvas, bool), rgb_of.astype(np.float32))


def _colours(pattern: np.ndarray, color: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """Texture colours: the colour where the pattern is 1, 60 % of it elsewhere, plus a shift."""
    rgb = np.where(pattern[..., None] == 1, color, color * 0.6) + shift
    return np.clip(rgb, 0, 255)


def twin_sprites(
    rng: np.random.Generator, category: int, radius: int, shade_step: float
) -> tuple[list[Sprite], Cue]:
    """Two sprites of one class, shape, size and colour that differ in shade (by
    ``shade_step`` grey levels, signed to stay within 0..255) or in texture."""
    size = 2 * radius + 1
    angle = float(rng.uniform(0, 2 * math.pi))
    color = np.array(PALETTE[int(rng.integers(len(PALETTE)))], np.float32)
    kind = int(rng.integers(3))
    cue: Cue = "shade" if rng.random() < 0.5 else "texture"
    base = _pattern(kind, False, size)
    if cue == "shade":
        step = -shade_step if color.max() + shade_step > 255 else shade_step
        second = _colours(base, color, step)
    else:
        second = _colours(_pattern(kind, True, size), color)
    first = _colours(base, color)
    return [_sprite(category, radius, angle, first), _sprite(category, radius, angle, second)], cue


def single_sprite(rng: np.random.Generator, category: int, radius: int) -> Sprite:
    """A distractor's sprite: random colour and texture."""
    angle = float(rng.uniform(0, 2 * math.pi))
    color = np.array(PALETTE[int(rng.integers(len(PALETTE)))], np.float32)
    pattern = _pattern(int(rng.integers(3)), False, 2 * radius + 1)
    return _sprite(category, radius, angle, _colours(pattern, color))
