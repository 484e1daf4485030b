"""Streaming and offline post-processing (official ``CTVISModel.inference_video``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from model import rle
from model.config import ModelConfig, TrackerConfig
from model.postprocess import (
    MaskSizes,
    TrackEntry,
    VideoAccumulator,
    to_instances,
    upsample_mask_logits,
    video_results,
)
from model.structures import FrameBatch
from model.tracker import memory
from model.tracker.select import select_candidates
from model.tracker.state import init_state
from model.tracker.step import track_step

SIZES = MaskSizes(image_size=(40, 60), padded_size=(48, 64), original_size=(30, 45))


@pytest.fixture(scope="module")
def noise_case(fixtures_dir: Path) -> dict[str, Any]:
    cases = torch.load(fixtures_dir / "tracker_cases.pt", weights_only=True)["cases"]
    return next(c for c in cases if c["name"] == "noise_tracklet_removal")


def test_mask_sizes_of_a_frame_batch() -> None:
    batch = FrameBatch(torch.zeros(2, 3, 48, 64), ((40, 60), (36, 60)), ((30, 45), (27, 45)))
    assert MaskSizes.of(batch) == SIZES
    assert MaskSizes.of(batch, 1) == MaskSizes((36, 60), (48, 64), (27, 45))


def test_upsample_sizes_and_crop() -> None:
    logits = torch.zeros(2, 12, 16)
    logits[0, :10, :15] = 4.0  # inside the resized region -> everything on
    out = upsample_mask_logits(logits, SIZES)
    assert out.shape == (2, 30, 45)
    assert bool((out[0] > 0).all()) and not bool((out[1] > 0).any())
    same = MaskSizes(image_size=(40, 60), padded_size=(48, 64), original_size=(40, 60))
    logits = torch.randn(2, 12, 16)
    padded = F.interpolate(logits[None], size=(48, 64), mode="bilinear", align_corners=False)
    expected = F.interpolate(
        padded[:, :, :40, :60], size=(40, 60), mode="bilinear", align_corners=False
    )[0]
    assert torch.equal(upsample_mask_logits(logits, same), expected)


@pytest.mark.parametrize("temporal", ["mean", "max"])
def test_streaming_entries_follow_offline_video_dict(
    noise_case: dict[str, Any], temporal: str
) -> None:
    cfg = dataclasses.replace(TrackerConfig(), temporal_score_type=temporal)
    inputs = noise_case["inputs"]
    num_frames, _, num_logits = inputs["pred_logits"].shape
    state = init_state(inputs["pred_embeds"].shape[-1], num_logits - 1)
    sizes = MaskSizes(image_size=(12, 16), padded_size=(12, 16), original_size=(24, 32))
    acc = VideoAccumulator(cfg, sizes)
    for f in range(num_frames):
        det = select_candidates(
            inputs["pred_logits"][f], inputs["pred_masks"][f], inputs["pred_embeds"][f], cfg
        )
        state, assignment = track_step(state, det, cfg)
        acc.add_frame(det, assignment)
        instances = to_instances(det, assignment, state, sizes, temporal)
        assert [i.track_id for i in instances] == assignment.track_ids[assignment.kept].tolist()
        offline = {e.track_id: e for e in acc.finalize()}
        streaming = memory.entry_logits(state, temporal)
        for slot, track_id in enumerate(state.track_ids.tolist()):
            if int(state.entry_hits[slot]) == 0:
                assert track_id not in offline
            else:
                torch.testing.assert_close(streaming[slot], offline[track_id].logits)
                assert int(state.entry_hits[slot]) == sum(offline[track_id].present)
        for inst in instances:
            probs = offline[inst.track_id].logits.softmax(-1)[:-1]
            assert inst.label == int(probs.argmax()) and inst.category_id == inst.label + 1
            assert inst.score == pytest.approx(float(probs.max()), abs=1e-6)
            assert inst.rle["size"] == [24, 32]
            assert inst.area == rle.area(inst.rle)
            assert inst.bbox == rle.bbox(inst.rle)
    # S2 lost its first entry and was re-created at the end of the output order.
    present = [e.present for e in acc.finalize()]
    assert present == noise_case["output_track_frames_present"]


def _entry(track_id: int, logits: list[float], sig: float, area: float) -> TrackEntry:
    return TrackEntry(
        track_id=track_id,
        logits=torch.tensor(logits),
        present=[True, False],
        rles=[rle.encode(torch.ones(3, 4, dtype=torch.bool)), None],
        sigmoid_sum=sig,
        mask_sum=area,
    )


def test_video_results_topk_rescoring_and_category_ids() -> None:
    model_cfg = ModelConfig(num_classes=3, category_ids=(7, 8, 9))
    entries = [_entry(4, [2.0, 0.0, 0.0, 0.0], 9.0, 12.0), _entry(6, [0.0, 3.0, 0.0, 0.0], 0, 0)]
    out = video_results(entries, 2, (3, 4), model_cfg, video_id="v")
    assert len(out) == 3  # k = num_classes
    probs = torch.tensor([[2.0, 0, 0, 0], [0, 3.0, 0, 0]]).softmax(-1)[:, :3].flatten()
    top = probs.topk(3)
    assert [r["category_id"] for r in out] == [[7, 8, 9][i % 3] for i in top.indices.tolist()]
    for r, s, i in zip(out, top.values.tolist(), top.indices.tolist(), strict=True):
        quality = 0.75 if i // 3 == 0 else 0.0
        assert r["score"] == pytest.approx(s * quality, abs=1e-6)
        assert r["video_id"] == "v" and len(r["segmentations"]) == 2
        assert r["segmentations"][1] == rle.empty(3, 4)
    assert video_results([], 2, (3, 4), model_cfg, video_id=1) == []


def test_video_results_name_their_track_and_class() -> None:
    """Every entry gives its track's ``track_id``; ``category_name`` only when classes are named."""
    entries = [_entry(4, [2.0, 0.0, 0.0, 0.0], 9.0, 12.0), _entry(6, [0.0, 3.0, 0.0, 0.0], 6, 12)]
    named = ModelConfig(num_classes=3, class_names=("a", "b", "c"), category_ids=(7, 8, 9))
    out = video_results(entries, 2, (3, 4), named, video_id=1)
    by_track = {4: entries[0], 6: entries[1]}
    assert {r["track_id"] for r in out} <= set(by_track)
    for r in out:
        assert r["category_name"] == "abc"[r["category_id"] - 7]
        track = by_track[r["track_id"]]
        assert r["segmentations"][0] == track.rles[0]  # the entry the result came from
        quality = track.sigmoid_sum / (track.mask_sum + 1e-6)
        probs = track.logits.softmax(-1)[r["category_id"] - 7]
        assert r["score"] == pytest.approx(float(probs) * quality, abs=1e-6)
    # The best pair of each track is in the top k: both tracks are in the results.
    assert {r["track_id"] for r in out} == {4, 6}
    unnamed = video_results(entries, 2, (3, 4), ModelConfig(num_classes=3), video_id=1)
    assert all("category_name" not in r and "track_id" in r for r in unnamed)
    assert list(unnamed[0]) == ["video_id", "score", "category_id", "track_id", "segmentations"]
