"""Whole-video tracking from a frame iterator, and the overlay video of its result.

``track_frames`` streams frames (e.g. a ``video_io.FrameSource``) through the network in clips,
so a long video is never held in memory; ``write_overlay`` decodes the input a second time to
draw the final tracks. ``ctvis track`` and the service's video jobs both call these, so their
results JSON is identical for the same input.

What the results and the overlay show:

* the **results** keep what the official output keeps: the top ``num_classes`` (track,
  class) pairs by class probability, rescored by mask quality. A track may appear under
  several classes, and in a video with more output tracks than the model has classes some
  tracks are in no entry at all. Every entry names its ``track_id``.
* the **overlay** is drawn from the results: each ``track_id`` whose best results entry
  scores at least the overlay score (``OVERLAY_MIN_SCORE`` unless the caller asks for
  another) is drawn once, with that entry's class and score. So every ``#id`` in an overlay
  is the ``track_id`` of a results entry, and a track absent from the results is never drawn.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from model import rle
from model.config import ModelConfig, PreprocessConfig, TrackerConfig
from model.pipeline import ProgressFn, VideoResult, track_video
from model.postprocess import MaskSizes, VideoAccumulator
from model.preprocess import prepare_frames
from model.structures import FrameOutputs
from model.tracker import codec
from model.tracker.state import TrackState
from model.video_io import OverlayItem, OverlayWriter


class Cancelled(RuntimeError):
    """``should_stop`` asked the run to stop."""


_PROGRESS_MAGIC = b"CTVP1"


def dump_progress(state: TrackState, accumulator: VideoAccumulator) -> bytes:
    """Serialise a mid-video checkpoint (tracker state + accumulated tracks); never pickle.

    Layout: ``b"CTVP1"``, 8-byte big-endian length of the state, the ``codec.dumps`` state
    (lossless), then safetensors bytes of the accumulator with its metadata as JSON.
    """
    meta, tensors = accumulator.snapshot()
    state_bytes = codec.dumps(state, compact=False)
    acc_bytes = st_save(tensors, metadata={"accumulator": json.dumps(meta)})
    return _PROGRESS_MAGIC + struct.pack(">Q", len(state_bytes)) + state_bytes + acc_bytes


def _split_progress(data: bytes) -> tuple[bytes, dict[str, Any], bytes]:
    if not data.startswith(_PROGRESS_MAGIC) or len(data) < 13:
        raise ValueError("not a ctvis video progress checkpoint")
    (size,) = struct.unpack(">Q", data[5:13])
    rest = data[13 + size :]
    try:
        (header_len,) = struct.unpack("<Q", rest[:8])
        header = json.loads(rest[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"]["accumulator"])
    except (struct.error, ValueError, KeyError) as exc:
        raise ValueError(f"corrupt video progress checkpoint: {exc}") from exc
    return data[13 : 13 + size], meta, rest


def progress_frames(data: bytes) -> int:
    """Frames covered by a ``dump_progress`` payload, read from its header only."""
    return int(_split_progress(data)[1]["num_frames"])


def load_progress(
    data: bytes, tracker_cfg: TrackerConfig, sizes: MaskSizes | None
) -> tuple[TrackState, VideoAccumulator]:
    """Inverse of ``dump_progress``; raises ``ValueError`` on a foreign or corrupt payload."""
    state_bytes, meta, rest = _split_progress(data)
    state = codec.loads(state_bytes)
    tensors = st_load(rest) if meta["entries"] else {}
    return state, VideoAccumulator.restore(tracker_cfg, sizes, meta, tensors)


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
    sizes = MaskSizes(first.image_sizes[0], first.padded_size, first.original_sizes[0])
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


OverlayTrack = tuple[int, str, float, list[Any]]
"""(track id, class name, score, per-frame RLE or None) of one track to draw."""

OVERLAY_MIN_SCORE = 0.3
"""Lowest results score a track needs to be drawn in an overlay video: the default of
``ctvis track --overlay-score`` and of ``POST /v1/videos?overlay_score=``. Lower-scoring
entries are mostly tracks repeated under unlikely classes (the official top-k fills its ``k``
slots with them) and weak detections; drawing them would bury the real tracks."""


def overlay_tracks(
    result: VideoResult, model_cfg: ModelConfig, min_score: float = OVERLAY_MIN_SCORE
) -> list[OverlayTrack]:
    """The tracks an overlay draws: results entries scoring at least ``min_score``.

    One item per ``track_id``, from its highest-scoring results entry (its class and score;
    for a track in the results that is its most probable class), in the tracker's output
    order (the order masks are drawn in). Tracks the results do not contain are not drawn,
    so every drawn id can be looked up in the results file.
    """
    best: dict[int, dict[str, Any]] = {}
    for item in result.results:
        track_id = int(item["track_id"])
        if item["score"] >= min_score and (
            track_id not in best or item["score"] > best[track_id]["score"]
        ):
            best[track_id] = item
    names = {
        model_cfg.category_id(k): model_cfg.class_name(k) for k in range(model_cfg.num_classes)
    }
    tracks: list[OverlayTrack] = []
    for entry in result.entries:
        chosen = best.get(entry.track_id)
        if chosen is not None:
            name = names.get(chosen["category_id"], f"category {chosen['category_id']}")
            tracks.append((entry.track_id, name, float(chosen["score"]), list(entry.rles)))
    return tracks


def write_overlay(
    path: str | Path, frames: Iterable[np.ndarray], tracks: list[OverlayTrack], fps: float
) -> int:
    """Draw ``tracks`` over the frames (decoded again) into an MP4; returns the frame count."""
    writer: OverlayWriter | None = None
    try:
        for t, frame in enumerate(frames):
            if writer is None:
                writer = OverlayWriter(path, fps, (frame.shape[1], frame.shape[0]))
            items = [
                OverlayItem(track_id, rle.decode(rles[t]), name, score)
                for track_id, name, score, rles in tracks
                if t < len(rles) and rles[t] is not None
            ]
            writer.write(frame, items)
        return 0 if writer is None else writer.frames_written
    finally:
        if writer is not None:
            writer.close()
