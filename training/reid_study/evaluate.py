"""Score a re-id head on cached videos through the shipped tracker: IDF1 and AssA.

For one head and one cached video (:class:`training.reid_study.cache.VideoCache`) the
head embeds the cached query features, and each frame's cached candidates go through
``model.tracker.track_step`` and ``model.postprocess.VideoAccumulator`` (noise-track
removal) and ``video_results`` (the top ``num_classes`` (track, class) pairs), exactly as in
``ctvis track``. The candidates, their class logits and scores are the cached ones
(``select_candidates`` does not look at embeddings); the box cue must be off
(``box_iou_weight`` 0), since no mask logits are kept. Each output track's mask in a frame
is its candidate's output mask there, so the cached pixel counts give every IoU, and
``training.assoc_metrics`` scores them. ``tests/scripts/test_reid_study.py`` checks that this
gives the numbers of ``ctvis track`` + ``training.assoc_metrics`` on written videos.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from model.config import ModelConfig, TrackerConfig
from model.postprocess import VideoAccumulator, video_results
from model.structures import Detections
from model.tracker.state import init_state
from model.tracker.step import track_step
from training.assoc_metrics import AssocScores, video_scores_from_iou
from training.reid_study.cache import VideoCache

__all__ = ["VideoTracks", "embed_video", "score_head", "score_video", "track_cached"]

VideoTracks = list[dict[int, int]]
"""The output tracks of a video that reach the results: per track, frame -> query."""


def embed_video(head: nn.Module, cache: VideoCache) -> torch.Tensor:
    """TxQxD embeddings of the cached query features (no gradient)."""
    with torch.inference_mode():
        return head(cache.feats)


def _detections(cache: VideoCache, embeds: torch.Tensor, t: int) -> Detections:
    """Frame ``t``'s cached candidates as ``select_candidates`` returns them (placeholder
    1x1 mask logits: the tracker reads masks only for the box cue, which is off)."""
    q = cache.candidates[t]
    logits = cache.logits[t]
    scores = logits.softmax(dim=-1)[:, :-1].max(dim=1).values
    return Detections(
        query_indices=q,
        scores=scores[q],
        logits=logits[q],
        mask_logits=logits.new_zeros((len(q), 1, 1)),
        embeds=embeds[t][q],
    )


def track_cached(
    cache: VideoCache, embeds: torch.Tensor, model_cfg: ModelConfig, trk_cfg: TrackerConfig
) -> VideoTracks:
    """Run the tracker over a cached video; returns the tracks that reach the results, in
    the order of their first results entry (the order ``results_by_track`` keeps)."""
    if trk_cfg.box_iou_weight > 0:
        raise ValueError("the cached evaluation needs the box cue off (box_iou_weight=0)")
    num_classes = cache.logits.shape[-1] - 1
    state = init_state(embeds.shape[-1], num_classes, trk_cfg.cache_size, dtype=embeds.dtype)
    accumulator = VideoAccumulator(trk_cfg, None)
    frames_of: dict[int, dict[int, int]] = {}
    with torch.inference_mode():
        for t in range(embeds.shape[0]):
            det = _detections(cache, embeds, t)
            state, assignment = track_step(state, det, trk_cfg)
            accumulator.add_frame(det, assignment)
            for row in torch.nonzero(assignment.kept).flatten().tolist():
                track_id = int(assignment.track_ids[row])
                frames_of.setdefault(track_id, {})[t] = int(det.query_indices[row])
        entries = accumulator.finalize()
        results = video_results(entries, embeds.shape[0], cache.size, model_cfg, 0)
    present = {e.track_id: e.present for e in entries}
    order = list(dict.fromkeys(int(r["track_id"]) for r in results))
    return [{t: q for t, q in frames_of[tid].items() if present[tid][t]} for tid in order]


def score_video(cache: VideoCache, tracks: VideoTracks) -> AssocScores:
    """IDF1 / HOTA of one video's output tracks against its ground truth (cached IoUs)."""
    num_frames, num_gt = cache.gt_area.shape
    gt_ids, dt_ids, ious = [], [], []
    for t in range(num_frames):
        g_idx = np.flatnonzero(cache.gt_area[t] > 0)
        d_idx, queries = [], []
        for d, track in enumerate(tracks):
            q = track.get(t)
            if q is not None and cache.query_area[t, q] > 0:
                d_idx.append(d)
                queries.append(q)
        iou = cache.iou(t)[np.ix_(queries, g_idx)].T if queries else np.zeros((len(g_idx), 0))
        gt_ids.append(g_idx.astype(np.int64))
        dt_ids.append(np.asarray(d_idx, dtype=np.int64))
        ious.append(iou)
    return video_scores_from_iou(gt_ids, dt_ids, ious, num_gt, len(tracks))


def score_head(
    head: nn.Module,
    caches: Sequence[VideoCache],
    model_cfg: ModelConfig,
    trk_cfg: TrackerConfig,
) -> list[AssocScores]:
    """Per-video scores of ``head`` on every cached video (combine with
    ``training.assoc_metrics.combine_scores``)."""
    out = []
    for cache in caches:
        tracks = track_cached(cache, embed_video(head, cache), model_cfg, trk_cfg)
        out.append(score_video(cache, tracks))
    return out
