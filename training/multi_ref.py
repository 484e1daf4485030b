"""IDOL-style multi-reference contrastive items (CTVIS Fig. 4 baseline, ``cl.plugin: multi_ref``).

The official ``MultiRefCLPlugin`` (``ctvis/modeling/cl_plugin/multi_ref_cl_plugin.py`` of
https://github.com/KainingYing/CTVIS at ``c1ed15c``, ``ONE_DIRECTION True``): every instance
valid in the **first** frame of a clip is an anchor (its matched query's embedding there); its
keys are, for every other frame r of the clip, its own embedding in r as a positive (when valid
there) and the other queries of r as negatives (all Q queries of r when it is absent). One item per
anchor holds all its positives and negatives; ``training.losses.reid_losses`` then sums
``exp(n_j - p_i)`` over every (positive, negative) pair, as the official ``loss_reid``.

There is no memory bank: this is the baseline CTVIS's consistent items are compared with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.config import ClConfig
from training.losses import ContrastiveItem

__all__ = ["multi_ref_items"]


def _other_queries(embeds_r: torch.Tensor, own: int, cfg: ClConfig) -> torch.Tensor:
    """Negatives of one reference frame: its QxD rows without ``own`` (-1: none), capped."""
    keep = [i for i in range(embeds_r.shape[0]) if i != own]
    if cfg.num_negatives is not None and len(keep) > cfg.num_negatives:
        pick = torch.randperm(len(keep))[: cfg.num_negatives].sort().values
        keep = [keep[int(i)] for i in pick]
    return embeds_r[keep]


def multi_ref_items(
    embeds: torch.Tensor, slot2query: torch.Tensor, valid: torch.Tensor, cfg: ClConfig
) -> list[ContrastiveItem]:
    """Multi-reference items of one clip.

    Args:
        embeds: TxQxD ``pred_embeds`` of the clip's frames (graph kept).
        slot2query: TxS int64 matched query per slot (-1 = none).
        valid: TxS bool validity of each slot per frame.
        cfg: CL switches (``num_negatives`` caps the negatives taken from each frame).

    Returns:
        One item per slot valid in frame 0 that is valid in at least one other frame: keys
        ``[positives (one per such frame); negatives]``, label 1 on the positives.
    """
    slot2query, valid = slot2query.cpu(), valid.cpu()
    valid = valid & (slot2query >= 0)
    t_len = embeds.shape[0]
    items = []
    for s in torch.nonzero(valid[0]).flatten().tolist():
        anchor = embeds[0, int(slot2query[0, s])]
        positives, negatives = [], []
        for r in range(1, t_len):
            own = int(slot2query[r, s]) if bool(valid[r, s]) else -1
            if own >= 0:
                positives.append(embeds[r, own])
            negatives.append(_other_queries(embeds[r], own, cfg))
        if not positives:
            continue
        keys = torch.cat([torch.stack(positives), *negatives])
        label = torch.zeros(keys.shape[0], dtype=torch.int64, device=keys.device)
        label[: len(positives)] = 1
        cos = F.normalize(keys, dim=-1) @ F.normalize(anchor, dim=0)
        items.append(ContrastiveItem(keys @ anchor, cos, label))
    return items
