"""Per-frame camera motion of a pseudo clip: crop windows (shift and/or zoom) and rotation angles.

All parameters are drawn once per clip from the caller's ``numpy.random.Generator``; frame i
of T follows T sorted uniforms ``u_i`` (one set per clip), and the whole order is reversed with
probability 0.5, so every motion is monotone over the clip:

* **crop-shift** (official ``augmentation.py`` of https://github.com/KainingYing/CTVIS): a
  fixed-size window whose top-left corner moves from ``(y1, x1)`` towards ``(y0, x0)`` as
  ``round(p0 * u_i + p1 * (1 - u_i))``, ``(y0, x0)`` uniform and ``(y1, x1)`` uniform below
  and right of it;
* **crop-zoom** (paper Sec. 3.4; ours): the window's size moves from A to ``z * A`` with
  ``z ~ U[zoom_range]`` (``zoom_range`` within (0, 1]), its centre fixed;
* **both**: the window zooms as above around a centre that moves like crop-shift's windows
  of the full size A, so every window lies inside the image.

Shift-only and zoom-only draw exactly the random numbers of the separate generators they
replace, so their clips are unchanged by the combined form.
"""

from __future__ import annotations

import numpy as np

from training.data.augment import sample_crop_size

__all__ = ["crop_shift_windows", "crop_windows", "crop_zoom_windows", "rotation_angles"]


def _sorted_uniforms(t: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.random(t))


def crop_windows(
    height: int,
    width: int,
    t: int,
    crop_range: tuple[int, int],
    rng: np.random.Generator,
    shift: bool = True,
    zoom_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """T crop windows of an HxW image with crop-shift and/or crop-zoom motion.

    Args:
        height: image height H (after the pre-crop resize).
        width: image width W.
        t: number of frames T.
        crop_range: (lo, hi) range of the full crop size A (``sample_crop_size``).
        rng: the clip's generator.
        shift: move the window (crop-shift); False keeps its centre fixed.
        zoom_range: scale range of the last window relative to A; None: no zoom.

    Returns:
        Tx4 int64 windows (top, left, height, width), all inside the image.
    """
    ch, cw = sample_crop_size(height, width, crop_range, rng)
    y0 = int(rng.integers(0, height - ch + 1))
    x0 = int(rng.integers(0, width - cw + 1))
    y1, x1 = y0, x0
    if shift:
        y1 = int(rng.integers(y0, height - ch + 1))
        x1 = int(rng.integers(x0, width - cw + 1))
    zoom = float(rng.uniform(*zoom_range)) if zoom_range is not None else 1.0
    u = _sorted_uniforms(t, rng)
    # corner of the full-size window at frame i (the official crop-shift formula)
    tops_full = np.round(y0 * u + y1 * (1 - u)) if shift else np.full(t, float(y0))
    lefts_full = np.round(x0 * u + x1 * (1 - u)) if shift else np.full(t, float(x0))
    hs = np.maximum(np.round(ch * (1 + (zoom - 1) * u)), 1).astype(np.int64)
    ws = np.maximum(np.round(cw * (1 + (zoom - 1) * u)), 1).astype(np.int64)
    # a smaller window keeps the full window's centre: offset by half the size difference
    tops = np.clip(np.round(tops_full + (ch - hs) / 2), 0, height - hs).astype(np.int64)
    lefts = np.clip(np.round(lefts_full + (cw - ws) / 2), 0, width - ws).astype(np.int64)
    windows = np.stack([tops, lefts, hs, ws], axis=1)
    return windows[::-1].copy() if rng.random() < 0.5 else windows


def crop_shift_windows(
    height: int, width: int, t: int, crop_range: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Official crop-shift: a fixed-size crop whose corner moves monotonically (Tx4 windows)."""
    return crop_windows(height, width, t, crop_range, rng, shift=True, zoom_range=None)


def crop_zoom_windows(
    height: int,
    width: int,
    t: int,
    crop_range: tuple[int, int],
    zoom_range: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Crop-zoom (ours): a crop with a fixed centre whose size moves from A to ``z * A``."""
    return crop_windows(height, width, t, crop_range, rng, shift=False, zoom_range=zoom_range)


def rotation_angles(t: int, max_angle: float, rng: np.random.Generator) -> np.ndarray:
    """T angles ~ U[-max_angle, max_angle], sorted, reversed with p 0.5 (monotone rotation)."""
    angles = np.sort(rng.uniform(-max_angle, max_angle, size=t))
    return angles[::-1].copy() if rng.random() < 0.5 else angles
