"""Criterion and re-id loss tests, incl. parity with the official ``loss_reid`` fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training.config import ClConfig
from training.consistent import clip_items, criterion_slot_to_query
from training.losses import (
    ContrastiveItem,
    FrameTarget,
    dice_loss,
    reid_losses,
    segmentation_losses,
    sigmoid_ce_loss,
    uncertain_point_coords,
    weighted_total,
)
from training.matcher import MatchCosts

TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def reid_cases(fixtures_dir: Path) -> dict:
    return torch.load(fixtures_dir / "reid_loss_cases.pt", weights_only=True)


def test_reid_loss_cases_match_official(reid_cases: dict) -> None:
    assert len(reid_cases["cases"]) == 5
    for case in reid_cases["cases"]:
        items = [ContrastiveItem(**item) for item in case["items"]]
        fallback = torch.randn(2, 3, requires_grad=True)
        got = reid_losses(items, fallback)
        torch.testing.assert_close(got["loss_reid"], case["loss_reid"], **TOL)
        torch.testing.assert_close(got["loss_aux_reid"], case["loss_aux_reid"], **TOL)


def test_reid_items_rebuilt_from_embeddings_match_official(reid_cases: dict) -> None:
    for case in reid_cases["cases"]:
        for emb, item in zip(case["embeddings"], case["items"], strict=True):
            keys = torch.cat([emb["positives"], emb["negatives"]])
            dots = keys @ emb["anchor"][0]
            cos = F.normalize(keys, dim=-1) @ F.normalize(emb["anchor"][0], dim=0)
            torch.testing.assert_close(dots, item["dot_product"][:, 0], **TOL)
            torch.testing.assert_close(cos, item["cosine_similarity"][:, 0], **TOL)


def test_reid_empty_keeps_graph() -> None:
    fallback = torch.randn(2, 3, requires_grad=True)
    got = reid_losses([], fallback)
    assert float(got["loss_reid"].detach()) == 0.0
    got["loss_reid"].backward()
    assert fallback.grad is not None


def test_get_reid_loss_end_to_end_matches_official(reid_cases: dict) -> None:
    case = reid_cases["get_reid_loss_end_to_end"]
    t_len = case["sampling_frame_num"]
    cfg = ClConfig(num_negatives=case["num_negatives"])
    items = []
    embeds_all = torch.stack([o["pred_embeds"] for o in case["outputs_list"]], 1)  # BxTxQxD
    embeds_all.requires_grad_(True)
    for b in range(embeds_all.shape[0]):
        valid = torch.stack([case["targets_list"][t][b]["valid"] for t in range(t_len)])
        indices = [tuple(case["indices_list"][t][b]) for t in range(t_len)]
        slots = [torch.arange(valid.shape[1])] * t_len
        s2q = criterion_slot_to_query(indices, slots, valid.shape[1])
        items += clip_items(embeds_all[b], s2q, valid, cfg)
    got = reid_losses(items, embeds_all)
    torch.testing.assert_close(got["loss_reid"], case["loss_reid"], **TOL)
    torch.testing.assert_close(got["loss_aux_reid"], case["loss_aux_reid"], **TOL)
    weights = case["weight_dict"]
    for name in ("loss_reid", "loss_aux_reid"):
        want = torch.as_tensor(case["weighted"][name], dtype=torch.float32)
        torch.testing.assert_close(weights[name] * got[name].detach(), want, **TOL)
    (got["loss_reid"] + got["loss_aux_reid"]).backward()
    assert embeds_all.grad is not None and float(embeds_all.grad.abs().sum()) > 0


def test_point_losses_match_dense_formulas() -> None:
    logits = torch.randn(3, 50)
    targets = (torch.rand(3, 50) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / 2
    torch.testing.assert_close(sigmoid_ce_loss(logits, targets, 2.0), bce)
    p = logits.sigmoid()
    dice = (1 - (2 * (p * targets).sum(1) + 1) / (p.sum(1) + targets.sum(1) + 1)).sum() / 2
    torch.testing.assert_close(dice_loss(logits, targets, 2.0), dice)


def test_uncertain_points_prefer_the_boundary() -> None:
    torch.manual_seed(0)
    x = (torch.arange(32) + 0.5) / 32
    logits = (100 * (x - 0.5)).expand(1, 1, 32, 32)  # |logit| grows away from x = 0.5
    coords = uncertain_point_coords(logits, 400, 3.0, 0.75)
    assert coords.shape == (1, 400, 2)
    # the 300 most uncertain of 1200 candidates: near x = 0.5, or near the border where the
    # zero padding of grid_sample pulls the logits towards 0
    top = coords[0, :300]
    inner = ((top > 0.1) & (top < 0.9)).all(-1)
    assert int(inner.sum()) > 100
    assert float((top[inner, 0] - 0.5).abs().max()) < 0.2
    assert float((coords[0, 300:, 0] - 0.5).abs().max()) > 0.3  # the uniform remainder


def _toy_predictions(q: int = 5, k: int = 3, layers: int = 2) -> list[dict[str, torch.Tensor]]:
    return [
        {
            "pred_logits": torch.randn(2, q, k + 1, requires_grad=True),
            "pred_masks": torch.randn(2, q, 8, 8, requires_grad=True),
        }
        for _ in range(layers)
    ]


def test_segmentation_losses_keys_and_backward() -> None:
    torch.manual_seed(0)
    preds = _toy_predictions()
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 4:20, 4:20] = True
    masks[1, 10:30, 2:12] = True
    targets = [FrameTarget(torch.tensor([0, 2]), masks), FrameTarget(torch.tensor([1]), masks[:1])]
    losses, indices = segmentation_losses(preds, targets, 3.0, MatchCosts(num_points=64))
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0",
                           "loss_dice_0"}  # fmt: skip
    assert [len(src) for src, _ in indices] == [2, 1]
    weights = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    total = weighted_total(losses, weights)
    total.backward()
    assert all(p.grad is not None for pred in preds for p in pred.values())


def test_segmentation_losses_without_targets_is_class_only() -> None:
    preds = _toy_predictions(layers=1)
    empty = FrameTarget(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 32, 32, dtype=torch.bool))
    losses, _ = segmentation_losses(preds, [empty, empty], 1.0, MatchCosts(num_points=16))
    assert float(losses["loss_mask"].detach()) == 0.0
    # all queries are no-object: the weighted CE equals the plain CE to class K
    logits = preds[0]["pred_logits"]
    want = F.cross_entropy(logits.transpose(1, 2), torch.full((2, 5), 3))
    torch.testing.assert_close(losses["loss_ce"], want)
