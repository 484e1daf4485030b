"""Class-agnostic mask quality of a YouTube-VIS results file (docs/experiments.md).

    python scripts/mask_recall.py GT.json RESULTS.json

Prints the fraction of visible ground-truth masks that some output mask of the same frame
covers at IoU >= 0.5 (whatever its class or track), and the mean over those ground-truth
masks of the best IoU any output mask reaches: what the segmenter finds, apart from naming it.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from model import rle


def main(gt_path: str, results_path: str) -> None:
    gt = json.loads(Path(gt_path).read_text())
    results = json.loads(Path(results_path).read_text())
    by_video: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        by_video[r["video_id"]].append(r)
    best: list[float] = []
    for ann in gt["annotations"]:
        tracks = by_video[ann["video_id"]]
        for t, seg in enumerate(ann["segmentations"]):
            if seg is None:
                continue
            truth = rle.decode(seg).astype(bool)
            ious = [0.0]
            for r in tracks:
                if r["segmentations"][t] is None:
                    continue
                mask = rle.decode(r["segmentations"][t]).astype(bool)
                ious.append(float((truth & mask).sum() / max((truth | mask).sum(), 1)))
            best.append(max(ious))
    values = np.array(best)
    print(json.dumps({"gt_masks": len(values), "recall_at_0.5": float((values >= 0.5).mean()),
                      "mean_best_iou": float(values.mean())}))  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
