"""What limits a results file's AP: masks, identities or classes (``docs/experiments.md`` 1g).

    python scripts/oracle_ap.py GT.json RESULTS.json

Scores two oracles built from the results' own masks with the YouTube-VIS evaluator:

- ``mask_oracle``: perfect identities and classes. Each ground-truth object becomes one track
  of its own class (score 1) whose mask in every frame is the result mask of that video that
  overlaps it best (none where nothing overlaps). Its AP is the ceiling the masks allow.
- ``class_oracle``: the results' tracks with perfect classes. Entries that are the same track
  under another class are merged, and each track takes the class of the ground-truth object
  it overlaps best over the video (video IoU); scores stay. Against the real AP it shows what
  classification costs; against ``mask_oracle`` what the identities cost.

Prints one JSON object: the AP / AP50 / AP75 (in %) of the results and of both oracles.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import rle  # noqa: E402
from training.ytvis_eval import evaluate_files  # noqa: E402

Segmentation = dict[str, Any] | None


class _Masks:
    """Decodes each distinct RLE once."""

    def __init__(self) -> None:
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, seg: dict[str, Any]) -> np.ndarray:
        counts = seg["counts"]
        key = counts if isinstance(counts, str) else json.dumps(counts)
        key = f"{seg['size']}:{key}"
        if key not in self._cache:
            self._cache[key] = rle.decode(seg).astype(bool)
        return self._cache[key]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(int((a | b).sum()), 1))


def mask_oracle(gt: dict[str, Any], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per ground-truth object, built from the best-overlapping result masks."""
    decode = _Masks()
    by_video: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by_video[r["video_id"]].append(r)
    out = []
    for ann in gt["annotations"]:
        segs: list[Segmentation] = []
        for t, seg in enumerate(ann["segmentations"]):
            best, chosen = 0.0, None
            if seg is not None:
                truth = decode(seg)
                for r in by_video[ann["video_id"]]:
                    cand = r["segmentations"][t]
                    if cand is not None and (iou := _iou(truth, decode(cand))) > best:
                        best, chosen = iou, cand
            segs.append(chosen)
        out.append(
            {
                "video_id": ann["video_id"],
                "category_id": ann["category_id"],
                "score": 1.0,
                "segmentations": segs,
            }
        )
    return out


def class_oracle(gt: dict[str, Any], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results' tracks (one entry each), each with its best-overlapping object's class."""
    decode = _Masks()
    anns: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in gt["annotations"]:
        anns[ann["video_id"]].append(ann)
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in results:
        key = (r["video_id"], *(json.dumps(s, sort_keys=True) for s in r["segmentations"]))
        if key in seen:  # the same track under another class (video-level top-k)
            continue
        seen.add(key)
        best, category = 0.0, r["category_id"]
        for ann in anns[r["video_id"]]:
            inter = union = 0
            for seg, truth_seg in zip(r["segmentations"], ann["segmentations"], strict=True):
                mask = decode(seg) if seg is not None else None
                truth = decode(truth_seg) if truth_seg is not None else None
                if mask is not None and truth is not None:
                    inter += int((mask & truth).sum())
                    union += int((mask | truth).sum())
                elif mask is not None or truth is not None:
                    union += int((mask if mask is not None else truth).sum())  # type: ignore[union-attr]
            if union and inter / union > best:
                best, category = inter / union, ann["category_id"]
        out.append({**r, "category_id": category})
    return out


def _score(gt_path: Path, results: list[dict[str, Any]]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results.json"
        path.write_text(json.dumps(results))
        metrics = evaluate_files(gt_path, path).metrics
    return {k: round(100 * metrics[k], 2) for k in ("AP", "AP50", "AP75")}


def main(gt_path: str, results_path: str) -> dict[str, dict[str, float]]:
    """The three scores (also printed as one JSON object)."""
    gt = json.loads(Path(gt_path).read_text())
    results = json.loads(Path(results_path).read_text())
    report = {
        "results": _score(Path(gt_path), results),
        "mask_oracle": _score(Path(gt_path), mask_oracle(gt, results)),
        "class_oracle": _score(Path(gt_path), class_oracle(gt, results)),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
