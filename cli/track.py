"""``ctvis track``: offline online-tracking of a video, a frame folder or a whole dataset.

Single input::

    ctvis track INPUT [--checkpoint DIR] --out results.json [--overlay out.mp4]
        [--frame-stride N] [--max-frames N] [--video-id N] [--backend torch|onnx] [--device D]

Dataset (YouTube-VIS json; frames under ``--frames-root``, usually its ``JPEGImages/``)::

    ctvis track --dataset GT.json --frames-root DIR [--checkpoint DIR] --out results.json

Without ``--checkpoint`` the bundled demo checkpoint (``model.demo``) is used.

Frames stream through the network in clips of ``PreprocessConfig.clip_frames`` and through the
tracker one at a time, so memory holds RLE masks, not decoded frames. The results file is a
YouTube-VIS results list (as the official ``instances_to_coco_json_video`` in
``ctvis/data/vis/ytvis_eval.py`` of https://github.com/KainingYing/CTVIS writes it) whose
entries also name their ``track_id`` (and ``category_name`` when the checkpoint names its
classes). ``--overlay`` decodes the input a second time and draws, once per ``track_id``, the
results entries whose score reaches ``--overlay-score`` (default
``model.video.overlay.OVERLAY_MIN_SCORE``, the API's default too), so every ``#id`` drawn is a
``track_id`` of the results file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.checkpoint import LoadedCheckpoint
    from model.config import TrackerConfig
    from model.pipeline import ProgressFn, VideoResult
    from model.structures import FrameOutputs
    from model.video.reader import FrameSource
    from training.ytvis_json import GroundTruth, Video, YtvisFormatError

DEFAULT_OVERLAY_FPS = 10.0
OVERLAY_SCORE_HELP_DEFAULT = "0.3"
"""``model.video.overlay.OVERLAY_MIN_SCORE`` as the help shows it (that module imports torch, which
``ctvis --help`` must not; a test keeps the two equal)."""


class TrackError(RuntimeError):
    """A user-facing problem (bad arguments, unreadable input); printed, exit code 1."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``track`` options."""
    parser.add_argument("input", nargs="?", help="video file or folder of frames (sorted by name)")
    parser.add_argument("--dataset", help="YouTube-VIS json: track every video it lists")
    parser.add_argument("--frames-root", help="with --dataset: folder holding its file_names")
    parser.add_argument(
        "--checkpoint",
        help="checkpoint directory (default: the bundled demo checkpoint, trained on the "
        "synthetic benchmark)",
    )
    parser.add_argument("--out", required=True, help="results JSON to write")
    parser.add_argument("--overlay", help="also write an MP4 with masks, boxes and track ids")
    parser.add_argument(
        "--overlay-score",
        type=float,
        help="lowest results score an overlay draws, in [0, 1] "
        f"({OVERLAY_SCORE_HELP_DEFAULT}, as the API)",
    )
    parser.add_argument(
        "--fps",
        type=float,
        help=f"overlay frame rate when the input has none ({DEFAULT_OVERLAY_FPS:g})",
    )
    parser.add_argument("--frame-stride", type=int, default=1, help="keep every N-th frame")
    parser.add_argument("--max-frames", type=int, help="stop after N kept frames")
    parser.add_argument("--video-id", type=int, default=1, help="video_id in the results (1)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--onnx-model", help="ONNX file (default: CHECKPOINT/model.onnx)")
    parser.add_argument(
        "--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if found)"
    )
    parser.add_argument(
        "--tracker",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a tracker setting of the checkpoint, e.g. --tracker box_iou_weight=0 "
        "(repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--evaluate", action="store_true", help="with --dataset: print AP/AR of the results"
    )


