"""Periodic validation of the training loop: online tracking + the YouTube-VIS evaluator.

The val split goes through ``training.dataset_eval.track_dataset``, the dataset loop of
``ctvis track --dataset --evaluate`` too, so the numbers logged during training are those the
CLI reports for the same checkpoint. The synthetic val split is written to disk once
(``training.data.synthetic.write_dataset``) so that the same files can be re-scored with
``ctvis track --dataset ... --evaluate``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from model.config import ModelConfig, PreprocessConfig, TrackerConfig
from training.config import EvalConfig
from training.data.synthetic import write_dataset
from training.dataset_eval import track_dataset
from training.ytvis_eval import EvalResult
from training.ytvis_json import load_ground_truth

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
        max_videos: evaluate only the N videos of lowest id (0 = all).

    Returns:
        The evaluator's metrics (AP etc. as fractions) over the evaluated videos.
    """
    gt = load_ground_truth(gt_path)
    was_training = segmenter.training
    segmenter.eval()
    try:
        run = track_dataset(
            gt, frames_root, segmenter, model_cfg, pre_cfg, trk_cfg, max_videos=max_videos
        )
    finally:
        segmenter.train(was_training)
    assert run.score is not None  # ground truth in, scores out
    return run.score.evaluation
