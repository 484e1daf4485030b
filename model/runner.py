"""Whole-video tracking from a frame iterator, and the overlay video of its result.

``track_frames`` streams frames (e.g. a ``video_io.FrameSource``) through the network in clips,
so a long video is never held in memory; ``write_overlay`` decodes the input a second time to
draw the final tracks. ``ctvis track`` and the service's video jobs both call these, so their
results JSON is identical for the same input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import rle
from model.config import ModelConfig, PreprocessConfig, TrackerConfig
from model.pipeline import ProgressFn, VideoResult, track_video
from model.postprocess import MaskSizes
from model.preprocess import prepare_frames
from model.structures import FrameOutputs
from model.video_io import OverlayItem, OverlayWriter


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
    sizes = MaskSizes(first.image_sizes[0], first.padded_size, first.original_sizes[0])

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
            chunks(), sizes, model_cfg, tracker_cfg, video_id, num_frames, progress=progress
        )


def write_overlay(
    frames: Iterable[np.ndarray],
    result: VideoResult,
    model_cfg: ModelConfig,
    path: str | Path,
    fps: float,
) -> int:
    """Render every output track (best class, score) over the frames into an MP4.

    Args:
        frames: the same frames ``track_frames`` saw, decoded again.
        result: its ``VideoResult``.
        model_cfg: class names.
        path: output ``.mp4``.
        fps: output frame rate.

    Returns:
        Number of frames written.
    """
    labels = []
    for entry in result.entries:
        probs = entry.logits.softmax(-1)[: model_cfg.num_classes]
        score, label = probs.max(0)
        labels.append((model_cfg.class_name(int(label)), float(score)))
    writer: OverlayWriter | None = None
    try:
        for t, frame in enumerate(frames):
            if writer is None:
                writer = OverlayWriter(path, fps, (frame.shape[1], frame.shape[0]))
            items = []
            for entry, (name, score) in zip(result.entries, labels, strict=True):
                r = entry.rles[t] if t < len(entry.rles) else None
                if r is not None and rle.area(r) > 0:
                    items.append(OverlayItem(entry.track_id, rle.decode(r), name, score))
            writer.write(frame, items)
        return writer.frames_written if writer is not None else 0
    finally:
        if writer is not None:
            writer.close()
