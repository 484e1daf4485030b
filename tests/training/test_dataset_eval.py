"""``training.dataset_eval.track_dataset``: the one dataset loop (CLI, training, tuning)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from model.checkpoint import LoadedCheckpoint, load_checkpoint
from model.demo import DEMO_CHECKPOINT
from training.data.synthetic import write_dataset
from training.dataset_eval import DatasetRun, DatasetVideoError, track_dataset
from training.ytvis_eval import evaluate, evaluate_files
from training.ytvis_json import (
    GroundTruth,
    Video,
    YtvisFormatError,
    load_ground_truth,
    load_videos,
    parse_results,
)

FRAMES = 3


@pytest.fixture(scope="module")
def ckpt() -> LoadedCheckpoint:
    return load_checkpoint(DEMO_CHECKPOINT, device="cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(ground truth, frames root): 2 synthetic val videos cut to their first frames."""
    root = tmp_path_factory.mktemp("synth")
    gt_path = write_dataset(root, "val", seed=5, num_videos=2)
    data = json.loads(gt_path.read_text())
    for video in data["videos"]:
        video["file_names"] = video["file_names"][:FRAMES]
        video["length"] = FRAMES
    for ann in data["annotations"]:
        for key in ("segmentations", "areas", "bboxes"):
            if key in ann:
                ann[key] = ann[key][:FRAMES]
    data["videos"].reverse()  # the file's order, not the ids', is the results' order
    gt_path.write_text(json.dumps(data))
    return gt_path, root / "frames"


def _run(ckpt: LoadedCheckpoint, data: Any, frames: Path, **kwargs: Any) -> Any:
    return track_dataset(data, frames, ckpt.segmenter, ckpt.model_cfg, ckpt.preprocess_cfg,
                         ckpt.tracker_cfg, **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def gt_run(
    ckpt: LoadedCheckpoint, dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[DatasetRun, Path, int]:
    """(the run over the ground truth, the results file ``on_results`` wrote, its calls)."""
    written = tmp_path_factory.mktemp("results") / "results.json"
    calls: list[int] = []

    def write(results: list[dict[str, Any]]) -> None:
        calls.append(len(results))
        written.write_text(json.dumps(results))

    run = _run(ckpt, load_ground_truth(dataset[0]), dataset[1], on_results=write)
    assert calls == [len(run.results)]  # called once, with everything
    return run, written, len(calls)


def test_scores_as_the_evaluator_scores_the_written_file(
    dataset: tuple[Path, Path], gt_run: tuple[DatasetRun, Path, int]
) -> None:
    gt_path, _ = dataset
    gt = load_ground_truth(gt_path)
    run, written, _ = gt_run
    assert run.score is not None and run.score.mismatch is None
    assert [r["video_id"] for r in run.results] == sorted(
        (r["video_id"] for r in run.results), key=list(gt.videos).index
    )
    from_file = evaluate_files(gt_path, written)
    assert run.score.evaluation.metrics == from_file.metrics
    assert run.score.evaluation.id_switches == from_file.id_switches
    assert run.score.evaluation.metrics["AP"] > 0.1  # the demo model finds the shapes


def test_videos_only_are_tracked_not_scored(
    ckpt: LoadedCheckpoint,
    dataset: tuple[Path, Path],
    gt_run: tuple[DatasetRun, Path, int],
    tmp_path: Path,
) -> None:
    """A split without annotations (a test split) is read as videos and only tracked."""
    gt_path, frames = dataset
    data = json.loads(gt_path.read_text())
    test_split = tmp_path / "test.json"
    test_split.write_text(json.dumps({"videos": data["videos"], "annotations": None}))
    with pytest.raises(YtvisFormatError):
        load_ground_truth(test_split)
    videos = load_videos(test_split)
    assert list(videos) == [v["id"] for v in data["videos"]]
    calls: list[tuple[int, int, int]] = []
    done: list[int] = []

    @contextmanager
    def hook(video: Video, index: int, total: int) -> Iterator[Any]:
        calls.append((video.id, index, total))
        yield lambda frames_done, _total: done.append(frames_done)
        assert done[-1] == video.length

    run = _run(ckpt, videos, frames, on_video=hook)
    assert run.score is None
    assert calls == [(vid, i, 2) for i, vid in enumerate(videos, start=1)]
    assert {r["video_id"] for r in run.results} == set(videos)
    assert run.results == gt_run[0].results


def test_max_videos_tracks_and_scores_the_lowest_ids(
    ckpt: LoadedCheckpoint, dataset: tuple[Path, Path]
) -> None:
    gt_path, frames = dataset
    gt = load_ground_truth(gt_path)
    run = _run(ckpt, gt, frames, max_videos=1)
    kept = {min(gt.videos)}
    assert {r["video_id"] for r in run.results} == kept
    sub = GroundTruth(
        videos={v: gt.videos[v] for v in kept},
        categories=gt.categories,
        tracks=tuple(t for t in gt.tracks if t.video_id in kept),
    )
    assert run.score is not None
    expected = evaluate(sub, parse_results(run.results, sub))
    assert run.score.evaluation.metrics == expected.metrics


def test_a_video_without_frames_names_its_folder(ckpt: LoadedCheckpoint, tmp_path: Path) -> None:
    empty = Video(id=3, height=8, width=8, length=0, file_names=())
    with pytest.raises(DatasetVideoError, match="the video has no frames"):
        _run(ckpt, {3: empty}, tmp_path)
    ok = replace(empty, length=1, file_names=("missing.png",))
    from model.video.reader import VideoReadError

    with pytest.raises(VideoReadError, match="missing frame file"):
        _run(ckpt, {3: ok}, tmp_path)


def test_load_videos_refuses_a_file_without_videos(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(YtvisFormatError, match="needs a 'videos' list"):
        load_videos(path)
    path.write_text(json.dumps({"videos": [{"id": 1, "file_names": ["a.png"]}]}))
    with pytest.raises(YtvisFormatError, match="missing or bad field 'height'"):
        load_videos(path)
