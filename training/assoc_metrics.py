"""Association metrics of video instance segmentation: IDF1 and HOTA (AssA, DetA), mask-based.

AP (:mod:`training.ytvis_eval`) scores each predicted track as a whole against each
ground-truth track, so a tracker that swaps two look-alikes half-way loses little AP. These
metrics score identities frame by frame, from the same files: YouTube-VIS ground truth and a
results list whose entries carry per-frame RLE segmentations (and, as ``ctvis track`` writes
them, a ``track_id``).

**Detections.** In every frame, each ground-truth track and each predicted track with a
non-empty mask is one detection; a ``null`` or empty segmentation is no detection (so the
empty RLEs ``ctvis track`` writes for absent frames are not false positives). Crowd ground
truth is skipped. The similarity of two detections is their mask IoU. Matching is
class-agnostic: a prediction's ``category_id`` is ignored, so only identities are judged.

**Predictions.** Results entries with the same ``(video_id, track_id)`` are one track (the
model writes a track once per top-scoring class, with the same masks): the highest-scoring
entry stands for it. Entries without a ``track_id`` are tracks of their own. Tracks whose
score is below ``min_score`` are dropped first (0 keeps all, as the official evaluators do;
low-score tracks then count as false positives).

**IDF1** (Ristani et al., ECCV 2016 workshops) as TrackEval's ``Identity`` computes it: a
detection pair is a potential match when its IoU >= :data:`IDF1_IOU_THRESHOLD` (0.5); ground
truth and predicted identities are matched one-to-one for the whole video so that the number
of potential matches on matched pairs (IDTP) is largest (Hungarian algorithm); IDFN = ground
truth detections - IDTP, IDFP = predicted detections - IDTP, and
``IDF1 = IDTP / (IDTP + (IDFN + IDFP) / 2)``.

**HOTA** (Luiten et al., IJCV 2021) as TrackEval's ``HOTA`` computes it, for each alpha in
:data:`HOTA_ALPHAS` (0.05, 0.10, ..., 0.95): every frame is matched one-to-one by the
Hungarian algorithm on ``IoU * global alignment score`` of the identity pair, and pairs with
IoU >= alpha are true positives. For each matched identity pair c,
``A(c) = TPA / (TPA + FNA + FPA)``; ``AssA = sum over TPs of A(c) / |TP|``,
``DetA = |TP| / (|TP| + |FN| + |FP|)``, ``HOTA = sqrt(DetA * AssA)``. The reported value is
the mean over alphas.

**Combining videos** (as TrackEval's ``combine_sequences``): IDTP/IDFP/IDFN and the per-alpha
TP/FN/FP counts are summed; AssA per alpha is the TP-weighted mean of the videos' AssA.
``tests/training/test_assoc_metrics.py`` checks every number against the ``trackeval``
package (TrackEval's own ``YouTubeVIS`` dataset reader and metrics) within 1e-6.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from training.ytvis_eval import frame_intersections
from training.ytvis_json import GroundTruth, Track, load_ground_truth, parse_results, read_json

IDF1_IOU_THRESHOLD = 0.5
HOTA_ALPHAS = np.arange(0.05, 0.99, 0.05)
_EPS = np.finfo(float).eps


@dataclass(frozen=True)
class AssocScores:
    """Association scores of one video or of a whole set.

    Attributes:
        idf1, idp, idr: identity F1, precision and recall in [0, 1].
        idtp, idfp, idfn: identity true positives, false positives and false negatives.
        assa, deta, hota: HOTA's association accuracy, detection accuracy and HOTA, each the
            mean over :data:`HOTA_ALPHAS`.
        assa_alpha: float64 [A] AssA per alpha.
        hota_tp, hota_fn, hota_fp: int64 [A] detection counts per alpha.
    """

    idf1: float
    idp: float
    idr: float
    idtp: int
    idfp: int
    idfn: int
    assa: float
    deta: float
    hota: float
    assa_alpha: np.ndarray
    hota_tp: np.ndarray
    hota_fn: np.ndarray
    hota_fp: np.ndarray


@dataclass(frozen=True)
class AssocResult:
    """Per-video and overall scores; ``per_video`` is keyed by video id, in id order."""

    per_video: dict[int, AssocScores]
    overall: AssocScores


@dataclass
class _Frames:
    """One video's detections: per frame the present ground-truth and predicted identities
    (indices) and their IoU matrix [G_t, D_t]."""

    gt_ids: list[np.ndarray]
    dt_ids: list[np.ndarray]
    iou: list[np.ndarray]
    num_gt: int
    num_dt: int


def _frames(gts: Sequence[Track], dts: Sequence[Track], length: int) -> _Frames:
    inter = frame_intersections(dts, gts, length)  # [T, D, G]
    out = _Frames([], [], [], len(gts), len(dts))
    for t in range(length):
        g_idx = np.array([j for j, g in enumerate(gts) if g.areas[t] > 0], dtype=np.int64)
        d_idx = np.array([i for i, d in enumerate(dts) if d.areas[t] > 0], dtype=np.int64)
        i_gd = inter[t][np.ix_(d_idx, g_idx)].T.astype(np.float64)
        a_g = np.array([gts[j].areas[t] for j in g_idx], dtype=np.float64)
        a_d = np.array([dts[i].areas[t] for i in d_idx], dtype=np.float64)
        union = a_g[:, None] + a_d[None, :] - i_gd
        iou = np.divide(i_gd, union, out=np.zeros_like(i_gd), where=union > 0)
        out.gt_ids.append(g_idx)
        out.dt_ids.append(d_idx)
        out.iou.append(iou)
    return out


def _identity_counts(f: _Frames) -> tuple[int, int, int]:
    """(IDTP, IDFP, IDFN) of one video."""
    potential = np.zeros((f.num_gt, f.num_dt))
    gt_dets = sum(len(g) for g in f.gt_ids)
    dt_dets = sum(len(d) for d in f.dt_ids)
    for g_idx, d_idx, iou in zip(f.gt_ids, f.dt_ids, f.iou, strict=True):
        rows, cols = np.nonzero(iou >= IDF1_IOU_THRESHOLD)
        np.add.at(potential, (g_idx[rows], d_idx[cols]), 1)
    if potential.size:
        rows, cols = linear_sum_assignment(-potential)
        idtp = int(potential[rows, cols].sum())
    else:
        idtp = 0
    return idtp, dt_dets - idtp, gt_dets - idtp


def _global_alignment(f: _Frames) -> np.ndarray:
    """HOTA's global alignment score [G, D] of every identity pair (soft IoU-weighted)."""
    potential = np.zeros((f.num_gt, f.num_dt))
    gt_count = np.zeros((f.num_gt, 1))
    dt_count = np.zeros((1, f.num_dt))
    for g_idx, d_idx, sim in zip(f.gt_ids, f.dt_ids, f.iou, strict=True):
        denom = sim.sum(0)[None, :] + sim.sum(1)[:, None] - sim
        ratio = np.zeros_like(sim)
        ok = denom > _EPS
        ratio[ok] = sim[ok] / denom[ok]
        potential[g_idx[:, None], d_idx[None, :]] += ratio
        gt_count[g_idx] += 1
        dt_count[0, d_idx] += 1
    return potential / (gt_count + dt_count - potential)


