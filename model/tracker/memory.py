"""The one memory-bank implementation: pure, differentiable functions over ``TrackState``.

Used by ``model.tracker.step.track_step`` at inference and by training. Every function
returns a new state: tensors are built out of place (or written in place only into tensors
just allocated), so gradients flow through fused embeddings and a caller's state is never
modified. Everything stays on the state's device.

Reference: CTVIS ``Tracklet.update`` / ``MemoryBank`` (``ctvis/modeling/tracker/memory_bank.py``)
and the bookkeeping of ``SimpleTracker`` (``ctvis/modeling/tracker/simple_tracker.py``) of
https://github.com/KainingYing/CTVIS; the similarity-guided fusion is the paper's eq. 1-2 (Ying
et al., ICCV 2023, arXiv:2307.12616) over at most the last ``cache_size`` embeddings, as the
official ``maximum_cache``.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from model.config import TrackerConfig
from model.tracker.state import TrackState

# The memory bank's tensors or NumPy arrays (``noise_removed`` serves both).
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
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

    The new rows have ``exist_frames == 0``; ``write`` must fill them in the same step
    (``write(..., grow=count)`` does both in one pass).

    Returns:
        (new state, int64 [count] slots of the new rows).
    """
    t = state.num_tracks
    slots = torch.arange(t, t + count, device=state.track_ids.device)
    if count == 0:
        return state, slots
    return _grown(state, count), slots


# Values of the rows ``spawn`` appends, where not zero.
_EMPTY_ROW = {"logit_max": float("-inf"), "last_box": float("nan")}


def _grown(state: TrackState, count: int, skip: tuple[str, ...] = ()) -> TrackState:
    """``state`` with ``count`` empty rows appended to every per-track tensor but ``skip``.

    The new rows get fresh ids and zeros (``_EMPTY_ROW`` where not zero). A skipped field
    keeps its T rows: the caller must replace it with T + count rows.
    """
    fresh = {}
    for name, value in state.tensors().items():
        if name in skip:
            continue
        if name == "track_ids":
            first = state.next_track_id
            ids = torch.arange(first, first + count, dtype=value.dtype, device=value.device)
            fresh[name] = torch.cat([value, ids])
        else:
            fresh[name] = _pad_rows(value, count, _EMPTY_ROW.get(name, 0.0))
    return state.with_tensors(fresh, next_track_id=state.next_track_id + count)


_NUMPY_DTYPES = {torch.int64: np.int64, torch.float32: np.float32, torch.float64: np.float64}


def _pad_rows(value: torch.Tensor, count: int, fill: float = 0.0) -> torch.Tensor:
    """``value`` with ``count`` rows of ``fill`` appended along dim 0 (always a new tensor)."""
    return F.pad(value, (0, 0) * (value.dim() - 1) + (0, count), value=fill)


def write(
    state: TrackState,
    slots: torch.Tensor,
    embeds: torch.Tensor,
    scores: torch.Tensor,
    frame_index: int,
    momentum: float = 0.75,
    grow: int = 0,
) -> TrackState:
    """Update tracklets ``slots`` with one new detection each (reference ``Tracklet.update``).

    Similarity-guided fusion: ``beta = max(0, mean_k cos(e_k, e))`` over the <= K cached raw
    embeddings of *previous* updates, ``sg = (1 - beta) sg + beta e``; the first update sets
    ``sg = momentum_embed = e``. Then ``e`` is pushed into the cache (oldest dropped when full).

    Args:
        state: memory bank; ``slots`` must be distinct rows of it (after ``grow``).
        slots: N int64 rows to update.
        embeds: NxD raw embeddings (unnormalised); gradients flow into the new state.
        scores: N detection scores.
        frame_index: frame of these detections (becomes ``last_seen``).
        momentum: weight of the new embedding in the momentum variant.
        grow: first append this many empty tracklets, exactly as ``spawn(state, grow)``
            (fresh ids, rows T..T+grow-1, which ``slots`` may name), in the same pass: the
            raw-embedding cache, by far the largest tensor, is then copied once, not twice.

    Returns:
        The new state (``frame_index`` unchanged; ``next_track_id`` advanced by ``grow``).
    """
    if slots.numel() == 0:
        return spawn(state, grow)[0]
    k = state.cache_size
    cache = state.embed_cache
    # The new cache is one copy of the old (grown) with the entries written into it in
    # place: a fresh tensor, so no caller's state changes, and autograd records the write.
    new_cache = _pad_rows(cache, grow) if grow else cache.clone()
    if grow:
        state = _grown(state, grow, skip=("embed_cache",))
    exist, held = state.exist_frames, state.cache_len
    upd = torch.zeros(state.num_tracks, dtype=torch.bool, device=slots.device)
    upd.index_fill_(0, slots, True)
    column = exist[slots] % k  # the cache column of each entry
    new_cache.index_put_((slots, column), embeds)
    score_cache = state.score_cache if grow else state.score_cache.clone()
    score_cache.index_put_((slots, column), scores.to(score_cache.dtype))
    sg_embed, momentum_embed = _fused(state, cache, slots, embeds, upd, momentum)
    return state.with_tensors(
        {
            "sg_embed": sg_embed,
            "momentum_embed": momentum_embed,
            "embed_cache": new_cache,
            "score_cache": score_cache,
            "cache_len": (held + upd).clamp_max(k),
            "exist_frames": exist + upd,
            "last_seen": torch.where(upd, frame_index, state.last_seen),
        }
    )


