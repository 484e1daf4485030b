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
import dataclasses
import itertools
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def network_outputs(checkpoint: str, dataset: str, frames_root: str) -> tuple[Any, list[Any]]:
    """(loaded checkpoint, [(video id, sizes, [FrameOutputs per clip])] for every video).

    The network runs inside ``model.runner.track_frames``, as in ``ctvis track``, so the
    frames are prepared and split into clips exactly as there; its outputs are recorded.
    """
    from model.checkpoint import load_checkpoint
    from model.postprocess import MaskSizes
    from model.preprocess import prepare_frames
    from model.runner import track_frames
    from model.video_io import FrameSource
    from training.ytvis_data import read_json

    ckpt = load_checkpoint(checkpoint, device="cpu")
    videos = []
    for video in read_json(dataset)["videos"]:
        frames = list(FrameSource([Path(frames_root) / name for name in video["file_names"]]))
        chunks: list[Any] = []

        def forward(pixels: Any, chunks: list[Any] = chunks) -> Any:
            chunks.append(ckpt.segmenter(pixels))
            return chunks[-1]

        track_frames(frames, forward, ckpt.model_cfg, ckpt.pre_cfg, ckpt.trk_cfg)
        first = prepare_frames(frames[:1], ckpt.pre_cfg)
        sizes = MaskSizes(first.image_sizes[0], first.padded_size, first.original_sizes[0])
        videos.append((int(video["id"]), sizes, chunks))
    return ckpt, videos


def score(ckpt: Any, videos: list[Any], gt: Any, tracker_cfg: Any) -> dict[str, Any]:
    """Track the cached outputs with ``tracker_cfg`` and evaluate: metrics in %, IDSW."""
    import torch

    from model.pipeline import track_video
    from training.ytvis_data import parse_results
    from training.ytvis_eval import evaluate

    results: list[dict[str, Any]] = []
    with torch.inference_mode():
        for video_id, sizes, chunks in videos:
            done = track_video(chunks, sizes, ckpt.model_cfg, tracker_cfg, video_id)
            results += done.results
    ev = evaluate(gt, parse_results(results, gt))
    out = {k: round(100 * v, 2) for k, v in ev.metrics.items() if k in ("AP", "AP50", "AR10")}
    return {**out, "IDSW": ev.id_switches}


def main() -> None:
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

    from training.ytvis_data import load_ground_truth

    gt = load_ground_truth(args.dataset)
    ckpt, videos = network_outputs(args.checkpoint, args.dataset, args.frames_root)
    rows = []
    boxes = args.box if args.box else [ckpt.trk_cfg.box_iou_weight]
    offsets = args.offset if args.offset else [ckpt.trk_cfg.mask_logit_offset]
    grid = itertools.product(args.init, args.match, args.nms, boxes, offsets)
    for init, match, nms, box, offset in grid:
        cfg = dataclasses.replace(
            ckpt.trk_cfg,
            init_score_threshold=init,
            match_threshold=match,
            mask_nms_threshold=nms,
            box_iou_weight=box,
            mask_logit_offset=offset,
        )
        setting = {"init": init, "match": match, "nms": nms, "box": box, "offset": offset}
        rows.append({**setting, **score(ckpt, videos, gt, cfg)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    current = score(ckpt, videos, gt, ckpt.trk_cfg)
    rows.sort(key=lambda r: -r["AP"])
    print(
        "| init | match | nms | box | offset | AP | AP50 | AR10 | IDSW |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(f"| {r['init']} | {r['match']} | {r['nms']} | {r['box']} | {r['offset']} | "
              f"{r['AP']} | {r['AP50']} | {r['AR10']} | {r['IDSW']} |")  # fmt: skip
    t = ckpt.trk_cfg
    print(f"\ncheckpoint's own settings ({t.init_score_threshold}, {t.match_threshold}, "
          f"{t.mask_nms_threshold}, box {t.box_iou_weight}, offset {t.mask_logit_offset}): "
          f"{json.dumps(current)}")  # fmt: skip
    if args.out is not None:
        args.out.write_text(json.dumps({"grid": rows, "checkpoint_settings": current}, indent=1))


if __name__ == "__main__":
    main()
