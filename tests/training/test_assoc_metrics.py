"""IDF1 and HOTA/AssA: hand-computed cases, and every number against the trackeval package."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from training.assoc_metrics import (
    HOTA_ALPHAS,
    association_metrics,
    evaluate_association_files,
    main,
    results_by_track,
)
from training.data.reid_synth import render_reid_video
from training.ytvis_json import parse_ground_truth

H, W = 8, 8


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _uncompressed(rle: dict[str, Any] | None, mask: np.ndarray | None) -> dict | None:
    """The same mask as an uncompressed RLE (what TrackEval's YouTube-VIS reader accepts)."""
    if rle is None or mask is None:
        return None
    flat = mask.T.ravel().astype(np.int8)  # column-major, starting with a background run
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": rle["size"], "counts": counts}


def _box(x: int, w: int = 2) -> np.ndarray:
    """A ``2 x w`` box at column ``x`` of an 8 x 8 frame."""
    m = np.zeros((H, W), bool)
    m[0:2, x : x + w] = True
    return m


def _gt_doc(videos: list[list[list[np.ndarray | None]]], size: tuple[int, int] = (H, W)) -> dict:
    """Ground truth with one video per entry; a video is a list of tracks' per-frame masks."""
    doc: dict[str, Any] = {"videos": [], "annotations": [], "categories": [{"id": 1, "name": "o"}]}
    for vid, tracks in enumerate(videos, start=1):
        files = [f"v{vid}/{t:05d}.png" for t in range(len(tracks[0]))]
        doc["videos"].append({"id": vid, "height": size[0], "width": size[1], "file_names": files})
        for masks in tracks:
            doc["annotations"].append({
                "id": len(doc["annotations"]) + 1, "video_id": vid, "category_id": 1,
                "iscrowd": 0, "height": size[0], "width": size[1],
                "segmentations": [None if m is None else _rle(m) for m in masks],
                "areas": [None if m is None else int(m.sum()) for m in masks],
            })  # fmt: skip
    return doc


def _result(vid: int, masks: list[np.ndarray | None], score: float = 0.9, **extra: Any) -> dict:
    segs = [None if m is None else _rle(m) for m in masks]
    return {"video_id": vid, "category_id": 1, "score": score, "segmentations": segs, **extra}


def _score(gt_doc: dict, results: list[dict]):
    gt = parse_ground_truth(gt_doc)
    return association_metrics(gt, results_by_track(results, gt))


A = [_box(0)] * 4  # two objects over 4 frames that never overlap
B = [_box(5)] * 4


def test_perfect_tracking_scores_one() -> None:
    res = _score(_gt_doc([[A, B]]), [_result(1, A), _result(1, B)])
    s = res.overall
    assert (s.idf1, s.assa, s.deta, s.hota) == (1.0, 1.0, 1.0, 1.0)
    assert (s.idtp, s.idfp, s.idfn) == (8, 0, 0)


def test_identity_swap_halfway() -> None:
    # track 1 follows A then B, track 2 follows B then A: every detection is right, half of
    # each identity is wrong. IDTP = 4 (best one-to-one: 2 + 2), IDF1 = 4 / (4 + 2 + 2);
    # each of the 4 identity pairs has TPA 2, FNA 2, FPA 2, so A = 2 / 6 at every alpha.
    res = _score(_gt_doc([[A, B]]), [_result(1, A[:2] + B[2:]), _result(1, B[:2] + A[2:])])
    s = res.overall
    assert s.idf1 == pytest.approx(0.5)
    assert s.assa == pytest.approx(1 / 3)
    assert s.deta == pytest.approx(1.0)
    assert s.hota == pytest.approx(np.sqrt(1 / 3))


def test_fragmentation() -> None:
    # one object, predicted as two tracks of two frames each
    res = _score(_gt_doc([[A]]), [_result(1, A[:2] + [None] * 2), _result(1, [None] * 2 + A[2:])])
    s = res.overall
    assert (s.idtp, s.idfp, s.idfn) == (2, 2, 2)
    assert s.idf1 == pytest.approx(0.5)
    assert s.assa == pytest.approx(0.5)  # each pair: TPA 2 / (2 + FNA 2 + FPA 0)
    assert s.deta == pytest.approx(1.0)


def test_missing_track() -> None:
    res = _score(_gt_doc([[A, B]]), [_result(1, A)])
    s = res.overall
    assert s.idf1 == pytest.approx(4 / 6)
    assert s.assa == pytest.approx(1.0)  # what is detected is associated perfectly
    assert s.deta == pytest.approx(0.5)


def test_iou_thresholds() -> None:
    # the prediction covers half of a 2x2 object (IoU 0.5): an IDF1 match (IoU >= 0.5) and a
    # HOTA true positive for alpha <= 0.5, i.e. 10 of the 19 alphas
    half = [_box(0, w=1)] * 4
    s = _score(_gt_doc([[A]]), [_result(1, half)]).overall
    assert s.idf1 == pytest.approx(1.0)
    assert list(s.hota_tp) == [4] * 10 + [0] * 9
    assert s.assa == pytest.approx(10 / 19)
    assert s.deta == pytest.approx(10 / 19)


def test_videos_combine_by_counts() -> None:
    doc = _gt_doc([[A, B], [A]])
    res = _score(doc, [_result(1, A[:2] + B[2:]), _result(1, B[:2] + A[2:]), _result(2, A)])
    assert res.per_video[1].assa == pytest.approx(1 / 3)
    assert res.per_video[2].assa == pytest.approx(1.0)
    # AssA weighted by true positives (8 and 4); IDF1 from summed counts (4 + 4 of 12)
    assert res.overall.assa == pytest.approx((8 / 3 + 4) / 12)
    assert res.overall.idf1 == pytest.approx(8 / 12)


def test_results_are_grouped_by_track_id_and_filtered_by_score() -> None:
    gt = parse_ground_truth(_gt_doc([[A, B]]))
    results = [
        _result(1, A, 0.9, track_id=7, category_id=1),
        _result(1, A, 0.2, track_id=7),  # the same track under another class: not a duplicate
        _result(1, B, 0.1, track_id=8),
        _result(1, B, 0.05),  # no track id: a track of its own
    ]
    assert len(results_by_track(results, gt)) == 3
    kept = results_by_track(results, gt, min_score=0.15)
    assert [t.score for t in kept] == [0.9]
    s = association_metrics(gt, kept).overall
    assert (s.idtp, s.idfn, s.idfp) == (4, 4, 0)


def test_empty_masks_are_no_detections() -> None:
    # `ctvis track` writes an empty RLE, not null, where a track is absent
    empty = np.zeros((H, W), bool)
    s = _score(_gt_doc([[A]]), [_result(1, A[:2] + [empty, empty])]).overall
    assert (s.idtp, s.idfp, s.idfn) == (2, 0, 2)


def test_position_swap_in_reid_video_is_seen() -> None:
    video = render_reid_video(0)
    doc = _gt_doc([[t["masks"] for t in video.tracks]], size=video.frames[0].shape[:2])
    perfect = [_result(1, t["masks"]) for t in video.tracks]
    assert _score(doc, perfect).overall.idf1 == pytest.approx(1.0)
    # what a position-only tracker does: the twins trade identities behind the occluder
    swap = next(e for e in video.events if e.kind in ("cross", "swap"))
    a, b = (video.tracks[k]["masks"] for k in swap.tracks)
    swapped = [_result(1, a[: swap.end] + b[swap.end :]), _result(1, b[: swap.end] + a[swap.end :])]
    others = [_result(1, t["masks"]) for k, t in enumerate(video.tracks) if k not in swap.tracks]
    s = _score(doc, swapped + others).overall
    assert s.idf1 < 0.95 and s.assa < 0.9
    assert s.deta == pytest.approx(1.0)  # detection is perfect; only association suffers


def _perturbed(rng: np.random.Generator, masks: list, partner: list) -> list[list]:
    """Predicted tracks for one ground-truth track: shifted masks (IoUs over the alpha range),
    dropped frames, and randomly a fragmentation, an identity swap with ``partner``, a missing
    track, a false positive or an overlapping duplicate."""
    t_len = len(masks)
    shifted = [
        None if m is None or rng.random() < 0.1 else np.roll(m, int(rng.integers(-5, 6)), axis=1)
        for m in masks
    ]
    cut = int(rng.integers(1, t_len))
    kind = rng.integers(6)
    if kind == 0:  # fragmentation
        return [shifted[:cut] + [None] * (t_len - cut), [None] * cut + shifted[cut:]]
    if kind == 1:  # identity swap
        return [shifted[:cut] + partner[cut:]]
    if kind == 2:  # missing
        return []
    if kind == 3:  # a false positive elsewhere, plus the track
        return [shifted, [None if m is None else np.flipud(m) for m in shifted]]
    if kind == 4:  # a second, overlapping track over part of the video (a duplicate)
        other = [None if m is None else np.roll(m, int(rng.integers(-8, 9)), axis=0) for m in masks]
        return [shifted, [None] * cut + other[cut:]]
    return [shifted]


def test_matches_trackeval(tmp_path: Path) -> None:
    import trackeval

    videos = [render_reid_video(seed) for seed in (0, 1, 2)]
    doc = _gt_doc([[t["masks"] for t in v.tracks] for v in videos], videos[0].frames[0].shape[:2])
    rng = np.random.default_rng(0)
    results = []
    for vid, video in enumerate(videos, start=1):
        tracks = [t["masks"] for t in video.tracks]
        for k, masks in enumerate(tracks):
            for pred in _perturbed(rng, masks, tracks[(k + 1) % len(tracks)]):
                if any(m is not None for m in pred):
                    results.append(_result(vid, pred, float(rng.uniform(0.1, 1.0))))
    ours = _score(doc, results)
    theirs = _trackeval(trackeval, tmp_path, doc, results, videos)
    assert ours.overall.idf1 < 0.9  # the perturbations matter
    for key, scores in [*ours.per_video.items(), ("overall", ours.overall)]:
        ref = theirs[key]
        assert scores.idf1 == pytest.approx(ref["IDF1"], abs=1e-6)
        assert scores.assa == pytest.approx(float(np.mean(ref["AssA"])), abs=1e-6)
        assert scores.deta == pytest.approx(float(np.mean(ref["DetA"])), abs=1e-6)
        assert scores.hota == pytest.approx(float(np.mean(ref["HOTA"])), abs=1e-6)
        np.testing.assert_allclose(scores.assa_alpha, ref["AssA"], atol=1e-9)
    assert len(HOTA_ALPHAS) == len(theirs["overall"]["AssA"])


def _trackeval(trackeval: Any, root: Path, doc: dict, results: list, videos: list) -> dict:
    """TrackEval's scores via its own YouTube-VIS reader (one class: our matching is
    class-agnostic); per video id and ``"overall"``, merged HOTA and Identity fields."""
    gt = copy.deepcopy(doc)
    for ann, masks in zip(gt["annotations"], _all_masks(videos), strict=True):
        ann["segmentations"] = [_uncompressed(s, m) for s, m in zip(ann["segmentations"], masks,
                                                                      strict=True)]  # fmt: skip
    (root / "gt" / "youtube_vis_x").mkdir(parents=True)
    (root / "gt" / "youtube_vis_x" / "gt.json").write_text(json.dumps(gt))
    (root / "tr" / "youtube_vis_x" / "ours" / "data").mkdir(parents=True)
    (root / "tr" / "youtube_vis_x" / "ours" / "data" / "r.json").write_text(json.dumps(results))
    config = {"GT_FOLDER": f"{root}/gt/", "TRACKERS_FOLDER": f"{root}/tr/",
              "SPLIT_TO_EVAL": "x", "PRINT_CONFIG": False}  # fmt: skip
    dataset = trackeval.datasets.YouTubeVIS(config)
    hota = trackeval.metrics.HOTA()
    identity = trackeval.metrics.Identity({"PRINT_CONFIG": False})
    per_h, per_i, out = {}, {}, {}
    for seq in dataset.seq_list:
        data = dataset.get_preprocessed_seq_data(dataset.get_raw_seq_data("ours", seq), "o")
        per_h[seq], per_i[seq] = hota.eval_sequence(data), identity.eval_sequence(data)
        out[dataset.seq_name_to_seq_id[seq]] = {**per_h[seq], **per_i[seq]}
    out["overall"] = {**hota.combine_sequences(per_h), **identity.combine_sequences(per_i)}
    return out


def _all_masks(videos: list) -> list[list]:
    return [t["masks"] for v in videos for t in v.tracks]


def test_files_and_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gt.json").write_text(json.dumps(_gt_doc([[A, B]])))
    results = [_result(1, A, track_id=1), _result(1, B, 0.2, track_id=2)]
    (tmp_path / "r.json").write_text(json.dumps(results))
    res = evaluate_association_files(tmp_path / "gt.json", tmp_path / "r.json", min_score=0.5)
    assert res.overall.idf1 == pytest.approx(4 / 6)
    assert main([str(tmp_path / "gt.json"), str(tmp_path / "r.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["video", "IDF1", "IDP", "IDR", "AssA", "DetA", "HOTA"]
    assert lines[1].split()[:2] == ["v1", "100.00"]
    assert lines[-1].split()[0] == "overall"
