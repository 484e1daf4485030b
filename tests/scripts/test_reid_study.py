"""The re-id study: cached scoring equals ``ctvis track``, paired clips, intervals, the script."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import LoadedCheckpoint, load_checkpoint
from tests.scripts import load_script
from training.assoc_metrics import association_metrics, combine_scores, results_by_track
from training.data.reid_synth import write_reid_dataset
from training.dataset_eval import track_dataset
from training.reid_study.cache import VideoCache, cache_videos
from training.reid_study.clips import sample_clip, sample_step
from training.reid_study.evaluate import score_head
from training.reid_study.heads import HeadTraining, new_head, train_head
from training.reid_study.stats import overall, t_interval, two_way_bootstrap, video_counts
from training.ytvis_json import load_ground_truth

STUDY = Path(__file__).resolve().parents[2] / "results" / "reid_study"
SEED = 5  # a reid-preset seed no study set uses


@pytest.fixture(scope="module")
def frozen() -> LoadedCheckpoint:
    """The study's frozen segmenter, with the box cue off as in the study."""
    ckpt = load_checkpoint(STUDY / "segmenter")
    return dataclasses.replace(
        ckpt, tracker_cfg=dataclasses.replace(ckpt.tracker_cfg, box_iou_weight=0)
    )


@pytest.fixture(scope="module")
def caches(frozen: LoadedCheckpoint) -> list[VideoCache]:
    return cache_videos(frozen.segmenter, frozen.preprocess_cfg, frozen.tracker_cfg, SEED, 2)


def test_cached_scores_equal_the_track_path(
    tmp_path: Path, frozen: LoadedCheckpoint, caches: list[VideoCache]
) -> None:
    gt_path = write_reid_dataset(tmp_path / "reid", SEED, 2)
    gt = load_ground_truth(gt_path)
    run = track_dataset(gt, tmp_path / "reid" / "frames", frozen.segmenter, frozen.model_cfg,
                        frozen.preprocess_cfg, frozen.tracker_cfg)  # fmt: skip
    full = association_metrics(gt, results_by_track(run.results, gt))
    head = frozen.segmenter.sem_seg_head.predictor.reid_embed
    ours = score_head(head, caches, frozen.model_cfg, frozen.tracker_cfg)
    for want, got in zip(full.per_video.values(), ours, strict=True):
        assert got.idtp == want.idtp and got.idfp == want.idfp and got.idfn == want.idfn
        assert got.assa == pytest.approx(want.assa, abs=1e-12)
        assert got.hota == pytest.approx(want.hota, abs=1e-12)
    assert combine_scores(ours).idf1 == pytest.approx(full.overall.idf1, abs=1e-12)
    # the per-video counts give the same overall numbers
    idf1, assa = overall(
        np.asarray(video_counts(head, caches, frozen.model_cfg, frozen.tracker_cfg))
    )
    assert float(idf1) == pytest.approx(full.overall.idf1, abs=1e-12)
    assert float(assa) == pytest.approx(full.overall.assa, abs=1e-12)
    # another head gives other identities: the embeddings reach the tracker
    other = score_head(new_head(32, 3, 0), caches, frozen.model_cfg, frozen.tracker_cfg)
    assert [s.idtp for s in other] != [s.idtp for s in ours]


def test_clips_span_the_event_and_are_paired() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        clip = sample_clip(rng, 32, (12, 20), (8, 10))
        assert 8 <= len(clip) <= 10 and np.all(np.diff(clip) > 0)
        assert 11 in clip and 20 in clip and clip.min() >= 0 and clip.max() < 32
    # a gap longer than the clip: the clip keeps both ends of it
    clip = sample_clip(np.random.default_rng(1), 32, (3, 25), (8, 8))
    assert 2 in clip and 25 in clip and len(clip) == 8


def test_one_seed_gives_every_recipe_the_same_start(caches: list[VideoCache]) -> None:
    a = sample_step(np.random.default_rng(3), caches, 4)
    b = sample_step(np.random.default_rng(3), caches, 4)
    assert all(va == vb and np.array_equal(fa, fb) for (va, fa), (vb, fb) in zip(a, b, strict=True))
    first = {}
    settings = HeadTraining(steps=1, clips=2)
    for recipe in ("single_ref", "paper"):
        seen: list[torch.Tensor] = []
        head = new_head(32, 3, 4)
        seen.append(head.layers[0].weight.detach().clone())
        trained = train_head(caches, recipe, 4, settings)
        first[recipe] = (seen[0], trained.layers[0].weight.detach().clone())
    assert torch.equal(first["single_ref"][0], first["paper"][0])  # same initial head
    assert not torch.equal(first["single_ref"][0], first["single_ref"][1])  # it trained


def test_intervals() -> None:
    mean, lo, hi = t_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and hi - mean == pytest.approx(3.182446 * np.std([1, 2, 3, 4], ddof=1) / 2)
    assert lo == pytest.approx(2 * mean - hi)
    # identical variants: a paired difference of exactly zero
    counts = np.random.default_rng(0).integers(1, 50, size=(3, 20, 41)).astype(float)
    boot, diffs = two_way_bootstrap({"a": counts, "b": counts.copy()}, [("a", "b")], 200)
    assert diffs[("a", "b")] == (0.0, 0.0)
    lo_i, hi_i = boot["a"]["idf1"]
    assert lo_i < float(overall(counts)[0].mean()) < hi_i


def test_script_writes_the_study_json(tmp_path: Path) -> None:
    script = load_script("reid_study")
    out = tmp_path / "reid.json"
    argv = ["--eval-seed", str(SEED), "--videos", "3", "--out", str(out), "--jobs", "1"]
    assert script.main([*argv, "--replicates", "200"]) == 0
    data = json.loads(out.read_text())
    assert data["baseline"] in data["variants"] and data["ctvis"] in data["variants"]
    assert set(data["variants"]) >= {"single_ref", "multi_ref", "memory_bank",
                                     "memory_bank_ma", "paper", "official"}  # fmt: skip
    for name, v in data["variants"].items():
        for key in ("idf1", "assa"):
            lo, hi = v[f"{key}_ci"]
            assert 0.0 <= lo <= v[key] <= hi <= 1.0
        assert v["seeds"] >= 10 or name == "segmenter_head"
    lo, hi = data["paired_idf1_diff_ci"]
    assert -1.0 <= lo <= data["paired_idf1_diff"] <= hi <= 1.0
    ctvis = data["variants"][data["ctvis"]]["idf1"]
    base = data["variants"][data["baseline"]]["idf1"]
    assert data["paired_idf1_diff"] == pytest.approx(ctvis - base, abs=1e-12)
