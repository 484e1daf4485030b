"""``model.rle`` against pycocotools on the exact call the YouTube-VIS evaluator makes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from model import rle


def _reference_encode(mask: np.ndarray) -> dict[str, object]:
    out = mask_utils.encode(np.array(mask[:, :, None], order="F", dtype="uint8"))[0]
    return {"size": [int(v) for v in out["size"]], "counts": out["counts"].decode("utf-8")}


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    blobs = []
    for h, w in [(1, 1), (7, 5), (90, 126), (48, 85)]:
        blobs.append(np.zeros((h, w), dtype=bool))
        blobs.append(np.ones((h, w), dtype=bool))
        blobs.append(rng.random((h, w)) > 0.5)
        m = np.zeros((h, w), dtype=bool)
        m[h // 4 : 3 * h // 4 + 1, w // 3 : w // 2 + 1] = True
        blobs.append(m)
    return blobs


@pytest.mark.parametrize("index", range(16))
def test_encode_matches_pycocotools_and_round_trips(index: int) -> None:
    mask = _masks()[index]
    ours = rle.encode(mask)
    assert ours == _reference_encode(mask)
    assert isinstance(ours["counts"], str)
    np.testing.assert_array_equal(rle.decode(ours), mask)
    assert rle.area(ours) == int(mask.sum())
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    ref_box = (0.0, 0.0, 0.0, 0.0)
    if rows.size:
        ref_box = (cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0])
    assert rle.bbox(ours) == tuple(float(v) for v in ref_box)
    uncompressed = {"size": ours["size"], "counts": rle.counts_of(ours).tolist()}
    assert rle.area(uncompressed) == rle.area(ours)
    assert rle.bbox(uncompressed) == rle.bbox(ours)


def test_encode_many_accepts_torch_and_decodes_uncompressed() -> None:
    masks = torch.from_numpy(np.stack(_masks()[8:12]))
    out = rle.encode_many(masks)
    assert out == [_reference_encode(m) for m in masks.numpy()]
    assert rle.encode_many(torch.zeros(0, 4, 4, dtype=torch.bool)) == []
    uncompressed = {"size": [2, 3], "counts": [1, 2, 3]}
    expected = np.array([[False, True, False], [True, False, False]])
    np.testing.assert_array_equal(rle.decode(uncompressed), expected)
    assert rle.empty(3, 4) == _reference_encode(np.zeros((3, 4), dtype=bool))
    with pytest.raises(ValueError):
        rle.decode({"size": [2, 2], "counts": [1, 2]})


def _coco_decode(coded: dict[str, object]) -> np.ndarray:
    """``pycocotools.mask.decode`` as a bool mask (its ``__array__`` predates NumPy 2's
    ``copy`` keyword and warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.asarray(mask_utils.decode(coded)).astype(bool)


def _random_masks() -> list[np.ndarray]:
    """Empty, full, noise and blob masks of odd and degenerate sizes."""
    rng = np.random.default_rng(1)
    masks = []
    for h, w in [(1, 1), (1, 9), (9, 1), (3, 7), (31, 17), (101, 63), (720, 1280)]:
        masks.append(np.zeros((h, w), dtype=bool))
        masks.append(np.ones((h, w), dtype=bool))
        for density in (0.01, 0.5, 0.99):
            masks.append(rng.random((h, w)) < density)
        yy, xx = np.mgrid[:h, :w]
        masks.append((yy - h / 3) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2)
    return masks


def test_decode_inverts_encode_and_matches_pycocotools() -> None:
    for mask in _random_masks():
        encoded = rle.encode(mask)
        decoded = rle.decode(encoded)
        assert decoded.dtype == bool and decoded.shape == mask.shape
        np.testing.assert_array_equal(decoded, mask)
        as_bytes = {"size": encoded["size"], "counts": encoded["counts"].encode()}
        np.testing.assert_array_equal(rle.decode(as_bytes), mask)
        np.testing.assert_array_equal(_coco_decode(as_bytes), mask)
        assert int(rle.counts_of(encoded).sum()) == mask.size


def test_decode_of_a_coco_counts_string() -> None:
    # A 4x5 mask as pycocotools writes it: runs 6 bg, 3 fg, 2 bg, 3 fg, 6 bg, one character
    # each (value + 48); the fourth and fifth runs are stored as differences from the runs
    # two before them ("0" = 3 - 3, "4" = 6 - 2).
    coco = {"size": [4, 5], "counts": "63204"}
    flat = np.zeros(20, dtype=bool)
    flat[6:9] = flat[11:14] = True
    expected = flat.reshape(5, 4).T  # column-major
    np.testing.assert_array_equal(rle.counts_of(coco), [6, 3, 2, 3, 6])
    np.testing.assert_array_equal(rle.decode(coco), expected)
    np.testing.assert_array_equal(_coco_decode({**coco, "counts": b"63204"}), expected)
    assert rle.encode(expected) == coco
    # multi-character and negative deltas: runs 100 bg, 50 fg, 30 bg, 20 fg (20 - 50 < 0)
    runs = [100, 50, 30, 20, 200]
    mask = np.repeat((np.arange(len(runs)) % 2).astype(bool), runs).reshape(20, 20).T
    encoded = rle.encode(mask)
    np.testing.assert_array_equal(rle.counts_of(encoded), runs)
    np.testing.assert_array_equal(rle.decode(encoded), mask)
    with pytest.raises(ValueError):
        rle.decode({"size": [4, 5], "counts": "632"})  # runs sum to 11, not 20
    with pytest.raises(ValueError):
        rle.counts_of({"size": [4, 5], "counts": "6P"})  # "P" (0x20 set) continues the run