def _check_args(args: argparse.Namespace) -> None:
    if args.dataset is None and args.input is None:
        raise TrackError("give a video file / frame folder, or --dataset with --frames-root")
    if args.dataset is not None:
        if args.input is not None:
            raise TrackError("give either INPUT or --dataset, not both")
        if args.frames_root is None:
            raise TrackError("--dataset needs --frames-root (the folder its file_names are in)")
        if args.overlay or args.frame_stride != 1 or args.max_frames is not None:
            raise TrackError("--overlay, --frame-stride and --max-frames need a single INPUT")
    elif args.evaluate:
        raise TrackError("--evaluate needs --dataset (ground truth)")
    if args.frame_stride < 1:
        raise TrackError("--frame-stride must be >= 1")
    if args.max_frames is not None and args.max_frames < 1:
        raise TrackError("--max-frames must be >= 1")
    if args.overlay_score is not None and not 0.0 <= args.overlay_score <= 1.0:  # NaN too
        raise TrackError("--overlay-score must be within [0, 1]")


def _load(args: argparse.Namespace) -> tuple[LoadedCheckpoint, Callable[[Any], FrameOutputs]]:
    """Load the checkpoint and build the forward function of the chosen backend."""
    import torch

    from model.checkpoint import CheckpointError, load_checkpoint
    from model.runtime.backend import OnnxBackend, TorchBackend

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not args.checkpoint:
        from model.demo import demo_checkpoint

        bundled = demo_checkpoint()
        if bundled is None:
            raise TrackError("no --checkpoint given and this installation has no demo checkpoint")
        args.checkpoint = str(bundled)
    try:
        ckpt = load_checkpoint(args.checkpoint, device=device if args.backend == "torch" else "cpu")
    except CheckpointError as exc:
        raise TrackError(str(exc)) from exc
    if args.tracker:
        ckpt = dataclasses.replace(
            ckpt, tracker_cfg=_tracker_overrides(ckpt.tracker_cfg, args.tracker)
        )
    if args.backend == "torch":
        return ckpt, TorchBackend(ckpt.segmenter, device=device)
    onnx_path = Path(args.onnx_model or Path(args.checkpoint) / "model.onnx")
    if not onnx_path.is_file():
        raise TrackError(f"{onnx_path}: no ONNX model (run `ctvis export-onnx` or --onnx-model)")
    try:
        providers = ["CPUExecutionProvider"] if device == "cpu" else None
        return ckpt, OnnxBackend(onnx_path, providers=providers)
    except ImportError as exc:
        raise TrackError("the onnx backend needs onnxruntime (pip install '.[onnx]')") from exc


def _tracker_overrides(base: TrackerConfig, overrides: list[str]) -> TrackerConfig:
    """``base`` with ``KEY=VALUE`` overrides: each value is parsed as YAML (``0.5``, ``true``,
    ``greedy``), then ``model.config.tracker_config_from_dict`` checks type and range by the
    rules the API and checkpoints are held to."""
    import yaml

    from model.config import TrackerOptionError, tracker_config_from_dict

    options: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise TrackError(f"--tracker: override {item!r} is not of the form key.path=value")
        try:
            options[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise TrackError(f"--tracker: override {item!r}: cannot parse value: {exc}") from exc
    try:
        return tracker_config_from_dict(options, base)
    except TrackerOptionError as exc:
        raise TrackError(f"--tracker: {exc}") from exc


@contextmanager
def _progress(total: int | None, desc: str, quiet: bool) -> Iterator[ProgressFn]:
    """A tqdm bar on stderr over one video's frames, as a ``track_frames`` progress callback."""
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="frame", disable=quiet, file=sys.stderr) as bar:

        def progress(done: int, _total: int | None) -> None:
            bar.update(done - bar.n)

        yield progress


