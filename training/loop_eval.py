"""Periodic validation of the training loop: online tracking + the YouTube-VIS evaluator.

Each val video goes through ``model.runner.track_frames`` exactly as ``ctvis track --dataset``
does it, and the pooled results are scored by ``training.ytvis_eval.evaluate``. The synthetic
val split is written to disk once (``training.data.synthetic.write_dataset``) so that the
same files can be re-scored with ``ctvis track --dataset ... --evaluate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.config import ModelConfig, PreprocessConfig, TrackerConfig
from model.runner import track_frames
from model.video_io import FrameSource
from training.config import EvalConfig
from training.data.synthetic import write_dataset
from training.ytvis_data import load_ground_truth, parse_results
from training.ytvis_eval import EvalResult, evaluate

__all__ = ["evaluate_segmenter", "prepare_val_split"]


def prepare_val_split(cfg: EvalConfig, work_dir: Path) -> tuple[Path, Path]:
    """(ground-truth json, frames root) of the val split; renders the synthetic one if needed."""
    if cfg.kind == "ytvis":
        return Path(cfg.ytvis_json), Path(cfg.ytvis_frames)
    root = work_dir / f"val_{cfg.synth_split}_{cfg.synth_seed}_{cfg.synth_videos}"
    gt_path = root / "instances.json"
    if not gt_path.is_file():
        write_dataset(root, cfg.synth_split, cfg.synth_seed, cfg.synth_videos)
    return gt_path, root / "frames"


@torch.no_grad()
def evaluate_segmenter(
    segmenter: nn.Module,
    model_cfg: ModelConfig,
    pre_cfg: PreprocessConfig,
    trk_cfg: TrackerConfig,
    gt_path: Path,
    frames_root: Path,
    max_videos: int = 0,
) -> EvalResult:
    """Track every val video with ``segmenter`` (put in eval mode, restored after) and score.

    Args:
        segmenter: the (unwrapped) model; pixels Bx3xHpxWp -> ``FrameOutputs``.
        model_cfg: classes / category ids written into the results.
        pre_cfg: test-time preprocessing.
        trk_cfg: tracker settings.
        gt_path: YouTube-VIS ground truth.
        frames_root: folder its ``file_names`` are relative to.
        max_videos: evaluate only the first N videos (0 = all).

    Returns:
        The evaluator's metrics (AP etc. as fractions) over the evaluated videos.
    """
    gt = load_ground_truth(gt_path)
    video_ids = sorted(gt.videos)
    if max_videos > 0:
        video_ids = video_ids[:max_videos]
        gt = type(gt)(
            videos={v: gt.videos[v] for v in video_ids},
            categories=gt.categories,
            tracks=tuple(t for t in gt.tracks if t.video_id in set(video_ids)),
        )
    was_training = segmenter.training
    segmenter.eval()
    results: list[dict[str, Any]] = []
    try:
        for vid in video_ids:
            files = [frames_root / name for name in gt.videos[vid].file_names]
            out = track_frames(FrameSource(files), segmenter, model_cfg, pre_cfg, trk_cfg, vid)
            results += out.results
    finally:
        segmenter.train(was_training)
    return evaluate(gt, parse_results(results, gt))
