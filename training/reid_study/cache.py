"""What a frozen segmenter says about each ``reid``-preset video, computed once per video.

The study trains and scores many re-id heads on the same frozen segmenter, so the network runs
once per video and everything a head's training and scoring needs is kept:

* ``feats``: the decoder's final query features (the ``decoder_norm`` output,
  ``FrameOutputs.pred_queries``), which are the re-id head's input;
* ``logits`` and ``candidates``: the class logits and, per frame, the queries that
  ``model.tracker.select.select_candidates`` keeps (they depend on logits and masks, not on
  the embeddings, so they are the same for every head);
* ``inter``, ``query_area``, ``gt_area``: every query's binary mask at the frame's size
  (``model.postprocess.upsample_mask_logits`` then ``> 0``, exactly the output masks of
  ``ctvis track``) against every ground-truth mask, as pixel counts, from which mask IoUs
  (and so IDF1 / AssA) follow without keeping any mask;
* ``slot2query``: the ground-truth assignment: per frame, the Hungarian assignment of
  queries to the visible ground-truth instances on mask IoU, keeping pairs with IoU >= 0.5
  (:data:`ASSIGN_IOU`); an instance without such a query has no embedding in that frame.

Videos are rendered in memory by ``training.data.reid_synth.render_reid_video`` from the
seeds ``ctvis synth --preset reid --seed S`` uses (video ``v`` from ``S * 100_003 + v``), so a
cache equals what the written dataset would give (PNG frames are lossless).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from model.config import PreprocessConfig, TrackerConfig
from model.nn.segmenter import Segmenter
from model.postprocess import MaskSizes, upsample_mask_logits
from model.preprocess import prepare_frames
from model.tracker.select import select_candidates
from training.data.reid_synth import ReidVideo, render_reid_video

__all__ = [
    "ASSIGN_IOU",
    "VideoCache",
    "cache_video",
    "cache_videos",
    "load_caches",
    "mask_recall",
    "save_caches",
    "video_seed",
]

ASSIGN_IOU = 0.5
"""A query counts as an instance's embedding in a frame only at mask IoU >= this."""

Event = tuple[str, tuple[int, ...], int, int]  # kind, ground-truth tracks, start, end


@dataclass(frozen=True)
class VideoCache:
    """One video as the frozen segmenter sees it (T frames, Q queries, G ground-truth tracks).

    Attributes:
        name: ``reid_<seed>_<v>`` as ``ctvis synth`` names it.
        feats: TxQxC float32 query features (the re-id head's input).
        logits: TxQx(K+1) float32 class logits.
        candidates: per frame, int64 queries kept by ``select_candidates`` (descending score).
        inter: TxQxG int32 pixels shared by each query's output mask and each ground truth.
        query_area: TxQ int32 pixels of each query's output mask.
        gt_area: TxG int32 visible pixels of each ground-truth instance (0 = not visible).
        slot2query: TxG int64 query assigned to each ground truth (-1: none at IoU >= 0.5).
        events: the video's scripted events (``ReidEvent`` fields as a tuple).
        size: (H, W) of the frames.
    """

    name: str
    feats: torch.Tensor
    logits: torch.Tensor
    candidates: tuple[torch.Tensor, ...]
    inter: np.ndarray
    query_area: np.ndarray
    gt_area: np.ndarray
    slot2query: torch.Tensor
    events: tuple[Event, ...]
    size: tuple[int, int]

    @property
    def valid(self) -> torch.Tensor:
        """TxG bool: the instance has an assigned query (an embedding) in that frame."""
        return self.slot2query >= 0

    def iou(self, t: int) -> np.ndarray:
        """QxG float64 mask IoU of frame ``t`` (0 where both masks are empty)."""
        inter = self.inter[t].astype(np.float64)
        union = self.query_area[t][:, None] + self.gt_area[t][None, :] - inter
        return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def video_seed(seed: int, index: int) -> int:
    """Render seed of video ``index`` of ``ctvis synth --preset reid --seed seed``."""
    return seed * 100_003 + index


