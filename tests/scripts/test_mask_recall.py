"""``scripts/mask_recall.py``: mask recall, best IoU and where the wrong pixels lie."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model import rle
from tests.scripts import load_script
from training.data.synthetic import CATEGORIES, write_dataset


def test_counts_masks_spilling_onto_another_object(tmp_path: Path) -> None:
    recall = load_script("mask_recall")
    gt_path = write_dataset(tmp_path / "synth", "val", seed=3, num_videos=3)
    gt = json.loads(gt_path.read_text())
    anns = gt["annotations"]
    results = [{"video_id": a["video_id"], "category_id": a["category_id"], "score": 1.0,
                "segmentations": list(a["segmentations"])} for a in anns]  # fmt: skip
    perfect = tmp_path / "perfect.json"
    perfect.write_text(json.dumps(results))
    report = recall.main(str(gt_path), str(perfect))
    visible = sum(s is not None for a in anns for s in a["segmentations"])
    assert report["gt_masks"] == visible
    assert report["recall_at_0.5"] == 1.0 and report["mean_best_iou"] == 1.0
    assert report["missed_px"] == report["added_px"] == report["added_on_other_px"] == 0
    assert report["added_on_same_class_px"] == 0
    assert report["pixel_iou"] == 1.0

    # one frame: object a's output also covers object b, and b's output is dropped
    video = next(v["id"] for v in gt["videos"] if sum(a["video_id"] == v["id"] for a in anns) >= 2)
    ia, ib = [i for i, a in enumerate(anns) if a["video_id"] == video][:2]
    pairs = zip(anns[ia]["segmentations"], anns[ib]["segmentations"], strict=True)
    t = next(t for t, (sa, sb) in enumerate(pairs) if sa is not None and sb is not None)
    ma = rle.decode(anns[ia]["segmentations"][t]).astype(bool)
    mb = rle.decode(anns[ib]["segmentations"][t]).astype(bool)
    results[ia]["segmentations"][t] = rle.encode_many((ma | mb)[None])[0]
    results[ib]["segmentations"][t] = None
    spilled = tmp_path / "spilled.json"
    spilled.write_text(json.dumps(results))
    report = recall.main(str(gt_path), str(spilled))
    # a's best is its widened mask, which adds b; b's best is the same mask, which adds a
    union = (ma | mb).sum()
    iou_a, iou_b = ma.sum() / union, mb.sum() / union
    spill = int((mb & ~ma).sum()) + int((ma & ~mb).sum())
    assert spill > 0
    assert report["added_on_other_px"] == report["added_px"] == spill
    assert report["missed_px"] == 0
    assert np.isclose(report["mean_best_iou"], (visible - 2 + iou_a + iou_b) / visible)
    assert report["pixel_iou"] < 1.0
    # the same spill, with b relabelled as a's category and as another one
    for same_class in (True, False):
        relabelled = json.loads(gt_path.read_text())
        cat = anns[ia]["category_id"]
        relabelled["annotations"][ib]["category_id"] = (
            cat if same_class else cat % len(CATEGORIES) + 1
        )
        gt_copy = tmp_path / f"gt_{same_class}.json"
        gt_copy.write_text(json.dumps(relabelled))
        report = recall.main(str(gt_copy), str(spilled))
        assert report["added_on_other_px"] == spill
        assert report["added_on_same_class_px"] == (spill if same_class else 0)
