"""Choose a checkpoint's tracker thresholds on held-out videos (``docs/experiments.md`` 1b).

    python scripts/tune_tracker.py --checkpoint DIR --dataset GT.json --frames-root FRAMES \\
        [--init 0.01 0.2 0.35 0.5] [--match 0.05 0.1 0.2 0.3] [--nms 0.4 0.5 0.6] \\
        [--box 0.0] [--offset 0.0 0.5] [--out F.json]

Runs the network once per video and keeps its outputs, then tracks and scores every
combination of ``init_score_threshold`` x ``match_threshold`` x ``mask_nms_threshold`` x
``box_iou_weight`` x ``mask_logit_offset`` (the last two default to the checkpoint's own) with
the shipped code path (``select_candidates`` -> ``track_step`` -> ``video_results`` ->
the YouTube-VIS evaluator). Prints the settings by AP, best first, and writes every number to
``--out``. Use videos that are *not* the report set (``ctvis synth --seed 1``, not seed 0),
then put the chosen values in the training config's ``tracker:`` section.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def network_outputs(checkpoint: str, dataset: str, frames_root: str) -> tuple[Any, list[Any]]:
    """(loaded checkpoint, [(video id, sizes, [FrameOutputs per clip])] for every video).

    The network runs inside ``training.dataset_eval.track_dataset`` (each video through
    ``model.video.runner.track_frames``), the loop of ``ctvis track --dataset``, so the frames
    are prepared and split into clips exactly as there; its outputs are recorded per video.
    """
    import numpy as np

    from model.checkpoint import load_checkpoint
    from model.postprocess import MaskSizes
    from model.preprocess import prepare_frames
    from training.dataset_eval import track_dataset
    from training.ytvis_json import Video, load_videos

    ckpt = load_checkpoint(checkpoint, device="cpu")
    videos: list[Any] = []
    chunks: list[Any] = []

    def forward(pixels: Any) -> Any:
        chunks.append(ckpt.segmenter(pixels))
        return chunks[-1]

    @contextmanager
    def record(video: Video, _index: int, _total: int) -> Iterator[None]:
        chunks.clear()
        yield None
        # sizes of a frame as large as the file declares, as track_frames derives them
        blank = np.zeros((1, video.height, video.width, 3), dtype=np.uint8)
        videos.append(
            (video.id, MaskSizes.of(prepare_frames(blank, ckpt.preprocess_cfg)), list(chunks))
        )

    cfgs = (ckpt.model_cfg, ckpt.preprocess_cfg, ckpt.tracker_cfg)
    track_dataset(load_videos(dataset), frames_root, forward, *cfgs, on_video=record)
    return ckpt, videos


def score(ckpt: Any, videos: list[Any], gt: Any, tracker_cfg: Any) -> dict[str, Any]:
    """Track the cached outputs with ``tracker_cfg`` and evaluate: metrics in %, IDSW.

    Replays ``model.pipeline.track_video`` (what ``track_frames`` runs after the network) on
    the recorded outputs, so no frame is decoded again; scored as ``track_dataset`` scores.
    """
    import torch

    from model.pipeline import track_video
    from training.dataset_eval import score_results

    results: list[dict[str, Any]] = []
    with torch.inference_mode():
        for video_id, sizes, chunks in videos:
            done = track_video(chunks, sizes, ckpt.model_cfg, tracker_cfg, video_id)
            results += done.results
    ev = score_results(gt, results).evaluation
    out = {k: round(100 * v, 2) for k, v in ev.metrics.items() if k in ("AP", "AP50", "AR10")}
    return {**out, "IDSW": ev.id_switches}


GRID_OPTIONS = {
    "init": "init_score_threshold",
    "match": "match_threshold",
    "nms": "mask_nms_threshold",
    "box": "box_iou_weight",
    "offset": "mask_logit_offset",
}
"""Grid flag -> the tracker option it sets."""


def parse_args() -> argparse.Namespace:
    """The command line; every grid value is checked by the tracker's option rules."""
    from model.config import TrackerOptionError, check_tracker_option

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", required=True, help="YouTube-VIS ground-truth json")
    parser.add_argument("--frames-root", required=True)
    parser.add_argument("--init", type=float, nargs="+", default=[0.01, 0.2, 0.35, 0.5])
    parser.add_argument("--match", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    parser.add_argument("--nms", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    parser.add_argument(
        "--box", type=float, nargs="+", help="box_iou_weight values (default: the checkpoint's)"
    )
    parser.add_argument(
        "--offset",
        type=float,
        nargs="+",
        help="mask_logit_offset values (default: the checkpoint's)",
    )
    parser.add_argument("--out", type=Path, help="write every setting's numbers here (JSON)")
    args = parser.parse_args()
    try:
        for flag, option in GRID_OPTIONS.items():
            for value in getattr(args, flag) or []:
                check_tracker_option(option, value)
    except TrackerOptionError as exc:
        parser.error(str(exc))
    return args


def main() -> None:
    from model.config import tracker_config_from_dict
    from training.ytvis_json import load_ground_truth

    args = parse_args()
    gt = load_ground_truth(args.dataset)
    ckpt, videos = network_outputs(args.checkpoint, args.dataset, args.frames_root)
    rows = []
    boxes = args.box if args.box else [ckpt.tracker_cfg.box_iou_weight]
    offsets = args.offset if args.offset else [ckpt.tracker_cfg.mask_logit_offset]
    grid = itertools.product(args.init, args.match, args.nms, boxes, offsets)
    for init, match, nms, box, offset in grid:
        setting = {"init": init, "match": match, "nms": nms, "box": box, "offset": offset}
        options = {GRID_OPTIONS[flag]: value for flag, value in setting.items()}
        cfg = tracker_config_from_dict(options, ckpt.tracker_cfg)
        rows.append({**setting, **score(ckpt, videos, gt, cfg)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    current = score(ckpt, videos, gt, ckpt.tracker_cfg)
    rows.sort(key=lambda r: -r["AP"])
    print(
        "| init | match | nms | box | offset | AP | AP50 | AR10 | IDSW |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(f"| {r['init']} | {r['match']} | {r['nms']} | {r['box']} | {r['offset']} | "
              f"{r['AP']} | {r['AP50']} | {r['AR10']} | {r['IDSW']} |")  # fmt: skip
    t = ckpt.tracker_cfg
    print(f"\ncheckpoint's own settings ({t.init_score_threshold}, {t.match_threshold}, "
          f"{t.mask_nms_threshold}, box {t.box_iou_weight}, offset {t.mask_logit_offset}): "
          f"{json.dumps(current)}")  # fmt: skip
    if args.out is not None:
        args.out.write_text(json.dumps({"grid": rows, "checkpoint_settings": current}, indent=1))


if __name__ == "__main__":
    main()
