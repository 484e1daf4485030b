"""The one memory-bank implementation: pure, differentiable functions over ``TrackState``.

Used by ``model.tracker.step.track_step`` at inference and by training. Every function
returns a new state built with out-of-place ops (``index_put``, ``torch.where``, ``cat``), so
gradients flow through fused embeddings and a caller's state is never modified.

Reference: CTVIS ``Tracklet.update`` / ``MemoryBank`` (spec ``inference.md`` 4.1, 4.2, 4.5, 5).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F

from model.config import TrackerConfig
from model.tracker.state import TrackState

EmbedType = Literal["similarity_guided", "momentum", "last", "temporally_weighted"]


def _cache_age(state: TrackState) -> torch.Tensor:
    """TxK int64 age of each ring-buffer column (0 = newest); valid iff age < cache_len.

    Update u (0-based) of a track is stored in column ``u % K``, so the newest entry sits in
    column ``(exist_frames - 1) % K`` and no shifting is ever needed.
    """
    cols = torch.arange(state.cache_size, device=state.exist_frames.device)
    return ((state.exist_frames - 1)[:, None] - cols[None, :]) % state.cache_size


def ordered_cache(state: TrackState) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached raw embeddings oldest first (left-aligned) and their validity.

    Returns:
        (TxKxD embeddings, zero where invalid; TxK bool valid mask, True for the first
        ``cache_len`` columns).
    """
    k = state.cache_size
    j = torch.arange(k, device=state.exist_frames.device)
    idx = (state.exist_frames - state.cache_len)[:, None] + j[None, :]
    idx = idx % k
    valid = j[None, :] < state.cache_len[:, None]
    gathered = state.embed_cache.gather(1, idx[:, :, None].expand(-1, -1, state.embed_dim))
    return gathered * valid[:, :, None].to(gathered.dtype), valid


def read_embeddings(state: TrackState, embed_type: EmbedType) -> torch.Tensor:
    """Embeddings used to match detections against the live tracks (slot order).

    Args:
        state: current memory bank.
        embed_type: ``similarity_guided`` (official), ``momentum``, ``last`` (newest raw
            embedding) or ``temporally_weighted`` (our definition, no reference config uses
            it: mean of the cached raw embeddings weighted by score x recency rank, where the
            oldest valid entry has rank 1).

    Returns:
        TxD embeddings.
    """
    if embed_type == "similarity_guided":
        return state.sg_embed
    if embed_type == "momentum":
        return state.momentum_embed
    if embed_type == "last":
        newest = (state.exist_frames - 1) % state.cache_size
        rows = torch.arange(state.num_tracks, device=newest.device)
        return state.embed_cache[rows, newest]
    if embed_type == "temporally_weighted":
        rank = (state.cache_len[:, None] - _cache_age(state)).clamp_min(0)
        weight = state.score_cache * rank.to(state.score_cache.dtype)
        weight = weight / weight.sum(1, keepdim=True).clamp_min(1e-12)
        return torch.einsum("tk,tkd->td", weight, state.embed_cache)
    raise ValueError(f"unknown embed_type {embed_type!r}")


def spawn(state: TrackState, count: int) -> tuple[TrackState, torch.Tensor]:
    """Append ``count`` empty tracklets with fresh ids at the end of the slot order.

    The new rows have ``exist_frames == 0``; ``write`` must fill them in the same step.

    Returns:
        (new state, int64 [count] slots of the new rows).
    """
    t = state.num_tracks
    slots = torch.arange(t, t + count, device=state.track_ids.device)
    if count == 0:
        return state, slots
    fresh: dict[str, torch.Tensor] = {}
    for name, value in state.tensors().items():
        if name == "track_ids":
            fresh[name] = torch.cat([value, slots - t + state.next_track_id])
            continue
        # F.pad grows dim 0 in one op (its pad list runs from the last dim backwards)
        fill = {"logit_max": float("-inf"), "last_box": float("nan")}.get(name, 0.0)
        fresh[name] = F.pad(value, (0, 0) * (value.dim() - 1) + (0, count), value=fill)
    new = state.with_tensors(fresh, next_track_id=state.next_track_id + count)
    return new, slots


