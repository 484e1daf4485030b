"""Mask2Former set criterion with point sampling, and the CTVIS contrastive (re-id) loss.

Segmentation (the official ``SetCriterion``, ``mask2former/modeling/criterion.py`` vendored in
https://github.com/KainingYing/CTVIS): every prediction layer (final + aux) is matched to the
targets on its own; ``loss_ce`` is a class-weighted cross-entropy over all queries (no-object
weight 0.1), ``loss_mask`` / ``loss_dice`` are evaluated at 12544 points per matched mask
picked by PointRend importance sampling (3x oversampling, 75 % most uncertain, rest uniform).
Re-id (the official ``loss_reid`` in ``ctvis/modeling/cl_plugin/ct_cl_plugin.py``; paper eq. 5,
arXiv:2307.12616): per contrastive item ``log(1 + sum_j exp(z_j - z_+))`` and the auxiliary
``mean (cos - label)^2``, both averaged over items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.matcher import MatchCosts, hungarian_match_batch, point_sample

__all__ = [
    "ContrastiveItem",
    "FrameTarget",
    "dice_loss",
    "reid_losses",
    "segmentation_losses",
    "sigmoid_ce_loss",
    "uncertain_point_coords",
    "weighted_total",
]

Indices = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class FrameTarget:
    """Ground truth of one frame for the criterion.

    Attributes:
        labels: N int64 classes of the valid instances.
        masks: NxHpxWp bool masks, zero-padded like the input pixels.
    """

    labels: torch.Tensor
    masks: torch.Tensor


@dataclass(frozen=True)
class ContrastiveItem:
    """One contrastive item: similarities of an anchor to its keys (positives first).

    Attributes:
        dot_product: N dot products ``key . anchor``.
        cosine_similarity: N cosine similarities.
        label: N int64, 1 for positives, 0 for negatives.
    """

    dot_product: torch.Tensor
    cosine_similarity: torch.Tensor
    label: torch.Tensor


def uncertain_point_coords(
    mask_logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_ratio: float
) -> torch.Tensor:
    """PointRend point selection with randomness (uncertainty = ``-|logit|``).

    Args:
        mask_logits: Nx1xhxw coarse logits.
        num_points: points per mask.
        oversample_ratio: candidates drawn = ``int(num_points * oversample_ratio)``.
        importance_ratio: fraction kept as the most uncertain candidates.

    Returns:
        NxPx2 normalised (x, y) points in [0, 1].
    """
    n = mask_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, num_sampled, 2, device=mask_logits.device)
    uncertainty = -point_sample(mask_logits, coords).abs()
    num_uncertain = int(importance_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(uncertainty[:, 0, :], k=num_uncertain, dim=1)[1]
    idx = idx + num_sampled * torch.arange(n, device=mask_logits.device)[:, None]
    coords = coords.view(-1, 2)[idx.view(-1), :].view(n, num_uncertain, 2)
    if num_random > 0:
        extra = torch.rand(n, num_random, 2, device=mask_logits.device)
        coords = torch.cat([coords, extra], dim=1)
    return coords


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Args: logits, targets NxP. Returns: sum over masks of the mean BCE / num_masks."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Args: logits, targets NxP. Returns: summed ``1 - dice`` / num_masks."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def _match_all(
    logits: torch.Tensor, masks: torch.Tensor, targets: Sequence[FrameTarget], costs: MatchCosts
) -> Indices:
    return hungarian_match_batch(
        logits, masks, [t.labels for t in targets], [t.masks for t in targets], costs
    )


def _layer_losses(
    logits: torch.Tensor,
    masks: torch.Tensor,
    targets: Sequence[FrameTarget],
    indices: Indices,
    num_masks: float,
    empty_weight: torch.Tensor,
    point_cfg: tuple[int, float, float],
) -> dict[str, torch.Tensor]:
    """``loss_ce``, ``loss_mask``, ``loss_dice`` of one prediction layer over the batch."""
    b, q = logits.shape[:2]
    num_classes = logits.shape[2] - 1
    target_classes = torch.full((b, q), num_classes, dtype=torch.int64, device=logits.device)
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    batch_idx, src_idx = batch_idx.to(logits.device), src_idx.to(logits.device)
    if src_idx.numel():
        matched = torch.cat([t.labels[tgt] for t, (_, tgt) in zip(targets, indices, strict=True)])
        target_classes[batch_idx, src_idx] = matched.to(logits.device)
    loss_ce = F.cross_entropy(logits.float().transpose(1, 2), target_classes, empty_weight)
    if src_idx.numel() == 0:
        zero = masks.sum() * 0.0
        return {"loss_ce": loss_ce, "loss_mask": zero, "loss_dice": zero}
    src_masks = masks[batch_idx, src_idx][:, None]
    tgt_masks = torch.cat([t.masks[tgt] for t, (_, tgt) in zip(targets, indices, strict=True)])
    tgt_masks = tgt_masks[:, None].to(src_masks.dtype)
    num_points, oversample, importance = point_cfg
    with torch.no_grad():
        coords = uncertain_point_coords(src_masks, num_points, oversample, importance)
        point_labels = point_sample(tgt_masks, coords)[:, 0]
    point_logits = point_sample(src_masks, coords)[:, 0]
    point_logits, point_labels = point_logits.float(), point_labels.float()
    return {
        "loss_ce": loss_ce,
        "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
        "loss_dice": dice_loss(point_logits, point_labels, num_masks),
    }


def segmentation_losses(
    predictions: Sequence[Mapping[str, torch.Tensor]],
    targets: Sequence[FrameTarget],
    num_masks: float,
    costs: MatchCosts = MatchCosts(),
    no_object_weight: float = 0.1,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> tuple[dict[str, torch.Tensor], Indices]:
    """Set-criterion losses of the final prediction and every auxiliary one (unweighted).

    Args:
        predictions: final prediction first, then the aux ones (learnable queries first);
            each has ``pred_logits`` Bx Qx(K+1) and ``pred_masks`` BxQxhxw.
        targets: B frame targets (valid instances only, masks padded to HpxWp).
        num_masks: valid target masks in the batch (all-reduced mean over ranks, >= 1).
        costs: matcher weights; ``costs.num_points`` is also the loss point count.
        no_object_weight: cross-entropy weight of the no-object class.
        oversample_ratio: PointRend oversampling.
        importance_sample_ratio: PointRend importance fraction.

    Returns:
        (losses ``loss_ce``, ``loss_mask``, ``loss_dice`` and ``loss_*_i`` for aux layer i;
        the final layer's matching indices per frame as (query, target) index pairs).
    """
    first = predictions[0]["pred_logits"]
    num_classes = first.shape[2] - 1
    empty_weight = torch.ones(num_classes + 1, device=first.device)
    empty_weight[-1] = no_object_weight
    point_cfg = (costs.num_points, oversample_ratio, importance_sample_ratio)
    losses: dict[str, torch.Tensor] = {}
    final_indices: Indices = []
    for layer, pred in enumerate(predictions):
        logits, masks = pred["pred_logits"], pred["pred_masks"]
        indices = _match_all(logits, masks, targets, costs)
        out = _layer_losses(logits, masks, targets, indices, num_masks, empty_weight, point_cfg)
        suffix = "" if layer == 0 else f"_{layer - 1}"
        losses.update({k + suffix: v for k, v in out.items()})
        if layer == 0:
            final_indices = indices
    return losses, final_indices


def reid_losses(
    items: Sequence[ContrastiveItem], fallback: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Official CTVIS ``loss_reid`` (``reduce=False``): unweighted, averaged over items.

    Per item with positives ``p_i`` and negatives ``n_j`` (dot products):
    ``loss_reid = logsumexp([n_j - p_i for all i, j] + [0])`` and
    ``loss_aux_reid = mean((cos - label)^2)``.

    Args:
        items: contrastive items of the whole (per-rank) batch.
        fallback: tensor whose ``sum() * 0`` is returned when there are no items (keeps the
            graph connected, e.g. ``pred_embeds``).

    Returns:
        ``{"loss_reid": 0-dim, "loss_aux_reid": 0-dim}``.
    """
    if not items:
        zero = fallback.sum() * 0
        return {"loss_reid": zero, "loss_aux_reid": zero}
    reid, aux = [], []
    for item in items:
        dots = item.dot_product.reshape(-1).float()
        cos = item.cosine_similarity.reshape(-1).float()
        label = item.label.reshape(-1)
        pos, neg = dots[label == 1], dots[label == 0]
        diffs = (neg[None, :] - pos[:, None]).reshape(-1)
        reid.append(torch.logsumexp(F.pad(diffs, (0, 1)), dim=0))
        aux.append(((cos - label.to(cos.dtype)) ** 2).mean())
    return {"loss_reid": torch.stack(reid).mean(), "loss_aux_reid": torch.stack(aux).mean()}


def weighted_total(
    losses: Mapping[str, torch.Tensor], weights: Mapping[str, float]
) -> torch.Tensor:
    """Sum of ``weights[base] * loss`` where ``base`` drops an aux suffix ``_<digits>``.

    Args:
        losses: unweighted loss terms (``loss_ce_3`` uses the weight of ``loss_ce``).
        weights: weight per base name; a term without a weight is an error.
    """
    total: torch.Tensor | None = None
    for name, value in losses.items():
        base, _, tail = name.rpartition("_")
        key = base if tail.isdigit() else name
        term = weights[key] * value
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no loss terms")
    return total
