"""One online tracker step: read -> match -> spawn -> write -> record -> prune."""

from __future__ import annotations

import numpy as np
import torch

from model.config import TrackerConfig
from model.structures import Detections, TrackAssignment
from model.tracker import memory
from model.tracker.match import assign_columns, similarity
from model.tracker.select import box_iou, mask_boxes
from model.tracker.state import TrackState


def track_step(
    state: TrackState, detections: Detections, cfg: TrackerConfig
) -> tuple[TrackState, TrackAssignment]:
    """Assign ids to one frame's candidates and update the memory bank (official SimpleTracker).

    While no track was ever created (``next_track_id == 0``) or no track is alive (the
    reference crashes there; spec 4.5), every candidate scoring above
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
    like = state.track_ids  # the state's device
    use_boxes = cfg.box_iou_weight > 0
    if use_boxes:
        boxes = mask_boxes(detections.mask_logits.detach())
    if state.next_track_id > 0 and t > 0 and n > 0:
        track_embeds = memory.read_embeddings(state, cfg.embed_type)
        match = similarity(detections.embeds, track_embeds, cfg.match_metric)
        if use_boxes:
            overlap = box_iou(boxes, state.last_box).to(match.dtype)
            match = torch.lerp(match, overlap, cfg.box_iou_weight)
        cols = assign_columns(match, state.exist_frames, cfg)
    else:
        cols = np.full(n, -1, dtype=np.int64)
    # The assignment is on the host already, so the few index vectors the update needs are
    # worked out there (NumPy ops on ~100 numbers cost ~1 us, torch's ~5) and moved to the
    # state's device in one copy (none on the CPU). float32 scores against a Python float
    # compare in float32 in both libraries.
    scores = detections.scores.detach().to("cpu", torch.float32).numpy()
    is_new = (cols < 0) & (scores > cfg.init_score_threshold)
    count = int(is_new.sum())
    slots = cols.copy()
    slots[is_new] = np.arange(t, t + count)
    rows = np.flatnonzero(slots >= 0)
    kept_slots = slots[rows]
    ids = np.full(n, -1, dtype=np.int64)
    old = rows[kept_slots < t]
    ids[old] = state.track_ids.cpu().numpy()[slots[old]]
    ids[is_new] = np.arange(state.next_track_id, state.next_track_id + count)
    rows_t, kept_t, slots_t, ids_t = memory.from_host([rows, kept_slots, slots, ids], like)
    state = memory.write(
        state,
        kept_t,
        detections.embeds.index_select(0, rows_t),
        detections.scores.index_select(0, rows_t),
        frame,
        cfg.momentum,
        grow=count,
    )
    if use_boxes:
        state = memory.write_boxes(state, kept_t, boxes.index_select(0, rows_t))
    kept_logits = detections.logits.index_select(0, rows_t)
    state = memory.record_entries(state, kept_t, kept_logits, frame, cfg)
    grown = state.num_tracks
    state, alive = memory.prune(state, frame, cfg.num_dead_frames, cfg.max_tracks)
    if state.num_tracks < grown:
        # Matched tracks are alive (last_seen == frame); remap them to compacted rows.
        new_row = torch.cumsum(alive, 0) - 1
        slots_t = torch.where(slots_t >= 0, new_row[slots_t.clamp_min(0)], -1)
    state = state.with_tensors({}, frame_index=frame + 1)
    assignment = TrackAssignment(
        track_ids=ids_t,
        slots=slots_t,
        is_new=torch.from_numpy(is_new).to(like.device),
        frame_index=frame,
    )
    return state, assignment
