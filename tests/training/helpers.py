"""Small helpers shared by the training tests."""

from __future__ import annotations

import numpy as np


def erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion of an HxW mask by a (2r+1)x(2r+1) square (wrapping at the borders)."""
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out &= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return out
