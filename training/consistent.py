"""Consistent training: the CTCLPlugin contrastive loss built on the ONE memory bank.

Per clip, as the official ``CTCLPlugin`` (``ctvis/modeling/cl_plugin/ct_cl_plugin.py`` of
https://github.com/KainingYing/CTVIS; paper: Ying et al., ICCV 2023, arXiv:2307.12616, Sec. 3):
(1) match every frame's final-layer predictions to the clip's instance slots; (2) replay the
clip through ``model.tracker.memory`` (``spawn`` one tracklet per slot, ``write`` each frame's
matched embeddings with ground-truth identities) and record the raw embeddings and the
similarity-guided fused ("MA") embedding after every frame; (3) build contrastive items
(anchor, positive, negatives) from that history; (4) score them with
``training.losses.reid_losses``. Nothing is detached unless ``cl.detach_memory`` is set, so
gradients flow through the fused embeddings into earlier frames, as in the official code.

Random draws (noise, MA-vs-raw positive, negative capping) use the global torch CPU generator,
so a resumed run that restores the RNG state repeats them exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.structures import FrameOutputs
from model.tracker import memory
from model.tracker.state import init_state
from training.config import ClConfig
from training.data.batch import ClipBatch
from training.losses import ContrastiveItem, FrameTarget, Indices, reid_losses
from training.matcher import MatchCosts, hungarian_match
from training.multi_ref import multi_ref_items

__all__ = [
    "ClipBank",
    "build_clip_bank",
    "clip_items",
    "cl_slot_to_query",
    "consistent_reid_losses",
    "criterion_slot_to_query",
    "frame_targets",
]


@dataclass(frozen=True)
class ClipBank:
    """History of the training memory bank over one clip (T frames, S slots, D dims).

    Attributes:
        raw: TxSxD embedding written for slot s at frame t (zeros where none).
        has_raw: TxS bool, an embedding was written (a matched query, or injected noise).
        is_noise: TxS bool, that embedding is injected noise.
        fused: TxSxD similarity-guided fused embedding of each slot after frame t
            (``model.tracker.memory`` ``sg_embed``; zeros before its first write).
        has_fused: TxS bool, the slot had been written at or before frame t.
    """

    raw: torch.Tensor
    has_raw: torch.Tensor
    is_noise: torch.Tensor
    fused: torch.Tensor
    has_fused: torch.Tensor


def frame_targets(batch: ClipBatch) -> tuple[list[FrameTarget], list[torch.Tensor]]:
    """Criterion targets of every frame (clip-major): only slots with ``id != -1``.

    Returns:
        (B*T targets, B*T int64 tensors giving the slot of each target).
    """
    targets, slots = [], []
    for labels, ids, masks in zip(batch.labels, batch.ids, batch.masks, strict=True):
        for t in range(batch.num_frames):
            keep = torch.nonzero(ids[t] != -1).flatten()
            targets.append(FrameTarget(labels[t][keep], masks[t][keep]))
            slots.append(keep.cpu())
    return targets, slots


def criterion_slot_to_query(
    indices: Indices, target_slots: Sequence[torch.Tensor], num_slots: int
) -> torch.Tensor:
    """TxS query matched to each slot by the criterion's final-layer matching (-1 if none).

    Args:
        indices: T (query, target) index pairs of one clip's frames.
        target_slots: T tensors mapping target index -> slot.
        num_slots: S.
    """
    out = torch.full((len(indices), num_slots), -1, dtype=torch.int64)
    for t, ((src, tgt), slots) in enumerate(zip(indices, target_slots, strict=True)):
        out[t, slots[tgt]] = src
    return out


def cl_slot_to_query(
    logits: torch.Tensor,
    mask_logits: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    costs: MatchCosts,
) -> torch.Tensor:
    """Official CL matching: all S slots (invalid ones too) of each frame vs its Q queries.

    Args:
        logits: TxQx(K+1) final-layer class logits of the clip's frames.
        mask_logits: TxQxhxw final-layer mask logits (of the padded input).
        labels: TxS int64 slot classes (K for absent slots).
        masks: TxSxHxW bool slot masks; pass them unpadded to reproduce the official
            misalignment.
        costs: matcher weights.

    Returns:
        TxS int64 query per slot (-1 if S > Q left it unmatched).
    """
    t_len, s = labels.shape
    out = torch.full((t_len, s), -1, dtype=torch.int64)
    for t in range(t_len):
        src, tgt = hungarian_match(logits[t], mask_logits[t], labels[t], masks[t], costs)
        out[t, tgt] = src
    return out


def _noise_anchor(
    embeds_t: torch.Tensor, queries_t: torch.Tensor, valid_t: torch.Tensor, s: int, cfg: ClConfig
) -> torch.Tensor | None:
    """A noise embedding for absent slot ``s`` with probability ``cfg.noise_prob``, else None."""
    if cfg.noise_prob <= 0.0 or float(torch.rand(())) < 1.0 - cfg.noise_prob:
        return None
    if cfg.noise_source == "any_query":
        pool = torch.arange(embeds_t.shape[0])
    else:
        others = valid_t.clone()
        others[s] = False
        pool = queries_t[others]
        if pool.numel() == 0:
            return None
    pick = int(torch.randint(int(pool.numel()), ()))
    return embeds_t[int(pool[pick])]


def build_clip_bank(
    embeds: torch.Tensor, slot2query: torch.Tensor, valid: torch.Tensor, cfg: ClConfig
) -> ClipBank:
    """Replay one clip through ``model.tracker.memory`` with ground-truth identities.

    Args:
        embeds: TxQxD ``pred_embeds`` of the clip's frames.
        slot2query: TxS int64 matched query per slot (-1 = none).
        valid: TxS bool, slot's instance annotated in that frame.
        cfg: CL switches (noise, detach_memory, fusion_window).

    Returns:
        The bank's history (differentiable w.r.t. ``embeds`` unless detached).
    """
    t_len, _, d = embeds.shape
    s_len = slot2query.shape[1]
    valid = valid & (slot2query >= 0)
    window = cfg.fusion_window if cfg.fusion_window is not None else t_len
    state = init_state(d, 0, cache_size=max(1, window), device=embeds.device, dtype=embeds.dtype)
    state, _ = memory.spawn(state, s_len)
    raw, has_raw, is_noise, fused, has_fused = [], [], [], [], []
    for t in range(t_len):
        rows: list[torch.Tensor | None] = []
        noise = torch.zeros(s_len, dtype=torch.bool)
        for s in range(s_len):
            if bool(valid[t, s]):
                rows.append(embeds[t, int(slot2query[t, s])])
                continue
            rows.append(_noise_anchor(embeds[t], slot2query[t], valid[t], s, cfg))
            noise[s] = rows[-1] is not None
        present = torch.tensor([r is not None for r in rows], dtype=torch.bool)
        zero = embeds.new_zeros(d)
        frame_raw = torch.stack([zero if r is None else r for r in rows] or [zero])[:s_len]
        slots = torch.nonzero(present).flatten().to(embeds.device)
        written = frame_raw[present.to(embeds.device)]
        if cfg.detach_memory:
            written = written.detach()
        scores = torch.ones(len(slots), dtype=embeds.dtype, device=embeds.device)
        state = memory.write(state, slots, written, scores, t)
        raw.append(frame_raw)
        has_raw.append(present)
        is_noise.append(noise)
        fused.append(memory.read_embeddings(state, "similarity_guided"))
        has_fused.append((state.exist_frames > 0).cpu())
    return ClipBank(
        raw=torch.stack(raw),
        has_raw=torch.stack(has_raw),
        is_noise=torch.stack(is_noise),
        fused=torch.stack(fused),
        has_fused=torch.stack(has_fused),
    )


def _positive(bank: ClipBank, t: int, s: int, cfg: ClConfig) -> torch.Tensor | None:
    """Positive key of anchor (t, s) per ``cfg.positive_mode`` / future rules.

    The official rule is ``TrainTracklet.get_positive_negative_embeddings`` in
    ``ctvis/modeling/cl_plugin/ct_cl_plugin.py`` (https://github.com/KainingYing/CTVIS).
    """
    history = bank.has_raw[:, s]
    if cfg.positive_mode == "prev_frame":
        earlier = [t - 1] if bool(history[t - 1]) else []
    else:
        earlier = torch.nonzero(history[:t]).flatten().tolist()
    if earlier:
        if cfg.positive_mode == "ma" and float(torch.rand(())) < cfg.ma_prob:
            return bank.fused[t - 1, s]
        return bank.raw[earlier[-1], s]
    if not cfg.future_positive:
        return None
    later = history[t + 1 :]
    guard = bool(later.any()) if cfg.fix_future_guard else int((~later).sum()) != t
    if not guard or not bool(later.any()):
        return None
    return bank.raw[t + 1 + int(torch.nonzero(later)[0]), s]


def _negatives(
    bank: ClipBank,
    embeds: torch.Tensor,
    slot2query: torch.Tensor,
    valid: torch.Tensor,
    t: int,
    s: int,
    cfg: ClConfig,
) -> torch.Tensor:
    """NxD negative keys of anchor (t, s) from frame t-1 (and earlier for ``global``)."""
    prev = t - 1
    q = embeds.shape[1]
    matched = valid[prev] & (slot2query[prev] >= 0)
    own = int(slot2query[prev, s]) if bool(matched[s]) else -1
    others = matched.clone()
    others[s] = False
    query_ids: set[int] = set()
    if cfg.negative_major == "prev_frame_raw":
        query_ids |= set(slot2query[prev][others].tolist())
    if cfg.negative_supplementary == "local":
        query_ids |= set(range(q)) - set(slot2query[prev][matched].tolist())
    query_ids.discard(own)
    parts = [embeds[prev, sorted(query_ids)]]
    if cfg.negative_supplementary == "global":
        for f in range(t):  # unmatched queries of every earlier frame
            used = set(slot2query[f][valid[f] & (slot2query[f] >= 0)].tolist())
            parts.append(embeds[f, sorted(set(range(q)) - used)])
    if cfg.negative_major == "memory_ma":
        keep = bank.has_fused[prev].clone()
        keep[s] = False
        parts.append(bank.fused[prev][keep.to(bank.fused.device)])
    negatives = torch.cat(parts)
    if cfg.num_negatives is not None and negatives.shape[0] > cfg.num_negatives:
        pick = torch.randperm(negatives.shape[0])[: cfg.num_negatives].sort().values
        negatives = negatives[pick.to(negatives.device)]
    return negatives


def clip_items(
    embeds: torch.Tensor, slot2query: torch.Tensor, valid: torch.Tensor, cfg: ClConfig
) -> list[ContrastiveItem]:
    """Contrastive items of one clip (steps 1-2 of the CTCLPlugin).

    Args:
        embeds: TxQxD ``pred_embeds`` of the clip's frames (graph kept).
        slot2query: TxS int64 matched query per slot (-1 = none).
        valid: TxS bool validity of each slot per frame.
        cfg: CL switches.

    Returns:
        One item per anchor (t >= 1, slot with an embedding at t and a positive): keys are
        ``[positive; negatives]`` and the label marks the positive.
    """
    valid = valid.cpu()
    slot2query = slot2query.cpu()
    bank = build_clip_bank(embeds, slot2query, valid, cfg)
    items = []
    for t in range(1, embeds.shape[0]):
        for s in range(slot2query.shape[1]):
            if not bool(bank.has_raw[t, s]):
                continue
            if bool(bank.is_noise[t, s]) and not cfg.noise_as_anchor:
                continue
            positive = _positive(bank, t, s, cfg)
            if positive is None:
                continue
            negatives = _negatives(bank, embeds, slot2query, valid, t, s, cfg)
            keys = torch.cat([positive[None], negatives])
            if cfg.detach_memory:
                keys = keys.detach()
            anchor = bank.raw[t, s]
            label = torch.zeros(keys.shape[0], dtype=torch.int64, device=keys.device)
            label[0] = 1
            cos = F.normalize(keys, dim=-1) @ F.normalize(anchor, dim=0)
            items.append(ContrastiveItem(keys @ anchor, cos, label))
    return items


def consistent_reid_losses(
    outputs: FrameOutputs,
    batch: ClipBatch,
    criterion_indices: Indices,
    target_slots: Sequence[torch.Tensor],
    cfg: ClConfig,
    costs: MatchCosts,
) -> dict[str, torch.Tensor]:
    """``loss_reid`` and ``loss_aux_reid`` (unweighted) of a per-rank batch of clips.

    Args:
        outputs: final-layer outputs of the (B*T) frames, clip-major.
        batch: the clips (labels, ids, padded masks, image sizes).
        criterion_indices: final-layer matching of the criterion, per frame.
        target_slots: per frame, the slot of each criterion target (``frame_targets``).
        cfg: CL switches (``cl_match`` picks the matching).
        costs: matcher weights for the separate CL matching.

    Returns:
        ``{"loss_reid", "loss_aux_reid"}``; items of all clips are pooled. ``cfg.plugin``
        ``multi_ref`` builds the multi-reference baseline's items instead of the CTCL ones.
    """
    t_len = batch.num_frames
    build_items = multi_ref_items if cfg.plugin == "multi_ref" else clip_items
    items: list[ContrastiveItem] = []
    for b in range(batch.num_clips):
        frames = slice(b * t_len, (b + 1) * t_len)
        valid = batch.ids[b] != -1
        if cfg.cl_match == "criterion_padded":
            s2q = criterion_slot_to_query(
                criterion_indices[frames], target_slots[frames], valid.shape[1]
            )
        else:
            h, w = batch.image_sizes[b * t_len]
            s2q = cl_slot_to_query(
                outputs.pred_logits[frames].detach(),
                outputs.pred_masks[frames].detach(),
                batch.labels[b],
                batch.masks[b][..., :h, :w],
                costs,
            )
        items += build_items(outputs.pred_embeds[frames], s2q, valid, cfg)
    return reid_losses(items, outputs.pred_embeds)