def _track_one(
    source: FrameSource,
    ckpt: LoadedCheckpoint,
    forward_fn: Callable[[Any], FrameOutputs],
    video_id: int,
    desc: str,
    quiet: bool,
) -> VideoResult:
    from model.video.runner import track_frames

    with _progress(source.num_frames, desc, quiet) as progress:
        try:
            return track_frames(
                source,
                forward_fn,
                ckpt.model_cfg,
                ckpt.preprocess_cfg,
                ckpt.tracker_cfg,
                video_id=video_id,
                num_frames=source.num_frames,
                progress=progress,
            )
        except ValueError as exc:
            raise TrackError(f"{source.path}: {exc}") from exc


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temp file + rename), creating parent folders."""
    from model.files import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data))


def _read_dataset(
    path: str, annotated: bool
) -> tuple[GroundTruth | dict[int, Video], YtvisFormatError | None]:
    """``path``'s ground truth when ``annotated`` (``--evaluate``) and readable, else its videos,
    with the reason its ground truth could not be read (its videos are tracked all the same,
    so the results are written before that is reported)."""
    from training.ytvis_json import YtvisFormatError, load_ground_truth, load_videos

    gt_error = None
    if annotated:
        try:
            return load_ground_truth(path), None
        except YtvisFormatError as exc:
            gt_error = exc
    try:
        return load_videos(path), gt_error
    except YtvisFormatError as exc:
        raise TrackError(f"{path}: not a YouTube-VIS dataset json ({exc})") from exc


def _run_dataset(args: argparse.Namespace, ckpt: LoadedCheckpoint, forward_fn: Any) -> int:
    """Track every video of ``--dataset``, write the results and (``--evaluate``) print scores."""
    from cli.evaluate import format_table
    from training.dataset_eval import DatasetVideoError, track_dataset
    from training.ytvis_json import YtvisFormatError

    dataset, gt_error = _read_dataset(args.dataset, args.evaluate)

    def bar(video: Video, index: int, total: int) -> AbstractContextManager[ProgressFn]:
        return _progress(video.length, f"video {video.id} ({index}/{total})", args.no_progress)

    def write(results: list[dict[str, Any]]) -> None:
        write_json(args.out, results)
        print(f"wrote {args.out} ({len(results)} results)", file=sys.stderr)

    try:
        run = track_dataset(
            dataset, args.frames_root, forward_fn,
            ckpt.model_cfg, ckpt.preprocess_cfg, ckpt.tracker_cfg,
            on_video=bar, on_results=write,
        )  # fmt: skip
    except DatasetVideoError as exc:
        raise TrackError(str(exc)) from exc
    except YtvisFormatError as exc:  # our masks do not have the sizes the file declares
        gt_error = YtvisFormatError(f"{args.out}: {exc}")
    if gt_error is not None:
        print(f"ctvis track: results written, but cannot evaluate: {gt_error}", file=sys.stderr)
        return 1
    if run.score is not None:
        if run.score.mismatch is not None:  # e.g. the demo model's shapes against a real dataset
            print(f"ctvis track: warning: {run.score.mismatch.message()}", file=sys.stderr)
        evaluation = run.score.evaluation
        print(format_table(evaluation.to_dict(), evaluation.per_category_ap))
    return 0


def _run_input(args: argparse.Namespace, ckpt: LoadedCheckpoint, forward_fn: Any) -> list[Any]:
    """Track the single ``INPUT`` (and draw ``--overlay``); its results entries."""
    from model.video.reader import FrameSource

    source = FrameSource(args.input, args.frame_stride, args.max_frames)
    result = _track_one(
        source, ckpt, forward_fn, args.video_id, Path(args.input).name, args.no_progress
    )
    if args.overlay:
        from model.video.overlay import OVERLAY_MIN_SCORE, overlay_tracks, write_overlay

        min_score = OVERLAY_MIN_SCORE if args.overlay_score is None else args.overlay_score
        tracks = overlay_tracks(result, ckpt.model_cfg, min_score)
        fps = source.fps or args.fps or DEFAULT_OVERLAY_FPS
        count = write_overlay(args.overlay, source, tracks, fps)
        print(f"wrote {args.overlay} ({count} frames, {len(tracks)} tracks)", file=sys.stderr)
    return result.results


def run(args: argparse.Namespace) -> int:
    """Track, write the results (and overlay); exit 1 with a message on bad input."""
    from model.video.reader import VideoReadError

    try:
        _check_args(args)
        ckpt, forward_fn = _load(args)
        if args.dataset is not None:
            return _run_dataset(args, ckpt, forward_fn)
        results = _run_input(args, ckpt, forward_fn)
        write_json(args.out, results)
    except (TrackError, VideoReadError) as exc:
        print(f"ctvis track: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({len(results)} results)", file=sys.stderr)
    return 0
