"""Score committed re-id heads on freshly rendered videos and summarise the study.

:func:`count_videos` renders ``ctvis synth --preset reid --seed S`` videos, runs the frozen
segmenter once per video and scores every head on it, in ``jobs`` worker processes (one
torch thread each) over disjoint slices of the videos; :func:`summarize` turns the per-video
counts into the study's JSON (per recipe: mean over training seeds with a t-interval over
seeds and a seeds x videos bootstrap interval; paired differences against the baseline).
Head names are ``<recipe>.s<seed>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.reid_study.stats import (
    detectable_difference,
    overall,
    t_interval,
    two_way_bootstrap,
)

__all__ = ["ORDER", "count_videos", "head_names", "summarize"]

ORDER = (
    "single_ref",
    "multi_ref",
    "memory_bank",
    "memory_bank_ma",
    "paper",
    "official",
    "init",
    "segmenter_head",
)
"""Row order: the Table 3 ladder, the official recipe, then the two reference rows."""


def head_names(names: Sequence[str]) -> dict[str, list[str]]:
    """Recipe -> its head names ordered by seed (``<recipe>.s<seed>``)."""
    out: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        recipe, _, seed = name.rpartition(".s")
        out.setdefault(recipe, []).append((int(seed), name))
    rank = {name: i for i, name in enumerate(ORDER)}
    recipes = sorted(out, key=lambda r: (rank.get(r, len(ORDER)), r))
    return {r: [n for _, n in sorted(out[r])] for r in recipes}


def _count_slice(job: tuple[str, str, int, list[int]]) -> dict[str, list[list[float]]]:
    """Worker: cache the videos ``indices`` and count every head on them."""
    from model.checkpoint import load_checkpoint
    from training.data.reid_synth import render_reid_video
    from training.reid_study.cache import cache_video, video_seed
    from training.reid_study.heads import load_heads
    from training.reid_study.stats import video_counts

    segmenter_dir, heads_path, seed, indices = job
    torch.set_num_threads(1)
    ckpt = load_checkpoint(segmenter_dir)
    trk = dataclasses.replace(ckpt.tracker_cfg, box_iou_weight=0.0)
    caches = [
        cache_video(
            f"reid_{seed}_{v:04d}",
            render_reid_video(video_seed(seed, v)),
            ckpt.segmenter,
            ckpt.preprocess_cfg,
            trk,
        )
        for v in indices
    ]
    heads, _ = load_heads(heads_path, ckpt.model_cfg.hidden_dim, ckpt.model_cfg.reid_head_layers)
    return {name: video_counts(h, caches, ckpt.model_cfg, trk) for name, h in heads.items()}


def count_videos(
    segmenter_dir: str | Path, heads_path: str | Path, seed: int, videos: int, jobs: int = 2
) -> dict[str, np.ndarray]:
    """Per head, [V, 3 + 2A] per-video counts on videos ``0..videos-1`` of ``seed``."""
    slices = [list(range(videos))[i::jobs] for i in range(jobs)]
    slices = [s for s in slices if s]
    args = [(str(segmenter_dir), str(heads_path), seed, s) for s in slices]
    if len(args) == 1:
        parts = [_count_slice(args[0])]
    else:
        with ProcessPoolExecutor(max_workers=len(args)) as pool:
            parts = list(pool.map(_count_slice, args))
    order = np.argsort(np.concatenate(slices))
    return {
        name: np.concatenate([np.asarray(p[name], dtype=np.float64) for p in parts])[order]
        for name in parts[0]
    }


def summarize(
    counts: dict[str, np.ndarray],
    baseline: str,
    ctvis: str,
    replicates: int = 2000,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The study's JSON from per-head counts (module docstring; fractions in [0, 1]).

    ``idf1_ci`` / ``assa_ci`` and ``paired_idf1_diff_ci`` are Student-t intervals over the
    training seeds; the ``*_boot`` intervals also resample the videos
    (:func:`training.reid_study.stats.two_way_bootstrap`).
    """
    groups = head_names(list(counts))
    stacked = {r: np.stack([counts[n] for n in names]) for r, names in groups.items()}
    pairs = [(r, baseline) for r in groups
             if r != baseline and len(groups[r]) == len(groups[baseline])]  # fmt: skip
    boot, boot_diffs = two_way_bootstrap(stacked, pairs, replicates)
    per_seed = {r: overall(c) for r, c in stacked.items()}  # (idf1 [S], assa [S])
    variants: dict[str, Any] = {}
    for r in groups:
        idf1, lo_i, hi_i = t_interval(per_seed[r][0])
        assa, lo_a, hi_a = t_interval(per_seed[r][1])
        variants[r] = {
            "idf1": idf1, "idf1_ci": [lo_i, hi_i], "assa": assa, "assa_ci": [lo_a, hi_a],
            "idf1_ci_boot": list(boot[r]["idf1"]), "assa_ci_boot": list(boot[r]["assa"]),
            "seeds": len(groups[r]), "idf1_per_seed": per_seed[r][0].tolist(),
            "assa_per_seed": per_seed[r][1].tolist(),
        }  # fmt: skip
    paired = {}
    for a, b in pairs:
        diffs = per_seed[a][0] - per_seed[b][0]
        mean, lo, hi = t_interval(diffs)
        _, lo_b, hi_b = t_interval(diffs, level=0.975)  # Bonferroni for two recipes
        paired[a] = {"idf1_diff": mean, "idf1_diff_ci": [lo, hi],
                     "idf1_diff_ci_975": [lo_b, hi_b],
                     "idf1_diff_ci_boot": list(boot_diffs[(a, b)]),
                     "detectable_diff": detectable_difference(diffs)}  # fmt: skip
    videos = next(iter(counts.values())).shape[0]
    return {
        "variants": variants,
        "baseline": baseline,
        "ctvis": ctvis,
        "paired_idf1_diff": paired[ctvis]["idf1_diff"],
        "paired_idf1_diff_ci": paired[ctvis]["idf1_diff_ci"],
        "paired_idf1_diff_ci_boot": paired[ctvis]["idf1_diff_ci_boot"],
        "paired_vs_baseline": paired,
        "videos": videos,
        "ci": "95 %: *_ci Student-t over training seeds; *_ci_boot seeds x videos bootstrap",
        **(extra or {}),
    }
