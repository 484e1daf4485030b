"""Whole-video tracking from a frame iterator, clip by clip.

``track_frames`` streams frames (e.g. a ``model.video.reader.FrameSource``) through the network
in clips, so a long video is never held in memory, and can checkpoint and resume mid-video
(``model.video.progress``). ``ctvis track`` and the service's video jobs both call it, so their
results JSON is identical for the same input.

The **results** keep what the official output keeps: the top ``num_classes`` (track, class)
pairs by class probability, rescored by mask quality. A track may appear under several
classes, and in a video with more output tracks than the model has classes some tracks are in
no entry at all. Every entry names its ``track_id``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch

from model.config import ModelConfig, PreprocessConfig, TrackerConfig
from model.pipeline import ProgressFn, VideoResult, track_video
from model.postprocess import MaskSizes, VideoAccumulator
from model.preprocess import prepare_frames
from model.structures import FrameOutputs
from model.tracker.state import TrackState
from model.video.progress import dump_progress, load_progress


class Cancelled(RuntimeError):
    """``should_stop`` asked the run to stop."""


def track_frames(
    frames: Iterable[np.ndarray],
    forward_fn: Callable[[torch.Tensor], FrameOutputs],
    model_cfg: ModelConfig,
    preprocess_cfg: PreprocessConfig,
    tracker_cfg: TrackerConfig,
    video_id: Any = 1,
    num_frames: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bytes | None = None,
    checkpoint: Callable[[int, bytes], None] | None = None,
    checkpoint_every_clips: int = 1,
) -> VideoResult:
    """Segment and track frames from an iterator, clip by clip.

    Args:
        frames: uint8 HxWx3 RGB frames, all the same size.
        forward_fn: pixels Bx3xHpxWp -> ``FrameOutputs`` (a segmenter or an inference backend).
        model_cfg: classes and category ids.
        preprocess_cfg: resize, normalisation and clip length.
        tracker_cfg: tracker settings.
        video_id: written into every results entry.
        num_frames: total, when known (for ``progress`` only).
        progress: ``progress(done, total)`` after every frame.
        should_stop: polled before every clip; True raises ``Cancelled``.
        resume: a ``dump_progress`` payload saved by an earlier run over the same frames:
            its frames are skipped (decoded, not run) and tracking continues from there.
        checkpoint: called as ``checkpoint(frames_done, payload)`` every
            ``checkpoint_every_clips`` clips. Checkpoints fall on clip boundaries, so a resumed
            run forms the same clips and gives exactly the uninterrupted result.
        checkpoint_every_clips: clips between checkpoints.

    Returns:
        The ``VideoResult`` (results entries in the official order).

    Raises:
        ValueError: no frames, or frames of different sizes.
    """
    it: Iterator[np.ndarray] = iter(frames)
    clip = max(1, preprocess_cfg.clip_frames)
    first_clip = list(islice(it, clip))
    if not first_clip:
        raise ValueError("the video has no frames")
    shape = first_clip[0].shape
    first = prepare_frames(first_clip[:1], preprocess_cfg)
    sizes = MaskSizes.of(first)
    restored = None
    if resume is not None:
        restored = load_progress(resume, tracker_cfg, sizes)
        done = restored[1].num_frames
        if done % clip:
            raise ValueError(f"checkpoint at frame {done} is not on a clip boundary")
        skipped = first_clip + list(islice(it, max(done - len(first_clip), 0)))
        first_clip = skipped[done:] + list(islice(it, clip - len(skipped[done:])))

    def on_frame(state: TrackState, accumulator: VideoAccumulator) -> None:
        done = accumulator.num_frames
        if checkpoint is not None and done % (clip * max(checkpoint_every_clips, 1)) == 0:
            checkpoint(done, dump_progress(state, accumulator))

    def chunks() -> Iterator[FrameOutputs]:
        batch_frames = first_clip
        while batch_frames:
            if should_stop is not None and should_stop():
                raise Cancelled("stopped on request")
            for f in batch_frames:
                if f.shape != shape:
                    raise ValueError(f"frame size changed from {shape} to {f.shape}")
            batch = prepare_frames(batch_frames, preprocess_cfg)
            with torch.inference_mode():
                yield forward_fn(batch.pixels)
            batch_frames = list(islice(it, clip))

    with torch.inference_mode():
        return track_video(
            chunks(), sizes, model_cfg, tracker_cfg, video_id, num_frames, progress=progress,
            resume=restored, on_frame=on_frame,
        )  # fmt: skip
