"""Parity with the 7 official ``SimpleTracker.inference`` cases in ``tracker_cases.pt``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from model.config import TrackerConfig
from model.postprocess import VideoAccumulator
from model.tracker import memory
from model.tracker.select import select_candidates
from model.tracker.state import init_state
from model.tracker.step import track_step

CASE_NAMES = [
    "appear_disappear_reid",
    "similar_embeddings_frame_weight",
    "similar_embeddings_no_frame_weight",
    "dead_tracklet_new_id",
    "noise_tracklet_removal",
    "nms_and_thresholds",
    "single_track_bisoftmax_steal",
]


@pytest.fixture(scope="module")
def cases(fixtures_dir: Path) -> dict[str, dict[str, Any]]:
    data = torch.load(fixtures_dir / "tracker_cases.pt", weights_only=True)
    return {c["name"]: c for c in data["cases"]}


def _run(case: dict[str, Any]) -> dict[str, Any]:
    cfg = dataclasses.replace(TrackerConfig(), **case["tracker_overrides"])
    inputs = case["inputs"]
    num_frames, _, num_logits = inputs["pred_logits"].shape
    state = init_state(inputs["pred_embeds"].shape[-1], num_logits - 1, cfg.cache_size)
    acc = VideoAccumulator(cfg, sizes=None, keep_mask_logits=True)
    per_frame, reads = [], {}
    for f in range(num_frames):
        det = select_candidates(
            inputs["pred_logits"][f], inputs["pred_masks"][f], inputs["pred_embeds"][f], cfg
        )
        if state.num_tracks:
            reads[f] = (
                state.track_ids,
                memory.read_embeddings(state, cfg.embed_type),
                state.exist_frames,
            )
        state, assignment = track_step(state, det, cfg)
        acc.add_frame(det, assignment)
        kept = assignment.kept
        per_frame.append((det, assignment.track_ids[kept], det.query_indices[kept]))
    return {"per_frame": per_frame, "reads": reads, "entries": acc.finalize()}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_per_frame_matches_official(cases: dict[str, dict[str, Any]], name: str) -> None:
    case = cases[name]
    ours = _run(case)
    for (det, ids, queries), ref in zip(ours["per_frame"], case["per_frame"], strict=True):
        f = ref["frame_id"]
        assert det.query_indices.tolist() == ref["candidate_query_indices"].tolist(), f
        torch.testing.assert_close(det.scores, ref["candidate_scores"], atol=1e-6, rtol=1e-6)
        assert ids.tolist() == ref["assigned_ids"].tolist(), f
        assert queries.tolist() == ref["assigned_query_indices"].tolist(), f


@pytest.mark.parametrize("name", CASE_NAMES)
def test_memory_bank_trace(cases: dict[str, dict[str, Any]], name: str) -> None:
    case = cases[name]
    reads = _run(case)["reads"]
    assert sorted(reads) == [t["frame_id"] for t in case["memory_bank_trace"]]
    for ref in case["memory_bank_trace"]:
        ids, embeds, exist = reads[ref["frame_id"]]
        assert ids.tolist() == ref["ids"].tolist()
        assert exist.tolist() == ref["exist_frames"].tolist()
        torch.testing.assert_close(embeds, ref["embeds"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_outputs_match_official(cases: dict[str, dict[str, Any]], name: str) -> None:
    case = cases[name]
    entries = _run(case)["entries"]
    assert [e.present for e in entries] == case["output_track_frames_present"]
    logits = torch.stack([e.logits for e in entries])
    masks = torch.stack([e.mask_logits for e in entries])
    torch.testing.assert_close(logits, case["outputs"]["pred_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masks, case["outputs"]["pred_masks"], atol=1e-6, rtol=1e-6)
