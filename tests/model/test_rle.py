"""``model.rle`` against pycocotools on the exact call the YouTube-VIS evaluator makes."""

from __future__ import annotations

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
