"""Streaming video runner: checkpoints on clip boundaries resume to the exact same result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.build import PRESETS, build_segmenter
from model.runner import Cancelled, load_progress, track_frames
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