def _fused(
    state: TrackState,
    cache: torch.Tensor,
    slots: torch.Tensor,
    embeds: torch.Tensor,
    upd: torch.Tensor,
    momentum: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The similarity-guided and momentum embeddings after ``write``'s update (TxD each).

    Fusion runs on all rows at once (a few full-size ops beat many small ones). Rows not
    updated get weight 0 and first updates weight 1, so ``(1 - w) old + w e`` is exact for
    both without a select; unused cache columns are zero vectors, so their cosine is 0 and
    no validity mask is needed; appended rows have no cache, so the cosines are taken over
    the old rows only. Gradients flow to ``embeds`` throughout.

    Args:
        state: the (grown) state before the update; its ``exist_frames`` and ``cache_len``
            are the counts before it.
        cache: T_old x K x D raw-embedding cache before the update (old rows only).
        slots: N int64 rows updated.
        embeds: NxD their new raw embeddings.
        upd: T bool, True for the rows in ``slots``.
        momentum: weight of the new embedding in the momentum variant.
    """
    t, d = state.sg_embed.shape
    t_old = cache.shape[0]
    dtype = state.sg_embed.dtype
    first = state.exist_frames == 0
    # beta = max(0, mean cos) on later updates, 1 on first ones, 0 elsewhere: as
    # ``first_upd + later_upd * max(0, mean cos)`` (one addcmul, exactly those values).
    later_upd = (upd & ~first).to(dtype)
    first_upd = (upd & first).to(dtype)
    weight = torch.full((t,), momentum, dtype=dtype, device=upd.device)
    weight = weight.masked_fill(first, 1.0).masked_fill(~upd, 0.0)  # of the momentum variant
    # (the divisor is clamped so that first updates, cache_len 0, give 0, not a NaN gradient)
    divisor = state.cache_len[:t_old].clamp_min(1).to(dtype)
    e = embeds.new_zeros(t, d).index_put_((slots,), embeds)
    old_e = e[:t_old]
    dots = torch.linalg.vecdot(cache, old_e[:, None, :])  # ~6x faster than einsum/bmm here
    norms = cache.norm(dim=-1) * old_e.norm(dim=-1, keepdim=True)
    mean_cos = (dots / norms.clamp_min(1e-8)).sum(1) / divisor
    beta = torch.addcmul(first_upd, _pad_rows(mean_cos.clamp_min(0.0), t - t_old), later_upd)
    # lerp(a, b, w) is exactly a at w = 0 and exactly b at w = 1, so rows not updated keep
    # their embedding and first updates take ``e``; otherwise it equals the reference's
    # ``(1 - w) a + w b`` up to rounding, in one op instead of four.
    sg_embed = torch.lerp(state.sg_embed, e, beta[:, None])
    return sg_embed, torch.lerp(state.momentum_embed, e, weight[:, None])


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
    return state.with_tensors({"last_box": state.last_box.index_put((slots,), boxes)})


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
    t = state.num_tracks
    if (max_tracks is None or t <= max_tracks) and (
        t == 0 or int(state.last_seen.min()) >= frame_index - num_dead_frames
    ):
        # The common case in one reduction: nobody is too old and the cap is not reached.
        return state, torch.ones(t, dtype=torch.bool, device=state.last_seen.device)
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


def noise_removed(hits: ArrayT, tail: ArrayT, frame_index: int, cfg: TrackerConfig) -> ArrayT:
    """Official noise-track filter over output entries, after frame ``frame_index``.

    The reference deletes entries of ``video_dict`` in ``SimpleTracker.inference``
    (``ctvis/modeling/tracker/simple_tracker.py`` of https://github.com/KainingYing/CTVIS).

    Args:
        hits: E int64 matched frames of each entry (0 = no entry): a tensor (the memory
            bank's entries) or a NumPy array (``model.postprocess``'s).
        tail: E int64 trailing unmatched frames of each entry, of the same kind.
        frame_index: the frame just processed; the rule applies only when > noise_frame_num.
        cfg: tracker settings.

    Returns:
        E bool, of the same kind: True for entries the official ``video_dict`` deletes now.
    """
    applies = frame_index > cfg.noise_frame_num
    return (hits > 0) & (tail >= cfg.none_frame_num) & (hits < cfg.suppress_frame_num) & applies


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
    matched = torch.zeros(state.num_tracks, dtype=torch.bool, device=slots.device)
    matched.index_fill_(0, slots, True)
    hits = state.entry_hits + matched
    tail = torch.where(matched, 0, state.entry_tail + 1)
    logits = logits.to(state.logit_sum.dtype)
    logit_sum = state.logit_sum.index_put((slots,), logits, accumulate=True)
    logit_max = state.logit_max.scatter_reduce(0, slots[:, None].expand_as(logits), logits, "amax")
    drop = noise_removed(hits, tail, frame_index, cfg)
    dropped = drop[:, None]
    return state.with_tensors(
        {
            "entry_hits": torch.where(drop, 0, hits),
            "entry_tail": tail,
            "logit_sum": torch.where(dropped, 0.0, logit_sum),
            "logit_max": torch.where(dropped, float("-inf"), logit_max),
        }
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
