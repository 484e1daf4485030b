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


def _to_coco(rle: Rle) -> dict[str, Any]:
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("utf-8")
    elif isinstance(counts, list):  # uncompressed RLE
        h, w = rle["size"]
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return {"size": list(rle["size"]), "counts": counts}


def decode(rle: Rle) -> np.ndarray:
    """RLE (compressed str/bytes or uncompressed list counts) -> HxW bool mask."""
    return mask_utils.decode(_to_coco(rle)).astype(bool)


def area(rle: Rle) -> int:
    """Number of foreground pixels."""
    return int(mask_utils.area(_to_coco(rle)))


def bbox(rle: Rle) -> tuple[float, float, float, float]:
    """Tight box (x, y, w, h) in pixels of the foreground; zeros when empty."""
    x, y, w, h = mask_utils.toBbox(_to_coco(rle)).tolist()
    return float(x), float(y), float(w), float(h)


def empty(height: int, width: int) -> Rle:
    """RLE of an all-zero HxW mask (what the reference writes for absent frames)."""
    return encode(np.zeros((height, width), dtype=np.uint8))
