"""Class-agnostic mask quality of a YouTube-VIS results file (docs/experiments.md).

    python scripts/mask_recall.py GT.json RESULTS.json

Prints the fraction of visible ground-truth masks that some output mask of the same frame
covers at IoU >= 0.5 (whatever its class or track), and the mean over those ground-truth
masks of the best IoU any output mask reaches: what the segmenter finds, apart from naming it.
Pixel totals over those best matches say where the errors are: ``missed_px`` (object
pixels the best mask leaves out), ``added_px`` (pixels it adds) and ``added_on_other_px``
(added pixels that belong to another ground-truth object of the frame: one instance's mask
spilling onto its neighbour; ``added_on_same_class_px`` the part of those on an object of
the same category), and ``pixel_iou`` (all intersections over all unions).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from model import rle


def main(gt_path: str, results_path: str) -> dict[str, float]:
    gt = json.loads(Path(gt_path).read_text())
    results = json.loads(Path(results_path).read_text())
    by_video: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        by_video[r["video_id"]].append(r)
    best: list[float] = []
    totals = dict.fromkeys(("intersection_px", "union_px", "missed_px", "added_px",
                            "added_on_other_px", "added_on_same_class_px"), 0)  # fmt: skip
    truths_by_video: dict[int, list[dict]] = defaultdict(list)
    for ann in gt["annotations"]:
        truths_by_video[ann["video_id"]].append(ann)
    for video_id, anns in truths_by_video.items():
        tracks = by_video[video_id]
        for t in range(len(anns[0]["segmentations"])):
            truths = [_decode(a["segmentations"][t]) for a in anns]
            # a results file lists each track once per class label: decode each mask once
            segs = {json.dumps(r["segmentations"][t]): r["segmentations"][t] for r in tracks}
            outputs = [m for m in map(_decode, segs.values()) if m is not None]
            by_class: dict[int, np.ndarray] = {}  # objects of each category per pixel
            for ann, truth in zip(anns, truths, strict=True):
                if truth is not None:
                    cat = ann["category_id"]
                    by_class[cat] = by_class.get(cat, 0) + truth.astype(np.int32)
            coverage = sum(by_class.values())  # objects per pixel
            for ann, truth in zip(anns, truths, strict=True):
                if truth is None:
                    continue
                iou, mask = _best(truth, outputs)
                best.append(iou)
                if mask is None:
                    totals["missed_px"] += int(truth.sum())
                    totals["union_px"] += int(truth.sum())
                    continue
                others = coverage - truth > 0
                added = mask & ~truth
                totals["intersection_px"] += int((truth & mask).sum())
                totals["union_px"] += int((truth | mask).sum())
                totals["missed_px"] += int((truth & ~mask).sum())
                totals["added_px"] += int(added.sum())
                totals["added_on_other_px"] += int((added & others).sum())
                same = by_class[ann["category_id"]] - truth > 0
                totals["added_on_same_class_px"] += int((added & same).sum())
    values = np.array(best)
    report = {"gt_masks": len(values), "recall_at_0.5": float((values >= 0.5).mean()),
              "mean_best_iou": float(values.mean()), **totals,
              "pixel_iou": totals["intersection_px"] / max(totals["union_px"], 1)}  # fmt: skip
    print(json.dumps(report))
    return report


def _decode(segmentation: dict | None) -> np.ndarray | None:
    return None if segmentation is None else rle.decode(segmentation).astype(bool)


def _best(truth: np.ndarray, masks: list[np.ndarray]) -> tuple[float, np.ndarray | None]:
    """The best IoU with ``truth`` among ``masks`` (first on ties) and that mask."""
    best, best_mask = 0.0, None
    for mask in masks:
        iou = float((truth & mask).sum() / max((truth | mask).sum(), 1))
        if iou > best:
            best, best_mask = iou, mask
    return best, best_mask


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