def _hota_counts(f: _Frames) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per alpha: AssA, TP, FN, FP of one video."""
    n_a = len(HOTA_ALPHAS)
    tp, fn, fp = (np.zeros(n_a, dtype=np.int64) for _ in range(3))
    assa = np.zeros(n_a)
    gt_dets = sum(len(g) for g in f.gt_ids)
    dt_dets = sum(len(d) for d in f.dt_ids)
    if gt_dets == 0 or dt_dets == 0:
        return assa, tp, fn + gt_dets, fp + dt_dets
    alignment = _global_alignment(f)
    matches = np.zeros((n_a, f.num_gt, f.num_dt))
    for g_idx, d_idx, sim in zip(f.gt_ids, f.dt_ids, f.iou, strict=True):
        if len(g_idx) == 0 or len(d_idx) == 0:
            fn += len(g_idx)
            fp += len(d_idx)
            continue
        rows, cols = linear_sum_assignment(-(alignment[np.ix_(g_idx, d_idx)] * sim))
        for a, alpha in enumerate(HOTA_ALPHAS):
            ok = sim[rows, cols] >= alpha - _EPS
            tp[a] += int(ok.sum())
            fn[a] += len(g_idx) - int(ok.sum())
            fp[a] += len(d_idx) - int(ok.sum())
            matches[a, g_idx[rows[ok]], d_idx[cols[ok]]] += 1
    gt_count = np.bincount(np.concatenate(f.gt_ids), minlength=f.num_gt)
    dt_count = np.bincount(np.concatenate(f.dt_ids), minlength=f.num_dt)
    for a in range(n_a):
        mc = matches[a]
        ass = mc / np.maximum(1, gt_count[:, None] + dt_count[None, :] - mc)
        assa[a] = np.sum(mc * ass) / max(1, tp[a])
    return assa, tp, fn, fp


def _scores(
    ids: tuple[int, int, int], assa: np.ndarray, tp: np.ndarray, fn: np.ndarray, fp: np.ndarray
) -> AssocScores:
    idtp, idfp, idfn = ids
    deta = tp / np.maximum(1, tp + fn + fp)
    return AssocScores(
        idf1=idtp / max(1.0, idtp + 0.5 * idfp + 0.5 * idfn),
        idp=idtp / max(1.0, idtp + idfp),
        idr=idtp / max(1.0, idtp + idfn),
        idtp=idtp,
        idfp=idfp,
        idfn=idfn,
        assa=float(np.mean(assa)),
        deta=float(np.mean(deta)),
        hota=float(np.mean(np.sqrt(deta * assa))),
        assa_alpha=assa,
        hota_tp=tp,
        hota_fn=fn,
        hota_fp=fp,
    )


def _combine(videos: Sequence[AssocScores]) -> AssocScores:
    ids = (sum(v.idtp for v in videos), sum(v.idfp for v in videos), sum(v.idfn for v in videos))
    n_a = len(HOTA_ALPHAS)
    tp = sum((v.hota_tp for v in videos), np.zeros(n_a, dtype=np.int64))
    fn = sum((v.hota_fn for v in videos), np.zeros(n_a, dtype=np.int64))
    fp = sum((v.hota_fp for v in videos), np.zeros(n_a, dtype=np.int64))
    weighted = sum((v.assa_alpha * v.hota_tp for v in videos), np.zeros(n_a))
    return _scores(ids, weighted / np.maximum(1.0, tp), tp, fn, fp)


def video_scores_from_iou(
    gt_ids: Sequence[np.ndarray],
    dt_ids: Sequence[np.ndarray],
    iou: Sequence[np.ndarray],
    num_gt: int,
    num_dt: int,
) -> AssocScores:
    """Scores of one video from its detections' IoUs, for callers that have them without
    masks (the re-id study's cached outputs, ``training.reid_study.evaluate``).

    Args:
        gt_ids, dt_ids: per frame, the int64 indices of the ground-truth and predicted
            identities detected there (``0..num_gt-1`` / ``0..num_dt-1``).
        iou: per frame, the float64 [len(gt_ids[t]), len(dt_ids[t])] mask IoU matrix.
        num_gt, num_dt: identities in the video.
    """
    f = _Frames(list(gt_ids), list(dt_ids), list(iou), num_gt, num_dt)
    return _scores(_identity_counts(f), *_hota_counts(f))


def combine_scores(videos: Sequence[AssocScores]) -> AssocScores:
    """The overall scores of several videos (summed counts, TP-weighted AssA per alpha)."""
    return _combine(list(videos))


def association_metrics(gt: GroundTruth, results: Sequence[Track]) -> AssocResult:
    """IDF1 and HOTA/AssA per video and overall (definitions: module docstring).

    Args:
        gt: parsed ground truth; every video it lists is scored.
        results: predicted tracks, one per identity (see :func:`results_by_track`).
    """
    gts: dict[int, list[Track]] = defaultdict(list)
    dts: dict[int, list[Track]] = defaultdict(list)
    for track in gt.tracks:
        if not track.iscrowd:
            gts[track.video_id].append(track)
    for track in results:
        dts[track.video_id].append(track)
    per_video: dict[int, AssocScores] = {}
    for vid in sorted(gt.videos):
        f = _frames(gts[vid], dts[vid], gt.videos[vid].length)
        per_video[vid] = _scores(_identity_counts(f), *_hota_counts(f))
    return AssocResult(per_video, _combine(list(per_video.values())))


def results_by_track(data: Any, gt: GroundTruth, min_score: float = 0.0) -> tuple[Track, ...]:
    """Parse a results list into one track per ``(video_id, track_id)``.

    Of entries sharing a ``track_id`` the highest-scoring one is kept (the first on ties);
    entries without one are tracks of their own. Tracks scoring below ``min_score`` are
    dropped.
    """
    tracks = parse_results(data, gt)
    best: dict[tuple[int, Any], Track] = {}
    for entry, track in zip(data, tracks, strict=True):
        key = (track.video_id, entry.get("track_id", ("entry", track.id)))
        if key not in best or track.score > best[key].score:
            best[key] = track
    return tuple(t for t in best.values() if t.score >= min_score)


def evaluate_association_files(
    gt_path: str | Path, results_path: str | Path, min_score: float = 0.0
) -> AssocResult:
    """Read a ground-truth file and a results file and score association."""
    gt = load_ground_truth(gt_path)
    return association_metrics(gt, results_by_track(read_json(results_path), gt, min_score))


def format_table(result: AssocResult, gt: GroundTruth | None = None) -> str:
    """A plain-text table in percent: one row per video (named by its frames' folder when
    ``gt`` is given) and the overall row."""
    head = ("IDF1", "IDP", "IDR", "AssA", "DetA", "HOTA")
    lines = [f"{'video':<24}" + "".join(f"{h:>8}" for h in head)]
    rows = [*result.per_video.items(), ("overall", result.overall)]
    for vid, s in rows:
        name = str(vid)
        if gt is not None and vid in gt.videos and gt.videos[vid].file_names:
            name = gt.videos[vid].file_names[0].split("/")[0]
        values = (s.idf1, s.idp, s.idr, s.assa, s.deta, s.hota)
        lines.append(f"{name:<24}" + "".join(f"{100 * v:8.2f}" for v in values))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.assoc_metrics GT RESULTS [--min-score S]``: print the table."""
    parser = argparse.ArgumentParser(description="IDF1 and HOTA/AssA of YouTube-VIS results")
    parser.add_argument("gt", help="YouTube-VIS ground truth JSON")
    parser.add_argument("results", help="results JSON (e.g. written by `ctvis track`)")
    parser.add_argument("--min-score", type=float, default=0.0, help="drop tracks below it")
    args = parser.parse_args(argv)
    gt = load_ground_truth(args.gt)
    tracks = results_by_track(read_json(args.results), gt, args.min_score)
    print(format_table(association_metrics(gt, tracks), gt))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
