"""Where one training step's time goes: data, forward + losses, backward, optimiser.

Usage::

    OMP_NUM_THREADS=1 python bench/bench_train_step.py [--config training/configs/synth_demo.yaml]
        [--steps 40] [--warmup 10] [key.path=value ...]

One process, one thread (as each of the two gloo ranks of the demo recipe runs), no DDP. The
data time covers loading the clips (rendering synthetic videos on the fly) and collating them;
forward + losses includes the Hungarian matching and the contrastive items. To compare two
commits, run the script from each checkout (``git worktree``) back to back: the machines are
shared, so compare only numbers taken minutes apart.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from training.config import load_config
from training.data.batch import collate_clips
from training.loop import _setup_distributed, compute_losses, init_segmenter
from training.loop_data import build_clip_loader
from training.optim import build_optimizer, clip_gradients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="training/configs/synth_demo.yaml")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, args.overrides)
    env = _setup_distributed(cfg.device)
    with tempfile.TemporaryDirectory() as work:
        model = init_segmenter(cfg, Path(work)).train()
    optimizer = build_optimizer(model, cfg.optim)
    clips = build_clip_loader(cfg.data, cfg.seed, 0, 1, 0)
    totals = {"data": 0.0, "forward + losses": 0.0, "backward": 0.0, "optimiser": 0.0}

    def step() -> list[float]:
        t0 = time.perf_counter()
        batch = collate_clips(next(clips), cfg.preprocess)
        t1 = time.perf_counter()
        loss, _ = compute_losses(model, batch, cfg, env)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        clip_gradients(optimizer, cfg.optim.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        return [t1 - t0, t2 - t1, t3 - t2, t4 - t3]

    for _ in range(args.warmup):
        step()
    for _ in range(args.steps):
        for name, seconds in zip(totals, step(), strict=True):
            totals[name] += seconds
    print("| part | ms per step |\n|---|---:|")
    for name, seconds in totals.items():
        print(f"| {name} | {1000 * seconds / args.steps:.1f} |")
    print(f"| **total** | **{1000 * sum(totals.values()) / args.steps:.1f}** |")


if __name__ == "__main__":
    main()
