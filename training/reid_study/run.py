"""Steps of the re-id study (``python -m training.reid_study.run STEP ...``).

``cache``: run the frozen segmenter over ``ctvis synth --preset reid --seed S`` videos and save
what the heads need (:mod:`training.reid_study.cache`).
``train``: train one head per (recipe, seed) on a training cache and save them all in one
safetensors file (:mod:`training.reid_study.heads`); two worker processes share the jobs.
``references``: add two reference rows to a heads file: ``init`` (each training seed's
initial, untrained head) and ``segmenter_head`` (the frozen segmenter's own head, trained with
it on the demo recipe's 2-frame clips).
``tune``: train heads for a grid of learning rates and step counts and print their overall
IDF1 / AssA on a (tuning) cache.
``scripts/reid_study.py`` scores the heads on a fresh set. The commands that produced the
committed results are in ``docs/experiments.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from training.reid_study.cache import cache_videos, load_caches, mask_recall, save_caches
from training.reid_study.heads import HeadTraining, load_heads, save_heads, train_head

__all__ = ["main"]


def _load_segmenter(checkpoint: str) -> Any:
    """The frozen segmenter with the box cue off (the study scores embeddings alone)."""
    from model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    return ckpt, dataclasses.replace(ckpt.tracker_cfg, box_iou_weight=0.0)


def _cache(args: argparse.Namespace) -> None:
    ckpt, trk = _load_segmenter(args.checkpoint)
    tic = time.perf_counter()
    caches = cache_videos(ckpt.segmenter, ckpt.preprocess_cfg, trk, args.seed, args.videos)
    meta = {"checkpoint": args.checkpoint, "seed": args.seed, "videos": args.videos,
            "tracker": dataclasses.asdict(trk)}  # fmt: skip
    save_caches(args.out, caches, meta)
    print(f"cached {args.videos} videos in {time.perf_counter() - tic:.0f} s; "
          f"mask recall (IoU >= 0.5) {mask_recall(caches):.4f}")  # fmt: skip


def _train_job(job: tuple[str, str, int, HeadTraining]) -> tuple[str, dict, float]:
    """One (recipe, seed) in a worker process with one torch thread."""
    cache_path, recipe, seed, settings = job
    torch.set_num_threads(1)
    caches, _ = load_caches(cache_path)
    tic = time.perf_counter()
    head = train_head(caches, recipe, seed, settings)
    return f"{recipe}.s{seed}", head.state_dict(), time.perf_counter() - tic


def _train(args: argparse.Namespace) -> None:
    settings = HeadTraining(steps=args.steps, clips=args.clips, lr=args.lr)
    jobs = [(args.cache, r, s, settings) for s in args.seeds for r in args.recipes]
    from training.reid_study.heads import new_head

    heads = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for name, state, seconds in pool.map(_train_job, jobs):
            head = new_head(state["layers.0.weight"].shape[1], settings.head_layers, 0)
            head.load_state_dict(state)
            heads[name] = head
            print(f"trained {name} in {seconds:.0f} s", flush=True)
    meta = {"settings": dataclasses.asdict(settings), "train_cache": args.cache,
            "recipes": args.recipes, "seeds": args.seeds}  # fmt: skip
    save_heads(args.out, heads, meta)


def _references(args: argparse.Namespace) -> None:
    from model.checkpoint import load_checkpoint
    from training.reid_study.heads import new_head

    ckpt = load_checkpoint(args.segmenter)
    dim, layers = ckpt.model_cfg.hidden_dim, ckpt.model_cfg.reid_head_layers
    heads, meta = load_heads(args.heads, dim, layers)
    heads = {n: h for n, h in heads.items() if not n.startswith(("init.", "segmenter_head."))}
    heads.update({f"init.s{s}": new_head(dim, layers, s) for s in args.seeds})
    heads["segmenter_head.s0"] = ckpt.segmenter.sem_seg_head.predictor.reid_embed
    meta["references"] = {"init": "initial heads of the training seeds (untrained)",
                          "segmenter_head": f"the re-id head of {args.segmenter}"}  # fmt: skip
    save_heads(args.heads, heads, meta)


def _tune_job(job: tuple[str, str, str, int, HeadTraining]) -> tuple[str, float, float]:
    """Train one head and score it on the tuning cache: (label, IDF1, AssA)."""
    import numpy as np

    from model.config import ModelConfig, TrackerConfig
    from training.reid_study.stats import overall, video_counts

    train_path, tune_path, recipe, seed, settings = job
    torch.set_num_threads(1)
    caches, _ = load_caches(train_path)
    head = train_head(caches, recipe, seed, settings)
    tune, meta = load_caches(tune_path)
    model_cfg = ModelConfig(num_classes=tune[0].logits.shape[-1] - 1)
    counts = np.asarray(video_counts(head, tune, model_cfg, TrackerConfig(**meta["tracker"])))
    idf1, assa = overall(counts)
    label = f"{recipe} seed {seed} lr {settings.lr:g} steps {settings.steps} clips {settings.clips}"
    return label, float(idf1), float(assa)


def _tune(args: argparse.Namespace) -> None:
    jobs = [
        (args.cache, args.tune_cache, r, s, HeadTraining(steps=n, clips=args.clips, lr=lr))
        for r in args.recipes
        for s in args.seeds
        for lr in args.lrs
        for n in args.steps
    ]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for label, idf1, assa in pool.map(_tune_job, jobs):
            print(f"{label}: IDF1 {100 * idf1:.2f} AssA {100 * assa:.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the step and run it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    c = sub.add_parser("cache")
    c.add_argument("--checkpoint", default="model/demo")
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--videos", type=int, required=True)
    c.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--cache", required=True)
    t.add_argument("--recipes", nargs="+", required=True)
    t.add_argument("--seeds", type=int, nargs="+", required=True)
    t.add_argument("--steps", type=int, default=HeadTraining.steps)
    t.add_argument("--clips", type=int, default=HeadTraining.clips)
    t.add_argument("--lr", type=float, default=HeadTraining.lr)
    t.add_argument("--jobs", type=int, default=2)
    t.add_argument("--out", required=True)
    f = sub.add_parser("references")
    f.add_argument("--heads", required=True)
    f.add_argument("--segmenter", required=True)
    f.add_argument("--seeds", type=int, nargs="+", required=True)
    u = sub.add_parser("tune")
    u.add_argument("--cache", required=True, help="training cache")
    u.add_argument("--tune-cache", required=True)
    u.add_argument("--recipes", nargs="+", required=True)
    u.add_argument("--seeds", type=int, nargs="+", default=[0])
    u.add_argument("--lrs", type=float, nargs="+", required=True)
    u.add_argument("--steps", type=int, nargs="+", required=True)
    u.add_argument("--clips", type=int, default=HeadTraining.clips)
    u.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    steps = {"cache": _cache, "train": _train, "tune": _tune,
             "references": _references}  # fmt: skip
    steps[args.step](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
