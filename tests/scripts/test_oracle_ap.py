"""``scripts/oracle_ap.py`` separates mask, identity and class errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.scripts import load_script
from training.data.synthetic import write_dataset


def _as_results(anns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "video_id": a["video_id"],
            "category_id": a["category_id"],
            "score": 1.0,
            "segmentations": a["segmentations"],
        }
        for a in anns
    ]


def test_oracles_isolate_identity_and_class_errors(tmp_path: Path) -> None:
    oracle = load_script("oracle_ap")
    gt_path = write_dataset(tmp_path / "synth", "val", seed=3, num_videos=4)
    gt = json.loads(gt_path.read_text())
    anns = gt["annotations"]
    perfect = tmp_path / "perfect.json"
    perfect.write_text(json.dumps(_as_results(anns)))
    assert oracle.main(str(gt_path), str(perfect)) == {
        name: {"AP": 100.0, "AP50": 100.0, "AP75": 100.0}
        for name in ("results", "mask_oracle", "class_oracle")
    }

    # every class wrong: only the class oracle recovers
    num_classes = len(gt["categories"])
    wrong = [{**r, "category_id": r["category_id"] % num_classes + 1} for r in _as_results(anns)]
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(wrong))
    report = oracle.main(str(gt_path), str(path))
    assert report["results"]["AP"] == 0.0
    assert report["class_oracle"]["AP"] == 100.0 and report["mask_oracle"]["AP"] == 100.0

    # two objects of one video swap tracks halfway: the masks are all there, the tracks are not
    video = next(v["id"] for v in gt["videos"] if sum(a["video_id"] == v["id"] for a in anns) >= 2)
    a, b = [r for r in _as_results(anns) if r["video_id"] == video][:2]
    half = len(a["segmentations"]) // 2
    a_segs, b_segs = a["segmentations"], b["segmentations"]
    a["segmentations"] = a_segs[:half] + b_segs[half:]
    b["segmentations"] = b_segs[:half] + a_segs[half:]
    others = [r for r in _as_results(anns) if r["video_id"] != video]
    rest = [r for r in _as_results(anns) if r["video_id"] == video][2:]
    path = tmp_path / "swapped.json"
    path.write_text(json.dumps([*others, a, b, *rest]))
    report = oracle.main(str(gt_path), str(path))
    assert report["mask_oracle"]["AP"] == 100.0
    assert report["results"]["AP"] < 100.0
