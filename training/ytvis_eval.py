"""YouTube-VIS evaluation (AP/AR over spatio-temporal mask IoU) plus identity switches.

Written from the semantics of the official YouTube-VIS evaluator (``YTVOSeval``), which is
COCO's evaluation with tracks instead of image instances:

* **Video IoU** of a prediction and a ground-truth track is
  ``sum_t |P_t & G_t| / sum_t |P_t | G_t|``; a ``null`` frame counts as an empty mask, so a
  frame where only one side is present adds that side's area to the union and frames where
  both are absent add nothing (IoU 0 if the union is empty). Crowd tracks use the same IoU.
* **Area buckets** use the mean per-frame area over frames with a non-zero area: all,
  small ``[0, 128²]``, medium ``[128², 256²]``, large ``[256², 1e10]`` (inclusive bounds).
* Per (video, category) predictions are sorted by score (stable) and cut to
  ``max(max_dets)``; for each IoU threshold ``.50:.05:.95`` they greedily take the best
  still-free ground truth with IoU >= threshold, non-ignored ground truth first. Crowd ground
  truth is ignored and may absorb several predictions; ground truth outside the area bucket is
  ignored, and unmatched predictions outside the bucket are ignored too.
* Precision is interpolated at 101 recall points per category; AP/AR average over
  categories (taken from the ground truth's ``categories``) and thresholds that have ground
  truth. Empty buckets give -1.

**Identity switches** (not part of the official evaluator): for every non-crowd ground-truth
track and every frame where it is present, the *frame match* is the prediction (any
category, any score) with the highest per-frame mask IoU, provided that IoU >= 0.5; ties go
to the higher score, then to the earlier entry in the results file. An identity switch is
counted whenever a track's frame match differs from its previous frame match; frames without
a frame match are skipped, so losing a track and re-acquiring it under the same prediction
costs nothing, and under another prediction costs one switch (as in CLEAR-MOT's IDSW).

**Label space** (not part of the official evaluator, and it changes no number): the
evaluator reads a results entry's class from its ``category_id`` alone, so results of a model
trained on other classes score AP 0 (or compare different classes) without any error.
:func:`label_space_mismatch` reports results category ids the ground truth does not list
and, where entries also give a ``category_name`` (ours do, from the model's class names), ids
whose names differ from the ground truth's; ``ctvis evaluate`` warns about it, or refuses
with ``--strict``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from training.ytvis_json import GroundTruth, Track, load_ground_truth, load_results

AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 128.0**2),
    "medium": (128.0**2, 256.0**2),
    "large": (256.0**2, 1e5**2),
}
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS: tuple[int, ...] = (1, 10, 100)
IDSW_IOU_THRESHOLD = 0.5
METRIC_KEYS: tuple[str, ...] = (
    *("AP", "AP50", "AP75", "APs", "APm", "APl"),
    *("AR1", "AR10", "AR100", "ARs", "ARm", "ARl"),
)


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` returns.

    Attributes:
        metrics: ``AP AP50 AP75 APs APm APl AR1 AR10 AR100 ARs ARm ARl`` as fractions in
            [0, 1], -1 where no ground truth falls in the bucket.
        per_category_ap: AP (all areas, 100 detections) by category name, -1 without ground
            truth.
        id_switches: Identity switches summed over ground-truth tracks (module docstring).
        precision: float64 [T, R, K, A, M] interpolated precision (T IoU thresholds, R recall
            points, K categories, A area buckets, M max-dets settings); -1 where undefined.
        recall: float64 [T, K, A, M] final recall; -1 where undefined.
    """

    metrics: dict[str, float]
    per_category_ap: dict[str, float]
    id_switches: int
    precision: np.ndarray = field(repr=False)
    recall: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict: the metrics, ``IDSW`` and ``per_category_AP``."""
        out: dict[str, object] = dict(self.metrics)
        out["IDSW"] = self.id_switches
        out["per_category_AP"] = dict(self.per_category_ap)
        return out


@dataclass(frozen=True)
class _VideoCatEval:
    """Matching of one (video, category, area bucket) with predictions in score order."""

    scores: np.ndarray  # float64 [D]
    matched: np.ndarray  # bool [T, D]
    ignored: np.ndarray  # bool [T, D]
    gt_ignored: np.ndarray  # bool [G]


def frame_intersections(dts: Sequence[Track], gts: Sequence[Track], length: int) -> np.ndarray:
    """Per-frame mask intersections between predictions and ground truth of one video.

    Uses ``pycocotools.mask.iou`` on the present masks of each frame and recovers the
    integer intersection ``i = iou * (a + b) / (1 + iou)`` (exact after rounding).

    Returns:
        int64 [length, D, G] pixel counts.
    """
    inter = np.zeros((length, len(dts), len(gts)), dtype=np.int64)
    for t in range(length):
        d_idx = [i for i, d in enumerate(dts) if d.areas[t] > 0]
        g_idx = [j for j, g in enumerate(gts) if g.areas[t] > 0]
        if not d_idx or not g_idx:
            continue
        d_rles = [dts[i].segmentations[t] for i in d_idx]
        g_rles = [gts[j].segmentations[t] for j in g_idx]
        iou = np.asarray(mask_utils.iou(d_rles, g_rles, [0] * len(g_idx)), dtype=np.float64)
        a_d = np.array([dts[i].areas[t] for i in d_idx], dtype=np.float64)
        a_g = np.array([gts[j].areas[t] for j in g_idx], dtype=np.float64)
        value = iou * (a_d[:, None] + a_g[None, :]) / (1.0 + iou)
        inter[t][np.ix_(d_idx, g_idx)] = np.rint(value)
    return inter


def video_iou(inter: np.ndarray, dts: Sequence[Track], gts: Sequence[Track]) -> np.ndarray:
    """Spatio-temporal IoU from per-frame intersections.

    Args:
        inter: int64 [T, D, G] from :func:`frame_intersections`.

    Returns:
        float64 [D, G]; 0 where the summed union is empty.
    """
    total_inter = inter.sum(axis=0).astype(np.float64)
    area_d = np.array([d.areas.sum() for d in dts], dtype=np.float64).reshape(-1, 1)
    area_g = np.array([g.areas.sum() for g in gts], dtype=np.float64).reshape(1, -1)
    union = area_d + area_g - total_inter
    return np.divide(total_inter, union, out=np.zeros_like(union), where=union > 0)


def _greedy_match(
    ious: np.ndarray, gt_ignored: np.ndarray, gt_crowd: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """COCO greedy matching; ``ious`` rows in score order, columns non-ignored first.

    Returns:
        ``(matched, ignored)``, bool [T, D]: whether each prediction matched at each IoU
        threshold, and whether that match was to an ignored ground truth.
    """
    num_dt, num_gt = ious.shape
    matched = np.zeros((len(IOU_THRESHOLDS), num_dt), dtype=bool)
    ignored = np.zeros_like(matched)
    for t, threshold in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(num_gt, dtype=bool)
        for d in range(num_dt):
            best_iou, best = min(threshold, 1 - 1e-10), -1
            for g in range(num_gt):
                if taken[g] and not gt_crowd[g]:
                    continue
                # Once matched to a regular track, never trade it for an ignored one.
                if best > -1 and not gt_ignored[best] and gt_ignored[g]:
                    break
                if ious[d, g] < best_iou:
                    continue
                best_iou, best = ious[d, g], g
            if best > -1:
                matched[t, d], ignored[t, d] = True, gt_ignored[best]
                taken[best] = True
    return matched, ignored


def _evaluate_video_cat(
    dts: Sequence[Track], gts: Sequence[Track], ious: np.ndarray, area: tuple[float, float]
) -> _VideoCatEval:
    """Match one (video, category) in one area bucket; ``dts``/``ious`` rows in score order."""
    lo, hi = area
    outside = np.array([g.iscrowd or not lo <= g.avg_area <= hi for g in gts], dtype=bool)
    gt_order = np.argsort(outside, kind="stable")
    gt_ignored = outside[gt_order]
    gt_crowd = np.array([gts[j].iscrowd for j in gt_order], dtype=bool)
    matched, ignored = _greedy_match(ious[:, gt_order], gt_ignored, gt_crowd)
    dt_outside = np.array([not lo <= d.avg_area <= hi for d in dts], dtype=bool)
    ignored |= ~matched & dt_outside[None, :]
    scores = np.array([d.score for d in dts], dtype=np.float64)
    return _VideoCatEval(scores, matched, ignored, gt_ignored)


def _accumulate(evals: list[_VideoCatEval], max_det: int) -> tuple[np.ndarray, np.ndarray]:
    """Interpolated precision [T, R] and recall [T] of one category/bucket/max-dets cell."""
    num_t = len(IOU_THRESHOLDS)
    precision = -np.ones((num_t, len(RECALL_THRESHOLDS)))
    recall = -np.ones(num_t)
    num_pos = sum(int(np.count_nonzero(~e.gt_ignored)) for e in evals)
    if num_pos == 0:
        return precision, recall
    scores = np.concatenate([e.scores[:max_det] for e in evals])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([e.matched[:, :max_det] for e in evals], axis=1)[:, order]
    ignored = np.concatenate([e.ignored[:, :max_det] for e in evals], axis=1)[:, order]
    tp = np.cumsum(matched & ~ignored, axis=1, dtype=np.float64)
    fp = np.cumsum(~matched & ~ignored, axis=1, dtype=np.float64)
    num_dt = tp.shape[1]
    if num_dt == 0:
        return np.zeros_like(precision), np.zeros(num_t)
    rc = tp / num_pos
    pr = tp / (tp + fp + np.spacing(1))
    # Precision envelope: make it non-increasing in recall (running max from the right).
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    for t in range(num_t):
        idx = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
        valid = idx < num_dt
        precision[t] = np.where(valid, pr[t][np.minimum(idx, num_dt - 1)], 0.0)
    recall = rc[:, -1].copy()
    return precision, recall


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def _summarise(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """The twelve YTVOSeval summary numbers from precision [T,R,K,A,M] and recall [T,K,A,M]."""
    area = {name: i for i, name in enumerate(AREA_RANGES)}
    m100 = MAX_DETS.index(100)
    t50, t75 = 0, 5  # IOU_THRESHOLDS[0] == 0.50, IOU_THRESHOLDS[5] == 0.75
    out = {
        "AP": _mean_valid(precision[:, :, :, area["all"], m100]),
        "AP50": _mean_valid(precision[t50, :, :, area["all"], m100]),
        "AP75": _mean_valid(precision[t75, :, :, area["all"], m100]),
        "APs": _mean_valid(precision[:, :, :, area["small"], m100]),
        "APm": _mean_valid(precision[:, :, :, area["medium"], m100]),
        "APl": _mean_valid(precision[:, :, :, area["large"], m100]),
    }
    for m, max_det in enumerate(MAX_DETS):
        out[f"AR{max_det}"] = _mean_valid(recall[:, :, area["all"], m])
    out["ARs"] = _mean_valid(recall[:, :, area["small"], m100])
    out["ARm"] = _mean_valid(recall[:, :, area["medium"], m100])
    out["ARl"] = _mean_valid(recall[:, :, area["large"], m100])
    return {key: out[key] for key in METRIC_KEYS}


def count_id_switches(inter: np.ndarray, dts: Sequence[Track], gts: Sequence[Track]) -> np.ndarray:
    """Identity switches per ground-truth track of one video (definition: module docstring).

    Args:
        inter: int64 [T, D, G] per-frame intersections from :func:`frame_intersections`.

    Returns:
        int64 [G] switches per ground-truth track (0 for crowd tracks).
    """
    switches = np.zeros(len(gts), dtype=np.int64)
    if not dts or not gts:
        return switches
    area_d = np.stack([d.areas for d in dts], axis=1).astype(np.float64)  # [T, D]
    area_g = np.stack([g.areas for g in gts], axis=1).astype(np.float64)  # [T, G]
    union = area_d[:, :, None] + area_g[:, None, :] - inter
    iou = np.divide(inter, union, out=np.zeros(union.shape), where=union > 0)
    # Rank by (IoU, score, earlier entry): lexsort's last key is the primary one.
    scores = np.array([d.score for d in dts])
    for g, track in enumerate(gts):
        if track.iscrowd:
            continue
        previous = -1
        for t in np.flatnonzero(track.areas > 0):
            candidates = np.flatnonzero(iou[t, :, g] >= IDSW_IOU_THRESHOLD)
            if candidates.size == 0:
                continue
            keys = (-candidates, scores[candidates], iou[t, candidates, g])
            best = int(candidates[np.lexsort(keys)[-1]])
            if previous != -1 and best != previous:
                switches[g] += 1
            previous = best
    return switches


def evaluate(gt: GroundTruth, results: Sequence[Track]) -> EvalResult:
    """Score parsed results against parsed ground truth (semantics: module docstring)."""
    cat_ids = sorted(gt.categories)
    video_ids = sorted(gt.videos)
    max_det = max(MAX_DETS)
    shape = (len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(cat_ids), len(AREA_RANGES))
    precision = -np.ones((*shape, len(MAX_DETS)))
    recall = -np.ones((len(IOU_THRESHOLDS), len(cat_ids), len(AREA_RANGES), len(MAX_DETS)))
    cells: dict[tuple[int, int], list[_VideoCatEval]] = {}
    id_switches = 0
    gts_by_video: dict[int, list[Track]] = defaultdict(list)
    dts_by_video: dict[int, list[Track]] = defaultdict(list)
    for track in gt.tracks:
        gts_by_video[track.video_id].append(track)
    for track in results:
        dts_by_video[track.video_id].append(track)
    for vid in video_ids:
        gts, dts = gts_by_video[vid], dts_by_video[vid]
        inter = frame_intersections(dts, gts, gt.videos[vid].length)
        id_switches += int(count_id_switches(inter, dts, gts).sum())
        ious = video_iou(inter, dts, gts)
        # Predictions of categories the ground truth does not list are dropped, as in YTVOSeval.
        for k, cat in enumerate(cat_ids):
            g_idx = [j for j, g in enumerate(gts) if g.category_id == cat]
            d_idx = [i for i, d in enumerate(dts) if d.category_id == cat]
            if not g_idx and not d_idx:
                continue
            d_idx = sorted(d_idx, key=lambda i: -dts[i].score)[:max_det]  # stable sort
            sub = ious[np.ix_(d_idx, g_idx)]
            cat_dts, cat_gts = [dts[i] for i in d_idx], [gts[j] for j in g_idx]
            for a, area in enumerate(AREA_RANGES.values()):
                cells.setdefault((k, a), []).append(
                    _evaluate_video_cat(cat_dts, cat_gts, sub, area)
                )
    for (k, a), evals in cells.items():
        for m, md in enumerate(MAX_DETS):
            precision[:, :, k, a, m], recall[:, k, a, m] = _accumulate(evals, md)
    all_area, m100 = list(AREA_RANGES).index("all"), MAX_DETS.index(100)
    per_category = {
        gt.categories[cat]: _mean_valid(precision[:, :, k, all_area, m100])
        for k, cat in enumerate(cat_ids)
    }
    return EvalResult(
        metrics=_summarise(precision, recall),
        per_category_ap=per_category,
        id_switches=id_switches,
        precision=precision,
        recall=recall,
    )


def evaluate_files(gt_path: str | Path, results_path: str | Path) -> EvalResult:
    """Load a ground-truth and a results JSON file and :func:`evaluate` them.

    Raises:
        training.ytvis_json.YtvisFormatError: For missing, unreadable or malformed files.
    """
    gt = load_ground_truth(gt_path)
    return evaluate(gt, load_results(results_path, gt))
