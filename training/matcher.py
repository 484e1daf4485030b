"""Mask2Former Hungarian matcher with point sampling.

Follows the official ``HungarianMatcher`` (``mask2former/modeling/matcher.py``, vendored in
https://github.com/KainingYing/CTVIS).

Per image: ``C = w_mask * cost_mask + w_class * cost_class + w_dice * cost_dice`` where the mask
costs are evaluated at ``num_points`` uniform random points shared by every prediction and
target of the image, and the assignment is scipy's ``linear_sum_assignment`` (rows = queries,
ascending). Matching never builds a graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = [
    "MatchCosts",
    "batch_dice_cost",
    "batch_sigmoid_ce_cost",
    "hungarian_match",
    "hungarian_match_batch",
    "point_sample",
]


@dataclass(frozen=True)
class MatchCosts:
    """Cost weights and point count of the matcher (official ``MODEL.MASK_FORMER.*``)."""

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    num_points: int = 12544


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample maps at normalised points (detectron2 ``point_sample``).

    Args:
        inputs: NxCxHxW maps.
        coords: NxPx2 points (x, y) in [0, 1] x [0, 1] of the map's extent.

    Returns:
        NxCxP values (``grid_sample`` with ``align_corners=False``, zero padding).
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2)
    return F.grid_sample(inputs, grid, mode="bilinear", align_corners=False).squeeze(3)


def batch_sigmoid_ce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise mean binary cross-entropy.

    Args:
        logits: [...]xQxP prediction logits at the sampled points.
        targets: [...]xNxP float targets in {0, 1} at the same points (same leading dims).

    Returns:
        [...]xQxN mean over points of BCE-with-logits(logits_q, targets_n).
    """
    num_points = logits.shape[-1]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    cost = torch.einsum("...qp,...np->...qn", pos, targets) + torch.einsum(
        "...qp,...np->...qn", neg, 1 - targets
    )
    return cost / num_points


def batch_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise dice cost ``1 - (2 sum(s t) + 1) / (sum s + sum t + 1)`` with ``s = sigmoid``.

    Args:
        logits: [...]xQxP prediction logits. targets: [...]xNxP float targets.

    Returns:
        [...]xQxN dice costs.
    """
    probs = logits.sigmoid()
    numerator = 2 * torch.einsum("...qp,...np->...qn", probs, targets)
    denominator = probs.sum(-1)[..., :, None] + targets.sum(-1)[..., None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def _total_cost(
    costs: MatchCosts, out: torch.Tensor, tgt: torch.Tensor, cost_class: torch.Tensor
) -> torch.Tensor:
    """The matcher's weighted cost from point logits ``out`` and point targets ``tgt``."""
    return (
        costs.mask_weight * batch_sigmoid_ce_cost(out, tgt)
        + costs.class_weight * cost_class
        + costs.dice_weight * batch_dice_cost(out, tgt)
    )


@torch.no_grad()
def hungarian_match(
    logits: torch.Tensor,
    mask_logits: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    costs: MatchCosts = MatchCosts(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match the Q predictions of one image to its N targets.

    Args:
        logits: Qx(K+1) class logits.
        mask_logits: Qxhxw mask logits (at 1/4 of the padded input).
        labels: N int64 target classes (may include the no-object index K for CL targets).
        masks: NxHxW target masks (bool or float), any resolution; point coordinates are
            normalised to each map's own extent.
        costs: weights and point count.

    Returns:
        (query indices, target indices), both int64 [min(Q, N)] on CPU, sorted by query.
    """
    q, n = logits.shape[0], labels.shape[0]
    if n == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    probs = logits.float().softmax(-1)
    cost_class = -probs[:, labels]
    coords = torch.rand(1, costs.num_points, 2, device=mask_logits.device)
    tgt = point_sample(masks[:, None].to(mask_logits.dtype), coords.repeat(n, 1, 1))[:, 0]
    out = point_sample(mask_logits[:, None], coords.repeat(q, 1, 1))[:, 0]
    total = _total_cost(costs, out.float(), tgt.float(), cost_class)
    rows, cols = linear_sum_assignment(total.cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


@torch.no_grad()
def hungarian_match_batch(
    logits: torch.Tensor,
    mask_logits: torch.Tensor,
    labels: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    costs: MatchCosts = MatchCosts(),
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``hungarian_match`` for every image of a batch, with the costs built in one pass.

    The same result as calling ``hungarian_match`` image by image (on the CPU the same random
    points, drawn in the same order from the global generator, so costs agree up to float
    rounding; CUDA's generator is not serial, so there it is an equally uniform draw): the B
    cost matrices come from a handful of batched ops over targets padded to the largest
    count, then each image's ``linear_sum_assignment`` runs on its own slice. Falls back to
    the per-image loop when the target masks differ in size.

    Args:
        logits: BxQx(K+1) class logits.
        mask_logits: BxQxhxw mask logits.
        labels: B tensors of N_b int64 target classes.
        masks: B tensors of N_bxHxW target masks (bool or float).
        costs: weights and point count.

    Returns:
        B (query indices, target indices) pairs as ``hungarian_match`` returns them.
    """
    counts = [int(x.shape[0]) for x in labels]
    filled = [b for b, n in enumerate(counts) if n > 0]
    if len({tuple(masks[b].shape[1:]) for b in filled}) > 1:
        return [
            hungarian_match(logits[b], mask_logits[b], labels[b], masks[b], costs)
            for b in range(len(counts))
        ]
    empty = torch.zeros(0, dtype=torch.int64)
    out: list[tuple[torch.Tensor, torch.Tensor]] = [(empty, empty)] * len(counts)
    if not filled:
        return out
    n_max = max(counts)
    idx = torch.tensor(filled, device=logits.device)
    height, width = masks[filled[0]].shape[1:]
    padded_masks = mask_logits.new_zeros(len(filled), n_max, height, width)
    padded_labels = torch.zeros(len(filled), n_max, dtype=torch.int64, device=logits.device)
    for i, b in enumerate(filled):
        padded_masks[i, : counts[b]] = masks[b].to(padded_masks.dtype)
        padded_labels[i, : counts[b]] = labels[b]
    # on the CPU one draw for all images = the per-image draws in order (a serial generator)
    coords = torch.rand(len(filled), costs.num_points, 2, device=mask_logits.device)
    tgt = point_sample(padded_masks, coords).float()  # B'xNxP
    pred = point_sample(mask_logits[idx], coords).float()  # B'xQxP
    probs = logits[idx].float().softmax(-1)
    cost_class = -probs.gather(2, padded_labels[:, None, :].expand(-1, probs.shape[1], -1))
    total = _total_cost(costs, pred, tgt, cost_class).cpu().numpy()
    for i, b in enumerate(filled):
        rows, cols = linear_sum_assignment(total[i, :, : counts[b]])
        out[b] = (
            torch.as_tensor(rows, dtype=torch.int64),
            torch.as_tensor(cols, dtype=torch.int64),
        )
    return out
