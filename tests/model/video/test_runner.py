"""Streaming video runner: exact resume from checkpoints; results name tracks; overlay choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import rle
from model.config import ModelConfig
from model.nn.build import PRESETS, build_segmenter
from model.pipeline import VideoResult
from model.postprocess import TrackEntry, video_results
from model.tracker.state import init_state
from model.video.overlay import OVERLAY_MIN_SCORE, overlay_tracks
from model.video.progress import load_progress
from model.video.runner import Cancelled, track_frames
from training.data.synthetic import config_for, render_video


@pytest.fixture(scope="module")
def setup() -> tuple:
    model_cfg, pre_cfg, trk_cfg = PRESETS["tiny"]
    torch.manual_seed(0)
    seg = build_segmenter(model_cfg).eval()
    frames, _ = render_video(5, config_for("val", num_frames=12, height=64, width=80))
    return seg, model_cfg, pre_cfg, trk_cfg, frames


def test_resume_from_every_checkpoint_is_exact(setup: tuple) -> None:
    seg, model_cfg, pre_cfg, trk_cfg, frames = setup
    saved: list[tuple[int, bytes]] = []
    full = track_frames(
        frames, seg, model_cfg, pre_cfg, trk_cfg, checkpoint=lambda n, b: saved.append((n, b))
    )
    clip = pre_cfg.clip_frames
    assert [n for n, _ in saved] == list(range(clip, len(frames) + 1, clip))
    for done, payload in saved:
        resumed = track_frames(frames, seg, model_cfg, pre_cfg, trk_cfg, resume=payload)
        assert resumed.results == full.results, f"resume at frame {done} differs"
        assert len(resumed.trace) == len(frames) - done


def test_progress_payload_rejects_garbage(setup: tuple) -> None:
    _, _, _, trk_cfg, _ = setup
    with pytest.raises(ValueError):
        load_progress(b"not a checkpoint", trk_cfg, None)


def test_should_stop_cancels(setup: tuple) -> None:
    seg, model_cfg, pre_cfg, trk_cfg, frames = setup
    with pytest.raises(Cancelled):
        track_frames(frames, seg, model_cfg, pre_cfg, trk_cfg, should_stop=lambda: True)


def test_size_change_is_an_error(setup: tuple) -> None:
    seg, model_cfg, pre_cfg, trk_cfg, frames = setup
    mixed = list(frames[:6]) + [np.zeros((50, 50, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame size changed"):
        track_frames(mixed, seg, model_cfg, pre_cfg, trk_cfg)


def test_results_entries_carry_their_track_id(setup: tuple) -> None:
    seg, model_cfg, pre_cfg, trk_cfg, frames = setup
    result = track_frames(frames, seg, model_cfg, pre_cfg, trk_cfg)
    assert result.results, "the tiny model should give results on this video"
    entries = {e.track_id: e for e in result.entries}
    empty = rle.empty(*frames[0].shape[:2])
    for item in result.results:
        entry = entries[item["track_id"]]
        assert item["segmentations"] == [r if r is not None else empty for r in entry.rles]
        label = model_cfg.category_ids.index(item["category_id"])
        assert item["category_name"] == model_cfg.class_names[label]


def _crowded() -> tuple[VideoResult, ModelConfig]:
    """Three tracks, two classes: the top-2 (track, class) pairs leave track 30 out."""
    model_cfg = ModelConfig(num_classes=2, class_names=("cat", "dog"), category_ids=(1, 2))
    mask = rle.encode(torch.ones(3, 4, dtype=torch.bool))

    def entry(track_id: int, logits: list[float], quality: float) -> TrackEntry:
        return TrackEntry(track_id, torch.tensor(logits), [True], [mask], 12.0 * quality, 12.0)

    entries = [
        entry(10, [4.0, 0.0, 0.0], 0.9),  # cat, p ~ 0.96, score ~ 0.87
        entry(20, [0.0, 3.0, 0.0], 0.3),  # dog, p ~ 0.91, score ~ 0.27
        entry(30, [2.0, 0.0, 0.0], 0.9),  # cat, p ~ 0.79: below the top 2, in no entry
    ]
    results = video_results(entries, 1, (3, 4), model_cfg, video_id=1)
    state = init_state(embed_dim=4, num_classes=2)
    return VideoResult(results=results, entries=entries, trace=[], state=state), model_cfg


def test_overlay_draws_results_entries_at_or_above_the_score() -> None:
    result, model_cfg = _crowded()
    assert {r["track_id"] for r in result.results} == {10, 20}
    drawn = overlay_tracks(result, model_cfg, 0.0)
    assert [t[0] for t in drawn] == [10, 20]  # track 30 is in no results entry: not drawn
    for track_id, name, score, _ in drawn:
        best = max(
            (r for r in result.results if r["track_id"] == track_id), key=lambda r: r["score"]
        )
        assert (name, score) == (best["category_name"], best["score"])
    # The default is the shared constant: track 20 (score ~0.27) falls below it.
    assert OVERLAY_MIN_SCORE == 0.3
    assert [t[0] for t in overlay_tracks(result, model_cfg)] == [10]
    assert overlay_tracks(result, model_cfg, 1.0) == []


def test_overlay_ids_are_results_track_ids(setup: tuple) -> None:
    seg, model_cfg, pre_cfg, trk_cfg, frames = setup
    result = track_frames(frames, seg, model_cfg, pre_cfg, trk_cfg)
    scores = sorted({r["score"] for r in result.results})
    for min_score in (0.0, scores[len(scores) // 2], OVERLAY_MIN_SCORE):
        drawn = overlay_tracks(result, model_cfg, min_score)
        want = {r["track_id"] for r in result.results if r["score"] >= min_score}
        assert sorted(t[0] for t in drawn) == sorted(want)
