"""Track every video of a YouTube-VIS dataset and score the results: the one dataset loop.

``ctvis track --dataset`` (with or without ``--evaluate``), the training loop's periodic
validation (``training.loop_eval``) and ``scripts/tune_tracker.py`` all run a dataset through
:func:`track_dataset`, so a checkpoint scores the same wherever it is evaluated. Each video's
``file_names`` (relative to a frames root) go through ``model.video.runner.track_frames``, the
path the service runs a video on; the results of all videos are pooled and, when the dataset
is ground truth (``training.ytvis_json.load_ground_truth``), scored by
``training.ytvis_eval.evaluate``. A split without annotations (read with
``training.ytvis_json.load_videos``) is only tracked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.config import ModelConfig, PreprocessConfig, TrackerConfig
from model.pipeline import ProgressFn
from model.structures import FrameOutputs
from model.video.reader import FrameSource
from model.video.runner import track_frames
from training.label_space import LabelSpaceMismatch, label_space_mismatch
from training.ytvis_eval import EvalResult, evaluate
from training.ytvis_json import GroundTruth, Video, parse_results

__all__ = [
    "DatasetRun",
    "DatasetScore",
    "DatasetVideoError",
    "VideoHook",
    "score_results",
    "track_dataset",
]

ForwardFn = Callable[[torch.Tensor], FrameOutputs]
"""Pixels Bx3xHpxWp -> ``FrameOutputs``: a segmenter or an inference backend."""

VideoHook = Callable[[Video, int, int], AbstractContextManager[ProgressFn | None]]
"""``hook(video, index, total)`` (``index`` counts from 1) opens a context around the tracking
of one video; the value it yields, if not None, is passed to ``track_frames`` as its
``progress(frames_done, num_frames)`` callback (``ctvis track`` draws a bar per video)."""

ResultsHook = Callable[[list[dict[str, Any]]], None]
"""Called with the pooled results before they are scored (``ctvis track`` writes its file
there, so that results whose scoring fails are still kept)."""


class DatasetVideoError(ValueError):
    """A video could not be tracked (no frames, or frames of changing size); the message
    starts with the folder of its frames."""


@dataclass(frozen=True)
class DatasetScore:
    """Results scored against ground truth.

    Attributes:
        evaluation: AP/AR (fractions) and identity switches.
        mismatch: how the results' categories differ from the ground truth's (results of a
            model trained on other classes score near 0 without any error), None when they
            agree; no number depends on it.
    """

    evaluation: EvalResult
    mismatch: LabelSpaceMismatch | None


@dataclass(frozen=True)
class DatasetRun:
    """What :func:`track_dataset` produced.

    Attributes:
        results: YouTube-VIS results entries of the tracked videos, in the file's video order.
        score: their scores, None when the dataset was given as videos only.
    """

    results: list[dict[str, Any]]
    score: DatasetScore | None


def score_results(gt: GroundTruth, results: list[dict[str, Any]]) -> DatasetScore:
    """Parse in-memory results entries against ``gt`` and evaluate them.

    Raises:
        training.ytvis_json.YtvisFormatError: entries that do not fit ``gt`` (an unknown
            video, or masks of another size than the file declares for the video).
    """
    tracks = parse_results(results, gt)
    return DatasetScore(evaluate(gt, tracks), label_space_mismatch(gt, tracks))


def track_dataset(
    dataset: GroundTruth | Mapping[int, Video],
    frames_root: str | Path,
    forward_fn: ForwardFn,
    model_cfg: ModelConfig,
    pre_cfg: PreprocessConfig,
    trk_cfg: TrackerConfig,
    *,
    max_videos: int = 0,
    on_video: VideoHook | None = None,
    on_results: ResultsHook | None = None,
) -> DatasetRun:
    """Track every video of ``dataset`` with ``forward_fn`` and ``trk_cfg``; score if annotated.

    Args:
        dataset: ground truth (tracked, then scored), or videos by id (only tracked).
        frames_root: folder the videos' ``file_names`` are relative to.
        forward_fn: the network (its mode, e.g. ``eval()``, is the caller's business).
        model_cfg: classes and category ids written into the results.
        pre_cfg: test-time preprocessing and clip length.
        trk_cfg: tracker settings.
        max_videos: track only the N videos of lowest id (0 = all); only their ground truth
            is scored, so the videos left out do not count as misses.
        on_video: context opened around each video (see :data:`VideoHook`).
        on_results: called with the pooled results before scoring (see :data:`ResultsHook`).

    Raises:
        DatasetVideoError: a video without frames or with frames of changing size.
        model.video.reader.VideoReadError: a missing or undecodable frame file.
        training.ytvis_json.YtvisFormatError: results that do not fit the ground truth.
    """
    gt = dataset if isinstance(dataset, GroundTruth) else None
    videos = _selected(dataset.videos if isinstance(dataset, GroundTruth) else dataset, max_videos)
    results: list[dict[str, Any]] = []
    for index, video in enumerate(videos, start=1):
        hook = on_video(video, index, len(videos)) if on_video else nullcontext(None)
        with hook as progress:
            results += _track_video(video, Path(frames_root), forward_fn, model_cfg, pre_cfg,
                                    trk_cfg, progress)  # fmt: skip
    if on_results is not None:
        on_results(results)
    if gt is None:
        return DatasetRun(results, None)
    if max_videos > 0:
        gt = _restricted(gt, {video.id for video in videos})
    return DatasetRun(results, score_results(gt, results))


def _track_video(
    video: Video,
    frames_root: Path,
    forward_fn: ForwardFn,
    model_cfg: ModelConfig,
    pre_cfg: PreprocessConfig,
    trk_cfg: TrackerConfig,
    progress: ProgressFn | None,
) -> list[dict[str, Any]]:
    source = FrameSource([frames_root / name for name in video.file_names])
    try:
        out = track_frames(source, forward_fn, model_cfg, pre_cfg, trk_cfg, video_id=video.id,
                           num_frames=source.num_frames, progress=progress)  # fmt: skip
    except ValueError as exc:
        raise DatasetVideoError(f"{source.path}: {exc}") from exc
    return out.results


def _selected(videos: Mapping[int, Video], max_videos: int) -> list[Video]:
    """The videos to track, in file order: all, or the ``max_videos`` of lowest id."""
    if max_videos <= 0:
        return list(videos.values())
    kept = set(sorted(videos)[:max_videos])
    return [video for vid, video in videos.items() if vid in kept]


def _restricted(gt: GroundTruth, video_ids: set[int]) -> GroundTruth:
    """``gt`` with only the videos ``video_ids`` and their tracks."""
    return GroundTruth(
        videos={vid: video for vid, video in gt.videos.items() if vid in video_ids},
        categories=gt.categories,
        tracks=tuple(track for track in gt.tracks if track.video_id in video_ids),
    )