def write(
    state: TrackState,
    slots: torch.Tensor,
    embeds: torch.Tensor,
    scores: torch.Tensor,
    frame_index: int,
    momentum: float = 0.75,
) -> TrackState:
    """Update tracklets ``slots`` with one new detection each (reference ``Tracklet.update``).

    Similarity-guided fusion: ``beta = max(0, mean_k cos(e_k, e))`` over the <= K cached raw
    embeddings of *previous* updates, ``sg = (1 - beta) sg + beta e``; the first update sets
    ``sg = momentum_embed = e``. Then ``e`` is pushed into the cache (oldest dropped when full).

    Args:
        state: memory bank; ``slots`` must be distinct rows of it.
        slots: N int64 rows to update.
        embeds: NxD raw embeddings (unnormalised); gradients flow into the new state.
        scores: N detection scores.
        frame_index: frame of these detections (becomes ``last_seen``).
        momentum: weight of the new embedding in the momentum variant.

    Returns:
        The new state (``frame_index`` / ``next_track_id`` unchanged).
    """
    if slots.numel() == 0:
        return state
    # Fusion runs on all T rows at once (a few full-size ops beat many small ones). Rows not
    # updated get weight 0 and first updates weight 1, so ``(1 - w) old + w e`` is exact for
    # both without a select; unused cache columns are zero vectors, so their cosine is 0 and
    # no validity mask is needed. The cache write is one out-of-place index_put into the ring
    # buffer. Gradients flow to ``embeds`` throughout.
    k = state.cache_size
    t, d = state.sg_embed.shape
    upd = torch.zeros(t, dtype=state.sg_embed.dtype, device=slots.device)
    upd = upd.index_put((slots,), torch.ones_like(slots, dtype=upd.dtype))[:, None]
    e = embeds.new_zeros(t, d).index_put((slots,), embeds)
    cache = state.embed_cache
    dots = torch.linalg.vecdot(cache, e[:, None, :])  # ~6x faster than einsum/bmm here
    norms = cache.norm(dim=-1) * e.norm(dim=-1, keepdim=True)
    # (clamped so that first updates, cache_len 0, give 0 and not a NaN gradient)
    cache_len = state.cache_len[:, None].clamp_min(1)
    mean_cos = (dots / norms.clamp_min(1e-8)).sum(1, keepdim=True) / cache_len
    first = (state.exist_frames == 0)[:, None]
    beta = torch.where(first, 1.0, mean_cos.clamp_min(0.0)) * upd
    weight = torch.where(first, 1.0, momentum) * upd
    column = (state.exist_frames[slots] % k,)
    ones = upd[:, 0].to(torch.int64)
    # lerp(a, b, w) is exactly a at w = 0 and exactly b at w = 1, so rows not updated keep
    # their embedding and first updates take ``e``; otherwise it equals the reference's
    # ``(1 - w) a + w b`` up to rounding, in one op instead of four.
    return dataclasses.replace(
        state,
        sg_embed=torch.lerp(state.sg_embed, e, beta),
        momentum_embed=torch.lerp(state.momentum_embed, e, weight),
        embed_cache=cache.index_put((slots, *column), embeds),
        score_cache=state.score_cache.index_put(
            (slots, *column), scores.to(state.score_cache.dtype)
        ),
        cache_len=(state.cache_len + ones).clamp_max(k),
        exist_frames=state.exist_frames + ones,
        last_seen=torch.where(ones > 0, frame_index, state.last_seen),
    )


def write_boxes(state: TrackState, slots: torch.Tensor, boxes: torch.Tensor) -> TrackState:
    """Record the boxes of the candidates just matched to ``slots`` (the box cue's memory).

    Args:
        state: memory bank.
        slots: N int64 distinct rows.
        boxes: Nx4 ``(x0, y0, x1, y1)`` boxes of those candidates' masks.

    Returns:
        The new state.
    """
    if slots.numel() == 0:
        return state
    boxes = boxes.to(state.last_box.dtype)
    return dataclasses.replace(state, last_box=state.last_box.index_put((slots,), boxes))


