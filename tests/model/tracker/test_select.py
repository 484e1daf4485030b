"""Per-frame candidate selection (official ``CTVISModel.inference_video``)."""

from __future__ import annotations

import math

import pytest
import torch

from model.config import TrackerConfig, TrackerOptionError, validate_tracker_config
from model.tracker.select import (
    binarize,
    box_iou,
    mask_boxes,
    mask_iou_matrix,
    mask_nms,
    select_candidates,
)


def _logits(probs: list[float]) -> torch.Tensor:
    """Qx3 logits (2 classes + no-object) whose max foreground probability is ``probs``."""
    return torch.tensor([[math.log(p), math.log(1e-4), math.log(1 - p - 1e-4)] for p in probs])


def _square(y: int, x: int, size: int = 4, hw: int = 12) -> torch.Tensor:
    m = torch.full((hw, hw), -5.0)
    m[y : y + size, x : x + size] = 5.0
    return m


def test_sorted_thresholded_and_nms() -> None:
    logits = _logits([0.2, 0.9, 0.005, 0.5, 0.6])
    masks = torch.stack([_square(0, 0), _square(6, 6), _square(0, 6), _square(0, 1), _square(6, 6)])
    det = select_candidates(logits, masks, torch.eye(5), TrackerConfig())
    # q2 below 0.01 dropped; q4 duplicates q1 (IoU 1); q3 (IoU 12/20 = 0.6, not > 0.6) kept.
    assert det.query_indices.tolist() == [1, 3, 0]
    torch.testing.assert_close(det.scores, torch.tensor([0.9, 0.5, 0.2]))
    torch.testing.assert_close(det.embeds, torch.eye(5)[[1, 3, 0]])
    assert det.logits.shape == (3, 3) and det.mask_logits.shape == (3, 12, 12)


def test_keep_top1_when_nothing_passes() -> None:
    logits = _logits([0.004, 0.006, 0.002])
    det = select_candidates(logits, torch.zeros(3, 4, 4), torch.zeros(3, 2), TrackerConfig())
    assert det.query_indices.tolist() == [1]


def test_empty_masks_suppress_each_other() -> None:
    empty = torch.full((2, 6, 6), -1.0)
    iou = mask_iou_matrix(empty.sigmoid() > 0.5)
    torch.testing.assert_close(iou, torch.ones(2, 2))
    assert mask_nms(empty, 0.6).tolist() == [True, False]
    mixed = torch.stack([_square(0, 0, hw=6), torch.full((6, 6), -1.0), torch.full((6, 6), -1.0)])
    assert mask_nms(mixed, 0.6).tolist() == [True, True, False]


def test_nms_chain_only_kept_masks_suppress() -> None:
    # a suppresses b; b would suppress c, but b is gone so c survives.
    a, b, c = _square(0, 0, 6), _square(0, 2, 6), _square(0, 4, 6)
    assert mask_nms(torch.stack([a, b, c]), 0.3).tolist() == [True, False, True]


def test_binarize_matches_sigmoid_threshold_near_zero() -> None:
    tiny = torch.tensor([0.0, 1e-9, 2e-8, 3e-8, 6e-8, 1e-7, 5e-7, 2e-6, -1e-9, -1.0, 1.0])
    values = torch.cat([tiny, torch.randn(1000)])
    assert torch.equal(binarize(values), values.sigmoid() > 0.5)
    assert not bool(binarize(torch.tensor([1e-9]))[0])  # sigmoid rounds to exactly 0.5
    # masks (rows of dim 0): only rows holding a tiny positive logit are re-checked
    masks = torch.randn(6, 7, 9)
    masks[2, 3, 4], masks[4, 0, 0], masks[5] = 3e-8, 1e-9, -1.0
    assert torch.equal(binarize(masks), masks.sigmoid() > 0.5)
    assert binarize(torch.zeros(0, 4, 4)).shape == (0, 4, 4)
    # the 0 / 1 float form used by the NMS, including signed zeros, denormals and NaN
    masks[1, 0, :4] = torch.tensor([0.0, -0.0, 1e-40, float("nan")])
    expected = masks.sigmoid() > 0.5
    assert torch.equal(binarize(masks), expected)
    as_float = binarize(masks, torch.float32)
    assert as_float.dtype == torch.float32 and torch.equal(as_float, expected.float())


def test_mask_boxes_match_a_brute_force_scan() -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(20, 9, 13, generator=g) > 0.93  # sparse: some rows / columns empty
    masks[3] = False  # an empty mask
    masks[4] = False
    masks[4, 8, 12] = True  # one pixel in the last corner
    logits = torch.where(masks, 2.0, -3.0)
    boxes = mask_boxes(logits)
    for i in range(masks.shape[0]):
        ys, xs = torch.nonzero(masks[i], as_tuple=True)
        if ys.numel() == 0:
            assert torch.isnan(boxes[i]).all()
            continue
        expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert boxes[i].tolist() == [float(v) for v in expected], i
    assert boxes[4].tolist() == [12.0, 8.0, 13.0, 9.0]
    assert mask_boxes(torch.zeros(0, 9, 13)).shape == (0, 4)


def test_box_iou_values_and_unknown_boxes() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [float("nan")] * 4])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    iou = box_iou(a, b)
    expected = torch.tensor([[1 / 7, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(iou, expected)


def test_mask_logit_offset_grows_masks_before_nms() -> None:
    # two 4x4 squares one pixel apart, each with a one-pixel ring of logit -0.5 around it:
    # without the offset the rings are background and the masks do not overlap; with +1 the
    # rings join both masks (6x6 each, sharing one 6-pixel column: IoU 6 / 66 > 0.05) and
    # the second is suppressed
    def ringed(x: int) -> torch.Tensor:
        m = torch.full((12, 12), -5.0)
        m[2:8, x - 1 : x + 5] = -0.5
        m[3:7, x : x + 4] = 5.0
        return m

    logits = _logits([0.9, 0.8])
    masks = torch.stack([ringed(1), ringed(6)])
    plain = select_candidates(logits, masks, torch.eye(2), TrackerConfig(mask_nms_threshold=0.05))
    assert plain.query_indices.tolist() == [0, 1]
    torch.testing.assert_close(plain.mask_logits, masks)
    grown_cfg = TrackerConfig(mask_nms_threshold=0.05, mask_logit_offset=1.0)
    grown = select_candidates(logits, masks, torch.eye(2), grown_cfg)
    assert grown.query_indices.tolist() == [0]
    torch.testing.assert_close(grown.mask_logits, masks[:1] + 1.0)
    assert int((grown.mask_logits[0] > 0).sum()) == 36 and int((masks[0] > 0).sum()) == 16


def test_mask_logit_offset_is_validated() -> None:
    validate_tracker_config(TrackerConfig(mask_logit_offset=1.5))
    for bad in (11.0, -11.0, float("nan")):
        with pytest.raises(TrackerOptionError, match="'mask_logit_offset' must be a number in"):
            validate_tracker_config(TrackerConfig(mask_logit_offset=bad))
