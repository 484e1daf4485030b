"""YouTube-VIS evaluator: official numbers on the real sample, edge cases, IDSW, label space."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from training.label_space import LabelSpaceMismatch, label_space_mismatch
from training.ytvis_eval import (
    METRIC_KEYS,
    EvalResult,
    evaluate,
    evaluate_files,
    frame_intersections,
    video_iou,
)
from training.ytvis_json import GroundTruth, YtvisFormatError, parse_ground_truth, parse_results

SIZE = (64, 64)


@pytest.mark.parametrize("results_name", ["results_gt_as_pred.json", "results_perturbed.json"])
def test_real_sample_matches_official(real_sample_dir: Path, results_name: str) -> None:
    expected = json.loads((real_sample_dir / "expected_metrics.json").read_text())[results_name]
    result = evaluate_files(real_sample_dir / "instances.json", real_sample_dir / results_name)
    for key in METRIC_KEYS:
        assert result.metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    assert result.id_switches == 0  # every frame's best match is P4 (exact ground truth)


def test_real_sample_per_category(real_sample_dir: Path) -> None:
    result = evaluate_files(
        real_sample_dir / "instances.json", real_sample_dir / "results_perturbed.json"
    )
    present = {k: v for k, v in result.per_category_ap.items() if v >= 0}
    assert set(present) == {"bird", "car", "dog", "person"}
    # AP is the mean over categories with ground truth.
    assert np.mean(list(present.values())) == pytest.approx(result.metrics["AP"], abs=1e-12)
    assert len(result.per_category_ap) == 40


def _rle(
    box: tuple[int, int, int, int] | None, size: tuple[int, int] = SIZE
) -> dict[str, Any] | None:
    """Compressed RLE of a filled (x0, y0, x1, y1) box in an HxW frame, None for absent."""
    if box is None:
        return None
    mask = np.zeros((*size, 1), dtype=np.uint8, order="F")
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(mask)[0]
    return {"size": list(size), "counts": rle["counts"].decode("ascii")}


def _gt(tracks: list[dict[str, Any]], length: int, size: tuple[int, int] = SIZE) -> dict[str, Any]:
    names = [f"{i}.jpg" for i in range(length)]
    return {
        "videos": [{"id": 1, "height": size[0], "width": size[1], "file_names": names}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {
                "id": i + 1,
                "video_id": 1,
                "category_id": t.get("category_id", 1),
                "iscrowd": t.get("iscrowd", 0),
                "segmentations": [_rle(b, size) for b in t["boxes"]],
            }
            for i, t in enumerate(tracks)
        ],
    }


def _run(
    gt_tracks: list[dict[str, Any]],
    preds: list[dict[str, Any]],
    length: int,
    size: tuple[int, int] = SIZE,
) -> EvalResult:
    gt = parse_ground_truth(_gt(gt_tracks, length, size))
    results = [
        {
            "video_id": 1,
            "category_id": p.get("category_id", 1),
            "score": p["score"],
            "segmentations": [_rle(b, size) for b in p["boxes"]],
        }
        for p in preds
    ]
    return evaluate(gt, parse_results(results, gt))


BOX_A = (0, 0, 10, 10)  # 100 px: "small"
BOX_B = (30, 30, 40, 40)


def test_false_positive_ranked_first_and_empty_buckets() -> None:
    result = _run(
        [{"boxes": [BOX_A, BOX_A]}],
        [{"score": 0.95, "boxes": [BOX_B, BOX_B]}, {"score": 0.9, "boxes": [BOX_A, BOX_A]}],
        length=2,
    )
    m = result.metrics
    # Precision is 0.5 at every recall point once the top-ranked false positive is counted.
    assert m["AP"] == pytest.approx(0.5) and m["APs"] == pytest.approx(0.5)
    assert m["AR1"] == 0.0 and m["AR10"] == 1.0 and m["AR100"] == 1.0
    for key in ("APm", "APl", "ARm", "ARl"):
        assert m[key] == -1.0, key
    assert result.per_category_ap == {"cat": pytest.approx(0.5), "dog": -1.0}


def test_null_prediction_frame_counts_ground_truth_in_union() -> None:
    # IoU = 100 / (100 + 100) = 0.5: a match at the 0.50 threshold only.
    result = _run([{"boxes": [BOX_A, BOX_A]}], [{"score": 0.9, "boxes": [BOX_A, None]}], 2)
    assert result.metrics["AP50"] == pytest.approx(1.0)
    assert result.metrics["AP75"] == 0.0
    assert result.metrics["AP"] == pytest.approx(0.1)


def test_frames_absent_on_both_sides_add_nothing() -> None:
    boxes = [BOX_A, None, BOX_A]
    result = _run([{"boxes": boxes}], [{"score": 0.9, "boxes": boxes}], 3)
    assert result.metrics["AP"] == pytest.approx(1.0)


def test_crowd_absorbs_predictions_without_false_positives() -> None:
    gt = [{"boxes": [BOX_A]}, {"boxes": [BOX_B], "iscrowd": 1}]
    preds = [
        {"score": 0.9, "boxes": [BOX_B]},
        {"score": 0.85, "boxes": [BOX_B]},
        {"score": 0.8, "boxes": [BOX_A]},
    ]
    assert _run(gt, preds, 1).metrics["AP"] == pytest.approx(1.0)
    no_crowd = [{"boxes": [BOX_A]}, {"boxes": [BOX_B], "iscrowd": 0}]
    assert _run(no_crowd, preds, 1).metrics["AP"] < 1.0


def test_wrong_category_is_a_false_positive() -> None:
    preds = [{"score": 0.9, "boxes": [BOX_A], "category_id": 2}]
    result = _run([{"boxes": [BOX_A]}], preds, 1)
    assert result.metrics["AP"] == 0.0 and result.metrics["AR100"] == 0.0


def test_medium_and_large_buckets() -> None:
    medium, large = (0, 0, 150, 150), (300, 0, 600, 300)  # 22500 px and 90000 px
    gt = [{"boxes": [medium]}, {"boxes": [large]}]
    m = _run(gt, [{"score": 0.9, "boxes": [medium]}], 1, size=(600, 600)).metrics
    assert m["APs"] == -1.0 and m["APm"] == pytest.approx(1.0) and m["APl"] == 0.0
    assert m["AR100"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("owners", "expected"),
    [
        (["x", "x", "x", "x"], 0),
        (["x", "x", "y", "y"], 1),
        (["x", "y", "x", "y"], 3),
        (["x", None, "x", "x"], 0),  # lost for a frame, re-acquired by the same prediction
        (["x", None, "y", "y"], 1),
    ],
)
def test_identity_switches(owners: list[str | None], expected: int) -> None:
    """One ground-truth track; prediction x or y covers it frame by frame (None: nobody)."""
    n = len(owners)
    pred_x = [BOX_A if o == "x" else None for o in owners]
    pred_y = [BOX_A if o == "y" else None for o in owners]
    # A distractor in the same frames that never reaches IoU 0.5 with the track.
    pred_z = [(0, 0, 4, 4)] * n
    gt = [{"boxes": [BOX_A] * n}, {"boxes": [BOX_B] * n}]
    preds = [
        {"score": 0.9, "boxes": pred_x},
        {"score": 0.8, "boxes": pred_y},
        {"score": 0.95, "boxes": pred_z},
        {"score": 0.5, "boxes": [BOX_B] * n},  # second track: always the same prediction
    ]
    assert _run(gt, preds, n).id_switches == expected


def test_identity_switch_ties_go_to_higher_score() -> None:
    # Two identical predictions (as CTVIS emits one entry under several labels): no switch.
    preds = [
        {"score": 0.3, "boxes": [BOX_A] * 3},
        {"score": 0.6, "boxes": [BOX_A] * 3, "category_id": 2},
    ]
    assert _run([{"boxes": [BOX_A] * 3}], preds, 3).id_switches == 0


def test_bad_inputs_raise_format_error() -> None:
    gt = parse_ground_truth(_gt([{"boxes": [BOX_A]}], 1))
    with pytest.raises(YtvisFormatError, match="not in the ground truth"):
        parse_results([{"video_id": 7, "category_id": 1, "score": 1, "segmentations": [None]}], gt)
    with pytest.raises(YtvisFormatError, match="segmentations for 1 frames"):
        parse_results([{"video_id": 1, "category_id": 1, "score": 1, "segmentations": []}], gt)
    with pytest.raises(YtvisFormatError, match="missing or bad field"):
        parse_results([{"video_id": 1, "segmentations": [None]}], gt)
    with pytest.raises(YtvisFormatError, match="does not match video size"):
        bad = {"size": [SIZE[0] + 1, SIZE[1]], "counts": "0"}
        parse_results([{"video_id": 1, "category_id": 1, "score": 1, "segmentations": [bad]}], gt)
    with pytest.raises(YtvisFormatError):
        parse_ground_truth({"videos": []})


def test_vectorised_iou_matches_brute_force() -> None:
    """Random masks with null and empty frames: IoU equals sum(I) / sum(U) on decoded masks."""
    rng = np.random.default_rng(0)
    length, size = 6, (24, 32)

    def random_track() -> list[np.ndarray | None]:
        frames: list[np.ndarray | None] = []
        for _ in range(length):
            kind = rng.random()
            if kind < 0.2:
                frames.append(None)
            elif kind < 0.3:
                frames.append(np.zeros(size, dtype=np.uint8))
            else:
                frames.append((rng.random(size) < rng.random()).astype(np.uint8))
        return frames

    def rle(mask: np.ndarray | None) -> dict[str, Any] | None:
        if mask is None:
            return None
        encoded = mask_utils.encode(np.asfortranarray(mask[:, :, None]))[0]
        return {"size": list(size), "counts": encoded["counts"].decode("ascii")}

    gt_masks = [random_track() for _ in range(3)]
    dt_masks = [random_track() for _ in range(4)]
    data = {
        "videos": [{"id": 1, "height": size[0], "width": size[1], "file_names": ["a"] * length}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": j + 1, "video_id": 1, "category_id": 1, "segmentations": [rle(m) for m in t]}
            for j, t in enumerate(gt_masks)
        ],
    }
    gt = parse_ground_truth(data)
    dts = parse_results(
        [
            {"video_id": 1, "category_id": 1, "score": 0.5, "segmentations": [rle(m) for m in t]}
            for t in dt_masks
        ],
        gt,
    )
    got = video_iou(frame_intersections(dts, gt.tracks, length), dts, gt.tracks)
    zero = np.zeros(size, dtype=bool)
    for i, d in enumerate(dt_masks):
        for j, g in enumerate(gt_masks):
            pairs = [
                (zero if a is None else a.astype(bool), zero if b is None else b.astype(bool))
                for a, b in zip(d, g, strict=True)
            ]
            inter = sum(int((a & b).sum()) for a, b in pairs)
            union = sum(int((a | b).sum()) for a, b in pairs)
            assert got[i, j] == pytest.approx(inter / union if union else 0.0, abs=1e-12)


def _named_results(gt: GroundTruth, entries: list[tuple[int, str | None]]) -> tuple:
    """One full-frame result per ``(category_id, category_name or None)``."""
    raw = []
    for i, (category_id, name) in enumerate(entries):
        entry = {"video_id": 1, "category_id": category_id, "score": 0.9 - 0.1 * i}
        entry["segmentations"] = [_rle(BOX_A), _rle(BOX_A)]
        entry["track_id"] = i
        if name is not None:
            entry["category_name"] = name
        raw.append(entry)
    return parse_results(raw, gt)


def test_label_space_agrees_up_to_case_and_separators() -> None:
    gt = parse_ground_truth(_gt([{"boxes": [BOX_A, BOX_A]}], 2))  # categories 1 cat, 2 dog
    assert label_space_mismatch(gt, _named_results(gt, [(1, "Cat"), (2, None), (2, "dog")])) is None
    assert label_space_mismatch(gt, ()) is None
    data = _gt([], 2)
    data["categories"] = [{"id": 1, "name": "giant_panda"}, {"id": 2, "name": "tennis racket"}]
    gt2 = parse_ground_truth(data)
    same = _named_results(gt2, [(1, "Giant Panda"), (2, "tennis-racket")])
    assert label_space_mismatch(gt2, same) is None


def test_label_space_names_unknown_ids_and_other_names() -> None:
    gt = parse_ground_truth(_gt([{"boxes": [BOX_A, BOX_A]}], 2))
    results = _named_results(gt, [(1, "circle"), (1, "circle"), (7, "star"), (2, "dog"), (9, None)])
    found = label_space_mismatch(gt, results)
    assert found == LabelSpaceMismatch(
        unknown_ids=(7, 9), renamed=((1, "circle", "cat"),), affected=4, total=5, gt_ids=(1, 2)
    )
    message = found.message()
    assert "\n" not in message
    assert message.startswith(
        "results use category ids {7, 9} / names {1: 'circle' (ground truth: 'cat')} "
        "not in the ground truth's label space (2 categories, ids 1-2); 4 of 5 results entries"
    )
    many = LabelSpaceMismatch(tuple(range(50, 60)), (), 10, 10, (1, 3))
    assert "category ids {50, 51, 52, 53, 54, ... 5 more}" in many.message()
    assert "(2 categories, ids {1, 3})" in many.message()


def test_label_space_without_ground_truth_names_checks_ids_only() -> None:
    data = _gt([], 2)
    data["categories"] = [{"id": 1}, {"id": 2}]
    gt = parse_ground_truth(data)
    assert label_space_mismatch(gt, _named_results(gt, [(1, "circle"), (2, "square")])) is None
    found = label_space_mismatch(gt, _named_results(gt, [(3, "circle")]))
    assert found is not None and found.unknown_ids == (3,) and found.renamed == ()


def test_extra_result_keys_change_no_number() -> None:
    gt = parse_ground_truth(_gt([{"boxes": [BOX_A, BOX_B]}, {"boxes": [BOX_B, None]}], 2))
    plain = [
        {"video_id": 1, "category_id": 1, "score": s, "segmentations": [_rle(a), _rle(b)]}
        for s, (a, b) in [(0.9, (BOX_A, BOX_B)), (0.8, (BOX_B, BOX_A)), (0.7, (BOX_B, None))]
    ]
    ours = [{**r, "track_id": i, "category_name": "circle"} for i, r in enumerate(plain)]
    a, b = evaluate(gt, parse_results(plain, gt)), evaluate(gt, parse_results(ours, gt))
    assert a.metrics == b.metrics and a.id_switches == b.id_switches
    np.testing.assert_array_equal(a.precision, b.precision)
    assert 0 < a.metrics["AP"] < 1