def prune(
    state: TrackState, frame_index: int, num_dead_frames: int, max_tracks: int | None = None
) -> tuple[TrackState, torch.Tensor]:
    """Drop tracklets not updated for more than ``num_dead_frames`` frames.

    ``max_tracks`` (not in the reference) caps the live tracks so a session's state stays
    bounded: beyond it, the least recently seen tracks go first (ties: the older slot goes).
    Tracks updated in ``frame_index`` are never evicted.

    Returns:
        (new state, T bool mask of the rows kept); slot order is preserved.
    """
    keep = (frame_index - state.last_seen) <= num_dead_frames
    excess = int(keep.sum()) - max_tracks if max_tracks is not None else 0
    if excess > 0:
        seen_now = int((state.last_seen == frame_index).sum())
        order = torch.argsort(torch.where(keep, state.last_seen, -1), stable=True)
        excess = min(excess, int(keep.sum()) - seen_now)
        drop = order[int((~keep).sum()) :][:excess]
        keep = keep.index_put((drop,), torch.zeros_like(drop, dtype=torch.bool))
    if bool(keep.all()):
        return state, keep
    return state.select(keep), keep


def noise_removed(
    hits: torch.Tensor, tail: torch.Tensor, frame_index: int, cfg: TrackerConfig
) -> torch.Tensor:
    """Official noise-track filter over output entries (spec 5), after frame ``frame_index``.

    Args:
        hits: E int64 matched frames of each entry (0 = no entry).
        tail: E int64 trailing unmatched frames of each entry.
        frame_index: the frame just processed; the rule applies only when > noise_frame_num.
        cfg: tracker settings.

    Returns:
        E bool, True for entries the official ``video_dict`` deletes now.
    """
    if frame_index <= cfg.noise_frame_num:
        return torch.zeros_like(hits, dtype=torch.bool)
    return (hits > 0) & (tail >= cfg.none_frame_num) & (hits < cfg.suppress_frame_num)


def record_entries(
    state: TrackState,
    slots: torch.Tensor,
    logits: torch.Tensor,
    frame_index: int,
    cfg: TrackerConfig,
) -> TrackState:
    """Streaming mirror of the official ``video_dict`` for live tracks.

    Matched slots add their logits to the current output entry (creating a fresh one when
    none exists); all other slots get one more trailing miss; then the noise filter deletes
    short entries (their logit history is dropped, as the official code does).

    Args:
        state: memory bank after ``write``.
        slots: N int64 rows matched in this frame.
        logits: Nx(C+1) raw class logits of those detections.
        frame_index: the frame just processed.
        cfg: tracker settings (noise filter numbers).

    Returns:
        The new state.
    """
    # Rows without an entry hold logit_sum == 0 and logit_max == -inf (spawn and the noise
    # filter keep that invariant), so a fresh entry needs no special case: 0 + x == x and
    # max(-inf, x) == x.
    matched = torch.zeros_like(state.entry_hits).index_put(
        (slots,), torch.ones_like(slots, dtype=state.entry_hits.dtype)
    )
    logits = logits.to(state.logit_sum.dtype)
    hits = state.entry_hits + matched
    tail = torch.where(matched > 0, 0, state.entry_tail + 1)
    logit_sum = state.logit_sum.index_put((slots,), logits, accumulate=True)
    logit_max = state.logit_max.scatter_reduce(0, slots[:, None].expand_as(logits), logits, "amax")
    drop = noise_removed(hits, tail, frame_index, cfg)
    if bool(drop.any()):
        hits = torch.where(drop, 0, hits)
        logit_sum = torch.where(drop[:, None], 0.0, logit_sum)
        logit_max = torch.where(drop[:, None], float("-inf"), logit_max)
    return dataclasses.replace(
        state, entry_hits=hits, entry_tail=tail, logit_sum=logit_sum, logit_max=logit_max
    )


def entry_logits(state: TrackState, temporal_score_type: str) -> torch.Tensor:
    """Tx(C+1) temporal class logits of each live track's current output entry.

    ``mean`` = logit_sum / hits, ``max`` = element-wise max; rows without an entry are NaN.
    """
    if temporal_score_type == "max":
        out = state.logit_max
    elif temporal_score_type == "mean":
        out = state.logit_sum / state.entry_hits[:, None].to(state.logit_sum.dtype)
    else:
        raise ValueError(f"unknown temporal_score_type {temporal_score_type!r}")
    return torch.where(state.entry_hits[:, None] > 0, out, torch.full_like(out, float("nan")))
