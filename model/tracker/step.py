"""One online tracker step: read -> match -> spawn -> write -> record -> prune."""

from __future__ import annotations

import torch

from model.config import TrackerConfig
from model.structures import Detections, TrackAssignment
from model.tracker import memory
from model.tracker.match import assign, similarity
from model.tracker.select import box_iou, mask_boxes
from model.tracker.state import TrackState


def track_step(
    state: TrackState, detections: Detections, cfg: TrackerConfig
) -> tuple[TrackState, TrackAssignment]:
    """Assign ids to one frame's candidates and update the memory bank (official SimpleTracker).

    While no track was ever created (``next_track_id == 0``) or no track is alive (the
    reference crashes there, stacking an empty memory bank), every candidate scoring above
    ``init_score_threshold`` starts a new track. Otherwise candidates are matched to live
    tracks (``cfg.match_metric`` / ``cfg.match_type``) and unmatched ones above the init
    threshold start new tracks in row order. With ``cfg.box_iou_weight`` w > 0 (not in the
    reference) the match scores become ``(1 - w) * score + w * IoU`` of the candidate's
    mask box with the track's last box, and matched tracks remember their new box. Tracks
    unseen for more than ``num_dead_frames`` frames are then dropped, and beyond
    ``max_tracks`` live tracks the least recently seen ones (a cap the reference does not
    have; it only bounds the state). Gradient mode is the caller's choice.

    Args:
        state: memory bank before frame ``state.frame_index``.
        detections: the frame's N candidates from ``select_candidates`` (descending score).
        cfg: tracker settings.

    Returns:
        (state for the next frame, the assignment of the N candidates).
    """
    frame = state.frame_index
    n = len(detections)
    t = state.num_tracks
    device = state.track_ids.device
    boxes = mask_boxes(detections.mask_logits.detach()) if cfg.box_iou_weight > 0 else None
    cols = _matched_columns(state, detections, boxes, cfg)
    # Unmatched candidates above the init threshold (scores compared in float32) start new
    # tracks in row order: slots t, t + 1, ... and ids next_track_id, next_track_id + 1, ...
    scores = detections.scores.detach().to(device, torch.float32)
    is_new = (cols < 0) & (scores > cfg.init_score_threshold)
    new_rank = torch.cumsum(is_new, 0) - 1
    count = int(is_new.sum())
    slots = torch.where(is_new, t + new_rank, cols)
    rows = torch.nonzero(slots >= 0).squeeze(1)
    kept_slots = slots[rows]
    matched = cols >= 0
    ids = torch.full((n,), -1, dtype=torch.int64, device=device)
    ids[matched] = state.track_ids[cols[matched]]
    ids[is_new] = state.next_track_id + new_rank[is_new]
    state = memory.write(
        state,
        kept_slots,
        detections.embeds.index_select(0, rows),
        detections.scores.index_select(0, rows),
        frame,
        cfg.momentum,
        grow=count,
    )
    if boxes is not None:
        state = memory.write_boxes(state, kept_slots, boxes.index_select(0, rows))
    kept_logits = detections.logits.index_select(0, rows)
    state = memory.record_entries(state, kept_slots, kept_logits, frame, cfg)
    grown = state.num_tracks
    state, alive = memory.prune(state, frame, cfg.num_dead_frames, cfg.max_tracks)
    if state.num_tracks < grown:
        # Matched tracks are alive (last_seen == frame); remap them to compacted rows.
        new_row = torch.cumsum(alive, 0) - 1
        slots = torch.where(slots >= 0, new_row[slots.clamp_min(0)], -1)
    state = state.with_tensors({}, frame_index=frame + 1)
    return state, TrackAssignment(track_ids=ids, slots=slots, is_new=is_new, frame_index=frame)


def _matched_columns(
    state: TrackState, detections: Detections, boxes: torch.Tensor | None, cfg: TrackerConfig
) -> torch.Tensor:
    """N int64 live-track row matched to each candidate, -1 where none.

    Nothing is matched while no track was ever created or none is alive.

    Args:
        state: memory bank before the frame.
        detections: the frame's N candidates.
        boxes: Nx4 mask boxes of the candidates when the box cue is on, else None.
        cfg: tracker settings.
    """
    n = len(detections)
    if state.next_track_id == 0 or state.num_tracks == 0 or n == 0:
        return torch.full((n,), -1, dtype=torch.int64, device=state.track_ids.device)
    track_embeds = memory.read_embeddings(state, cfg.embed_type)
    match = similarity(detections.embeds, track_embeds, cfg.match_metric)
    if boxes is not None:
        overlap = box_iou(boxes, state.last_box).to(match.dtype)
        match = torch.lerp(match, overlap, cfg.box_iou_weight)
    return assign(match, state.exist_frames, cfg).to(state.track_ids.device)
