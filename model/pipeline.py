"""Offline video inference: frames -> network -> select -> track_step -> video results.

Used by evaluation, the CLI and parity tests (the service composes the pieces itself so
that it can batch across sessions). Frames stream through the tracker one at a time, so
only RLE masks and small per-track sums are held for the whole video.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from model.config import ModelConfig, TrackerConfig
from model.postprocess import MaskSizes, TrackEntry, VideoAccumulator, video_results
from model.structures import FrameOutputs
from model.tracker.select import select_candidates
from model.tracker.state import TrackState, init_state
from model.tracker.step import track_step

ProgressFn = Callable[[int, int | None], None]


@dataclass(frozen=True)
class FrameTrace:
    """What the tracker saw and decided in one frame (mirrors the reference trace).

    Attributes:
        frame_index: frame number.
        candidate_query_indices: N int64 queries passed to the tracker (descending score).
        candidate_scores: N float32 their scores.
        assigned_ids: M int64 ids handed out, in candidate order.
        assigned_query_indices: M int64 query each assigned id came from.
    """

    frame_index: int
    candidate_query_indices: torch.Tensor
    candidate_scores: torch.Tensor
    assigned_ids: torch.Tensor
    assigned_query_indices: torch.Tensor


@dataclass(frozen=True)
class VideoResult:
    """Everything ``track_video`` produced for one video.

    Attributes:
        results: YouTube-VIS results entries (see ``postprocess.video_results``).
        entries: the output tracks in official ``video_dict`` order.
        trace: per-frame tracker trace.
        state: final tracker state.
    """

    results: list[dict[str, Any]]
    entries: list[TrackEntry]
    trace: list[FrameTrace]
    state: TrackState


def _frames_of(outputs: FrameOutputs) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    for b in range(outputs.pred_logits.shape[0]):
        yield outputs.pred_logits[b], outputs.pred_masks[b], outputs.pred_embeds[b]


def track_video(
    outputs: Iterable[FrameOutputs],
    sizes: MaskSizes,
    model_cfg: ModelConfig,
    tracker_cfg: TrackerConfig,
    video_id: Any = 0,
    num_frames: int | None = None,
    progress: ProgressFn | None = None,
    keep_mask_logits: bool = False,
    resume: tuple[TrackState, VideoAccumulator] | None = None,
    on_frame: Callable[[TrackState, VideoAccumulator], None] | None = None,
) -> VideoResult:
    """Run the tracker and post-processing over already computed network outputs.

    Args:
        outputs: FrameOutputs chunks in frame order (each BxQx..., B >= 1).
        sizes: resized / padded / original sizes shared by all frames of the video.
        model_cfg: ``num_classes`` and the category id map.
        tracker_cfg: tracker settings.
        video_id: id written into the results entries.
        num_frames: total frame count, only for ``progress``.
        progress: called as ``progress(frames_done, num_frames)`` after every frame.
        keep_mask_logits: keep low-res mask logits per output track (parity tests).
        resume: (tracker state, accumulator) saved after an earlier frame; ``outputs`` then
            start at the frame after it. The trace covers only the frames run here.
        on_frame: called as ``on_frame(state, accumulator)`` after every frame (checkpoints).

    Returns:
        The ``VideoResult``.
    """
    if resume is not None:
        state, accumulator = resume
    else:
        accumulator = VideoAccumulator(tracker_cfg, sizes, keep_mask_logits=keep_mask_logits)
        state = None
    trace: list[FrameTrace] = []
    for chunk in outputs:
        for logits, masks, embeds in _frames_of(chunk):
            if state is None:
                state = init_state(
                    embed_dim=embeds.shape[-1],
                    num_classes=logits.shape[-1] - 1,
                    cache_size=tracker_cfg.cache_size,
                    device=embeds.device,
                    dtype=embeds.dtype,
                )
            detections = select_candidates(logits, masks, embeds, tracker_cfg)
            state, assignment = track_step(state, detections, tracker_cfg)
            accumulator.add_frame(detections, assignment)
            kept = assignment.kept
            trace.append(
                FrameTrace(
                    frame_index=assignment.frame_index,
                    candidate_query_indices=detections.query_indices,
                    candidate_scores=detections.scores,
                    assigned_ids=assignment.track_ids[kept],
                    assigned_query_indices=detections.query_indices[kept],
                )
            )
            if progress is not None:
                progress(accumulator.num_frames, num_frames)
            if on_frame is not None:
                on_frame(state, accumulator)
    if state is None:
        raise ValueError("track_video got no frames")
    entries = accumulator.finalize()
    results = video_results(
        entries, accumulator.num_frames, sizes.original_size, model_cfg, video_id
    )
    return VideoResult(results=results, entries=entries, trace=trace, state=state)
