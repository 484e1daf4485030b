"""End-to-end parity of tracker + post-processing with the official run (``video_result.*``).

The network outputs come from ``per_frame_outputs.pt`` (the exact tensors the official
``SimpleTracker`` received), so this checks everything after the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model import rle
from model.config import ModelConfig, PreprocessConfig, TrackerConfig
from model.pipeline import VideoResult, track_video
from model.postprocess import MaskSizes
from model.structures import FrameOutputs
from model.tracker import codec
from model.tracker.select import select_candidates
from model.tracker.state import init_state
from model.tracker.step import track_step
from model.video.runner import track_frames

CLIP = 5


@pytest.fixture(scope="module")
def per_frame(fixtures_dir: Path) -> dict[str, Any]:
    return torch.load(fixtures_dir / "per_frame_outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference(fixtures_dir: Path) -> dict[str, Any]:
    return torch.load(fixtures_dir / "video_result.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference_json(fixtures_dir: Path) -> list[dict[str, Any]]:
    return json.loads((fixtures_dir / "video_result.json").read_text())


def _sizes(per_frame: dict[str, Any]) -> MaskSizes:
    return MaskSizes(
        image_size=tuple(per_frame["image_size_resized"]),
        padded_size=tuple(per_frame["padded_size"]),
        original_size=tuple(per_frame["original_size"]),
    )


def _chunks(per_frame: dict[str, Any]) -> list[FrameOutputs]:
    t = per_frame["pred_logits"].shape[0]
    return [
        FrameOutputs(
            pred_logits=per_frame["pred_logits"][s : s + CLIP],
            pred_masks=per_frame["pred_masks"][s : s + CLIP],
            pred_embeds=per_frame["pred_embeds"][s : s + CLIP],
        )
        for s in range(0, t, CLIP)
    ]


@pytest.fixture(scope="module")
def result(per_frame: dict[str, Any]) -> VideoResult:
    model_cfg = ModelConfig(num_classes=per_frame["pred_logits"].shape[-1] - 1)
    return track_video(
        _chunks(per_frame),
        _sizes(per_frame),
        model_cfg,
        TrackerConfig(),
        video_id=1,
        keep_mask_logits=True,
    )


def test_tracker_trace(result: VideoResult, reference: dict[str, Any]) -> None:
    for ours, ref in zip(result.trace, reference["tracker_trace"], strict=True):
        assert ours.frame_index == ref["frame_id"]
        assert ours.candidate_query_indices.tolist() == ref["candidate_query_indices"].tolist()
        torch.testing.assert_close(
            ours.candidate_scores, ref["candidate_scores"], atol=1e-6, rtol=1e-6
        )
        assert ours.assigned_ids.tolist() == ref["assigned_ids"].tolist()
        assert ours.assigned_query_indices.tolist() == ref["assigned_query_indices"].tolist()


def test_tracker_output(result: VideoResult, reference: dict[str, Any]) -> None:
    ref = reference["tracker_output"]
    logits = torch.stack([e.logits for e in result.entries])
    masks = torch.stack([e.mask_logits for e in result.entries])
    torch.testing.assert_close(logits, ref["pred_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masks, ref["pred_masks"], atol=1e-6, rtol=1e-6)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_results_json(result: VideoResult, reference_json: list[dict[str, Any]]) -> None:
    assert len(result.results) == len(reference_json)
    for ours, ref in zip(result.results, reference_json, strict=True):
        assert ours["video_id"] == ref["video_id"]
        assert ours["category_id"] == ref["category_id"]
        assert ours["score"] == pytest.approx(ref["score"], abs=1e-4)
        assert len(ours["segmentations"]) == len(ref["segmentations"])
        for seg, ref_seg in zip(ours["segmentations"], ref["segmentations"], strict=True):
            assert seg["size"] == ref_seg["size"]
            assert isinstance(seg["counts"], str)
            assert _iou(rle.decode(seg), rle.decode(ref_seg)) >= 0.999
    json.dumps(result.results)  # serialisable as the evaluator writes it


def test_results_masks_match_reference_tensor(
    result: VideoResult, reference: dict[str, Any]
) -> None:
    ref_masks = reference["masks"][reference["entry_mask_row"]]
    ours = np.stack([[rle.decode(s) for s in r["segmentations"]] for r in result.results])
    differ = (ours != ref_masks.numpy()).mean()
    assert differ <= 1e-4
    scores = torch.tensor([r["score"] for r in result.results], dtype=torch.float64)
    torch.testing.assert_close(scores, reference["pred_scores"], atol=1e-4, rtol=0)


def test_codec_round_trip_each_frame_keeps_ids(
    per_frame: dict[str, Any], reference: dict[str, Any]
) -> None:
    """The compact (float16 cache) codec, applied every frame, does not change any id."""
    cfg = TrackerConfig()
    logits, masks, embeds = (per_frame[k] for k in ("pred_logits", "pred_masks", "pred_embeds"))
    state = init_state(embeds.shape[-1], logits.shape[-1] - 1, cfg.cache_size)
    for f, ref in enumerate(reference["tracker_trace"]):
        det = select_candidates(logits[f], masks[f], embeds[f], cfg)
        state, assignment = track_step(state, det, cfg)
        state = codec.loads(codec.dumps(state, model_id="m"), expected_model_id="m")
        kept = assignment.kept
        assert assignment.track_ids[kept].tolist() == ref["assigned_ids"].tolist()


def test_track_frames_chunks_frames_and_matches_reference(
    fixtures_dir: Path, per_frame: dict[str, Any], reference_json: list[dict[str, Any]]
) -> None:
    """``track_frames`` with a stand-in network that replays the official outputs."""
    frames = np.load(fixtures_dir / "frames.npy")
    pre_cfg = PreprocessConfig(min_size=per_frame["min_size_test"], clip_frames=CLIP)
    calls: list[tuple[int, ...]] = []

    def forward(pixels: torch.Tensor) -> FrameOutputs:
        start = sum(c[0] for c in calls)
        calls.append(tuple(pixels.shape))
        return _chunks(per_frame)[start // CLIP]

    progress: list[tuple[int, int | None]] = []
    out = track_frames(
        iter(frames),
        forward,
        ModelConfig(num_classes=40),
        pre_cfg,
        TrackerConfig(),
        video_id=1,
        num_frames=len(frames),
        progress=lambda done, total: progress.append((done, total)),
    )
    assert calls == [(5, 3, 128, 160), (3, 3, 128, 160)]
    assert progress[-1] == (8, 8) and len(progress) == 8
    assert [r["category_id"] for r in out.results] == [r["category_id"] for r in reference_json]
    assert [r["segmentations"] for r in out.results] == [r["segmentations"] for r in reference_json]