def _assign(iou: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """G query per ground truth: Hungarian on IoU over the visible ones, pairs >= ASSIGN_IOU."""
    out = np.full(iou.shape[1], -1, dtype=np.int64)
    cols = np.flatnonzero(visible)
    if cols.size == 0:
        return out
    rows, picked = linear_sum_assignment(-iou[:, cols])
    for q, j in zip(rows, picked, strict=True):
        if iou[q, cols[j]] >= ASSIGN_IOU:
            out[cols[j]] = q
    return out


def _gt_masks(video: ReidVideo, t: int, size: tuple[int, int]) -> torch.Tensor:
    """GxHxW float32 visible masks of frame ``t`` (zeros where an instance is not visible)."""
    rows = [
        torch.from_numpy(m)
        if (m := track["masks"][t]) is not None
        else torch.zeros(size, dtype=torch.bool)
        for track in video.tracks
    ]
    return torch.stack(rows).flatten(1).to(torch.float32)


def cache_video(
    name: str,
    video: ReidVideo,
    segmenter: Segmenter,
    pre_cfg: PreprocessConfig,
    trk_cfg: TrackerConfig,
) -> VideoCache:
    """Run the frozen ``segmenter`` over one video (clips of ``pre_cfg.clip_frames`` frames,
    as ``ctvis track``) and keep what the study needs (module docstring)."""
    size = (int(video.frames[0].shape[0]), int(video.frames[0].shape[1]))
    clip = max(1, pre_cfg.clip_frames)
    feats, logits, cands, inter, q_area, g_area, s2q = [], [], [], [], [], [], []
    with torch.inference_mode():
        for start in range(0, len(video.frames), clip):
            batch = prepare_frames(video.frames[start : start + clip], pre_cfg)
            sizes = MaskSizes.of(batch)
            out = segmenter(batch.pixels)
            assert out.pred_queries is not None
            for b in range(out.pred_logits.shape[0]):
                t = start + b
                masks = out.pred_masks[b] + trk_cfg.mask_logit_offset
                det = select_candidates(out.pred_logits[b], masks, out.pred_embeds[b], trk_cfg)
                binary = (upsample_mask_logits(masks, sizes) > 0).flatten(1).to(torch.float32)
                gt = _gt_masks(video, t, size)
                shared = (binary @ gt.T).round().to(torch.int32).numpy()
                qa = binary.sum(1).round().to(torch.int32).numpy()
                ga = gt.sum(1).round().to(torch.int32).numpy()
                union = qa[:, None] + ga[None, :] - shared
                iou = np.divide(shared, union, out=np.zeros(shared.shape), where=union > 0)
                feats.append(out.pred_queries[b].clone())
                logits.append(out.pred_logits[b].clone())
                cands.append(det.query_indices.clone())
                inter.append(shared)
                q_area.append(qa)
                g_area.append(ga)
                s2q.append(_assign(iou, ga > 0))
    events = tuple((e.kind, tuple(e.tracks), e.start, e.end) for e in video.events)
    return VideoCache(
        name=name,
        feats=torch.stack(feats),
        logits=torch.stack(logits),
        candidates=tuple(cands),
        inter=np.stack(inter),
        query_area=np.stack(q_area),
        gt_area=np.stack(g_area),
        slot2query=torch.from_numpy(np.stack(s2q)),
        events=events,
        size=size,
    )


def cache_videos(
    segmenter: Segmenter,
    pre_cfg: PreprocessConfig,
    trk_cfg: TrackerConfig,
    seed: int,
    num_videos: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[VideoCache]:
    """Render videos ``0..num_videos-1`` of ``ctvis synth --preset reid --seed seed`` and
    cache each (``progress(done, total)`` after every video)."""
    out = []
    for v in range(num_videos):
        video = render_reid_video(video_seed(seed, v))
        out.append(cache_video(f"reid_{seed}_{v:04d}", video, segmenter, pre_cfg, trk_cfg))
        if progress is not None:
            progress(v + 1, num_videos)
    return out


def mask_recall(caches: Sequence[VideoCache], threshold: float = ASSIGN_IOU) -> float:
    """Fraction of visible ground-truth instance-frames with some query at IoU >= threshold."""
    hit = total = 0
    for c in caches:
        for t in range(c.gt_area.shape[0]):
            visible = c.gt_area[t] > 0
            best = c.iou(t).max(0) if c.iou(t).size else np.zeros(visible.shape)
            hit += int((best[visible] >= threshold).sum())
            total += int(visible.sum())
    return hit / max(total, 1)


def save_caches(path: str | Path, caches: Sequence[VideoCache], meta: dict[str, Any]) -> None:
    """Write caches (and what produced them, ``meta``) with ``torch.save``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": meta, "videos": [asdict(c) for c in caches]}, path)


def load_caches(path: str | Path) -> tuple[list[VideoCache], dict[str, Any]]:
    """Read what :func:`save_caches` wrote: (caches, meta)."""
    data = torch.load(path, weights_only=False)
    videos = []
    for item in data["videos"]:
        item["candidates"] = tuple(item["candidates"])
        item["events"] = tuple((k, tuple(tr), s, e) for k, tr, s, e in item["events"])
        item["size"] = tuple(item["size"])
        videos.append(VideoCache(**item))
    return videos, data["meta"]
