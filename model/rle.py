"""COCO run-length encoding of binary masks, byte-identical to the YouTube-VIS evaluator.

The reference writes ``pycocotools.mask.encode(np.array(mask[:, :, None], order="F",
dtype="uint8"))[0]`` with ``counts`` decoded to ``str``; ``encode`` here does exactly that,
batched over instances.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

Rle = dict[str, Any]
MaskLike = np.ndarray | torch.Tensor


def _to_fortran_stack(masks: MaskLike) -> np.ndarray:
    """HxW or NxHxW bool/uint8 -> Fortran-ordered uint8 HxWxN."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().to("cpu", torch.uint8).numpy()
    arr = np.asarray(masks)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected HxW or NxHxW masks, got shape {arr.shape}")
    return np.asfortranarray(arr.astype(np.uint8, copy=False).transpose(1, 2, 0))


def _str_counts(rle: dict[str, Any]) -> Rle:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("utf-8")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def encode(mask: MaskLike) -> Rle:
    """One HxW binary mask -> ``{"size": [H, W], "counts": str}`` (compressed COCO RLE)."""
    return encode_many(mask)[0]


def encode_many(masks: MaskLike) -> list[Rle]:
    """NxHxW binary masks (numpy or torch, any device) -> N compressed RLEs (str counts)."""
    stack = _to_fortran_stack(masks)
    if stack.shape[2] == 0:
        return []
    return [_str_counts(r) for r in mask_utils.encode(stack)]


def _counts_from_string(text: str | bytes) -> np.ndarray:
    """Inverse of pycocotools ``rleToString``, vectorised (pycocotools keeps its run lengths
    in C and exposes none of them).

    Each run length is a little-endian group of 5-bit chunks, one character each (value + 48);
    bit 0x20 marks that another chunk follows and bit 0x10 of the last one is the sign. From
    the fourth run on, a run is stored as its difference from the run two before it.
    """
    raw = text.encode("ascii") if isinstance(text, str) else text
    chars = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = np.flatnonzero((chars & 0x20) == 0)  # the final character of each run
    if last.size == 0 or last[-1] != chars.size - 1:
        raise ValueError("RLE counts string ends inside a run length")
    first = np.concatenate(([0], last[:-1] + 1))
    chunk = np.arange(chars.size) - np.repeat(first, last - first + 1)
    values = np.add.reduceat((chars & 0x1F) << (5 * chunk), first)
    negative = (chars[last] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * (chunk[last[negative]] + 1))
    counts = values.copy()
    counts[1::2] = np.cumsum(values[1::2])  # run 3 adds run 1, run 5 adds run 3, ...
    counts[2::2] = np.cumsum(values[2::2])  # run 4 adds run 2, ...
    return counts


def counts_of(rle: Rle) -> np.ndarray:
    """Run lengths (column-major, starting with a background run) of an RLE."""
    counts = rle["counts"]
    if isinstance(counts, list):
        return np.asarray(counts, dtype=np.int64)
    return _counts_from_string(counts)


def decode(rle: Rle) -> np.ndarray:
    """RLE (compressed str/bytes or uncompressed list counts) -> HxW bool mask.

    Expands the runs with ``np.repeat`` rather than ``pycocotools.mask.decode``, whose C loop
    writes one byte at a time: on 720x1280 masks with a few hundred runs that is ~0.05 ms
    against ~1 ms, and it leaves the pixels after a too-short run list uninitialised instead
    of failing. The result equals pycocotools' (``tests/model/test_rle.py``).
    """
    h, w = (int(v) for v in rle["size"])
    counts = counts_of(rle)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected {h * w}")
    values = (np.arange(len(counts)) % 2).astype(bool)
    return np.repeat(values, counts).reshape(w, h).T


def _compressed(rle: Rle) -> dict[str, Any] | None:
    """The RLE as pycocotools' C routines take it (bytes counts), or None if uncompressed."""
    counts = rle["counts"]
    if isinstance(counts, list):
        return None
    raw = counts.encode("ascii") if isinstance(counts, str) else counts
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": raw}


def area(rle: Rle) -> int:
    """Number of foreground pixels (pycocotools' C routine on the runs; no decode)."""
    coco = _compressed(rle)
    if coco is None:
        return int(counts_of(rle)[1::2].sum())
    return int(mask_utils.area(coco))


def areas(rles: list[Rle]) -> list[int]:
    """``area`` of each RLE."""
    return [area(r) for r in rles]


def bbox(rle: Rle) -> tuple[float, float, float, float]:
    """Tight box (x, y, w, h) in pixels of the foreground; zeros when empty.

    Compressed RLEs go through pycocotools' ``toBbox``, which walks the runs (~0.02 ms for a
    720x1280 mask, against ~0.9 ms to decode it and scan rows and columns).
    """
    coco = _compressed(rle)
    if coco is not None:
        x, y, w, h = (float(v) for v in mask_utils.toBbox(coco))
        return x, y, w, h
    mask = decode(rle)
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return 0.0, 0.0, 0.0, 0.0
    x0, y0 = float(cols[0]), float(rows[0])
    return x0, y0, float(cols[-1] + 1) - x0, float(rows[-1] + 1) - y0


def empty(height: int, width: int) -> Rle:
    """RLE of an all-zero HxW mask (what the reference writes for absent frames)."""
    return encode(np.zeros((height, width), dtype=np.uint8))
