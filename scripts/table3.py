"""The paper's Table 3 in miniature on the synthetic benchmark (``docs/experiments.md``).

Four training variants, the rows of Table 3 of the paper (Ying et al., ICCV 2023,
arXiv:2307.12616) as ``cl.*`` switches (``training.config.ClConfig``), each fine-tuned for
the same number of iterations from the same starting point with several seeds, then tracked
and scored on the synthetic ``val`` and ``hard`` splits with the ``ctvis track --dataset``
code path.

The starting point mirrors the paper's (a segmenter pretrained without re-id): the ``--init``
checkpoint with its re-id embedding head re-initialised, so every variant learns its
embeddings from scratch with its own contrastive items while the segmenter starts trained.
Prints a markdown table (mean and sample standard deviation over seeds) and writes
every number to ``OUT/table3.json``.

Usage::

    python scripts/table3.py --init CHECKPOINT_DIR --out runs/table3 [--iters 600] [--lr 3e-4]
        [--seeds 1 2] [--jobs 2] [--videos 16] [--config training/configs/synth_demo.yaml]

``--jobs`` runs that many trainings at once, each with one torch thread (on small models one
thread per run is the most efficient use of a core). A finished run (its final checkpoint
exists) is not trained again and a scored one not scored again, so an interrupted study
resumes where it stopped and more ``--seeds`` can be added later.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Cumulative rows of Table 3; "noise" uses the same switches as "momentum" plus noise.
VARIANTS: dict[str, list[str]] = {
    "baseline (single reference)": [
        "cl.positive_mode=prev_frame",
        "cl.future_positive=false",
        "cl.noise_prob=0.0",
    ],
    "+ memory bank": [
        "cl.positive_mode=latest",
        "cl.future_positive=false",
        "cl.noise_prob=0.0",
    ],
    "+ momentum": [
        "cl.positive_mode=ma",
        "cl.ma_prob=1.0",
        "cl.future_positive=false",
        "cl.noise_prob=0.0",
    ],
    "+ noise": [
        "cl.positive_mode=ma",
        "cl.ma_prob=1.0",
        "cl.future_positive=false",
        "cl.noise_prob=0.1",
    ],
}


# The study's clips, whatever the demo recipe uses: the memory bank and momentum need history,
# so 4-frame clips (2 per step, 12-frame videos of 1-4 shapes) as in the documented runs.
STUDY_DATA: list[str] = [
    "data.clip_frames=4",
    "data.frame_range=4",
    "data.clips_per_batch=2",
    "data.synth_frames=12",
    "data.synth_min_instances=0",
    "data.synth_max_instances=0",
    # and the loss weights of the documented runs (the demo recipe doubles the class weight)
    "loss.class_weight=2.0",
]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").replace("__", "_")


def _run(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("w") as fh:
        subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, check=True)


def reset_reid_head(init: Path, out: Path) -> Path:
    """``init`` with its re-id head (``...predictor.reid_embed``) re-initialised, at ``out``."""
    import torch

    from model.checkpoint import load_checkpoint, save_checkpoint

    if (out / "model.safetensors").is_file():
        return out
    loaded = load_checkpoint(init)
    torch.manual_seed(0)
    head = loaded.segmenter.sem_seg_head.predictor.reid_embed
    for module in head.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    provenance = {"derived_from": str(init), "reid_head": "re-initialised (torch seed 0)"}
    save_checkpoint(
        out, loaded.segmenter, loaded.model_cfg, loaded.preprocess_cfg, loaded.tracker_cfg,
        provenance,
    )  # fmt: skip
    return out


def train_one(args: argparse.Namespace, variant: str, seed: int) -> Path:
    """Fine-tune one (variant, seed); returns the final checkpoint directory."""
    out = args.out / f"{_slug(variant)}_s{seed}"
    final = out / "checkpoints" / f"iter_{args.iters:07d}"
    if (final / "model.safetensors").is_file():
        return final
    out.mkdir(parents=True, exist_ok=True)
    sets = [
        "init.kind=checkpoint",
        f"init.path={args.init}",
        f"seed={seed}",
        f"optim.max_iter={args.iters}",
        f"optim.lr={args.lr}",
        f"optim.steps=[{int(args.iters * 0.8)}]",
        "optim.warmup_iters=0",
        "eval.period=0",
        f"checkpoint_period={args.iters}",
        *STUDY_DATA,
        *VARIANTS[variant],
    ]
    cmd = [sys.executable, "-m", "cli.main", "train", "--config", str(args.config)]
    cmd += ["--out", str(out)]
    for item in sets:
        cmd += ["--set", item]
    _run(cmd, out / "train.log")
    return final


def score(args: argparse.Namespace, checkpoint: Path, split: str) -> dict[str, Any]:
    """Track and evaluate ``checkpoint`` on the written ``split``; returns the metrics."""
    data = args.out / f"data_{split}"
    out = checkpoint.parent.parent / f"results_{split}.json"
    saved = checkpoint.parent.parent / f"metrics_{split}.json"
    if saved.is_file():  # scored by an earlier invocation
        return dict(json.loads(saved.read_text()))
    cmd = [
        sys.executable, "-m", "cli.main", "track", "--dataset", str(data / "instances.json"),
        "--frames-root", str(data / "frames"), "--checkpoint", str(checkpoint),
        "--out", str(out), "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    _run(cmd, checkpoint.parent.parent / f"track_{split}.log")
    from training.ytvis_eval import evaluate_files

    metrics = evaluate_files(data / "instances.json", out).to_dict()
    saved.write_text(json.dumps(metrics))
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--init", type=Path, required=True, help="checkpoint to start from")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--videos", type=int, default=16, help="videos per evaluation split")
    parser.add_argument("--config", type=Path, default=ROOT / "training/configs/synth_demo.yaml")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.init = reset_reid_head(args.init.resolve(), args.out / "init_reid_reset")

    from training.data.synthetic import write_dataset

    for split in ("val", "hard"):
        if not (args.out / f"data_{split}" / "instances.json").is_file():
            write_dataset(args.out / f"data_{split}", split, 0, args.videos)

    jobs = [(v, s) for v in VARIANTS for s in args.seeds]

    def work(job: tuple[str, int]) -> dict[str, Any]:
        variant, seed = job
        ckpt = train_one(args, variant, seed)
        row = {"variant": variant, "seed": seed, "checkpoint": str(ckpt)}
        for split in ("val", "hard"):
            metrics = score(args, ckpt, split)
            row[split] = {"AP": metrics["AP"], "IDSW": metrics["IDSW"], "AR10": metrics["AR10"]}
        print(f"done: {variant} seed {seed}: {row['val']} / {row['hard']}", flush=True)
        return row

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(work, jobs))
    (args.out / "table3.json").write_text(json.dumps(rows, indent=2) + "\n")

    def stat(values: list[float], scale: float, digits: int) -> str:
        mean = statistics.mean(values) * scale
        spread = statistics.stdev(values) * scale if len(values) > 1 else 0.0
        return f"{mean:.{digits}f} ± {spread:.{digits}f}"

    print(f"\n{args.iters} iterations at lr {args.lr} from {args.init}, seeds {args.seeds}, "
          f"{args.videos} videos per split\n")  # fmt: skip
    print("| variant | val AP | val IDSW | hard AP | hard IDSW |")
    print("|---|---|---|---|---|")
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        cells = []
        for split in ("val", "hard"):
            cells.append(stat([r[split]["AP"] for r in mine], 100.0, 1))
            cells.append(stat([float(r[split]["IDSW"]) for r in mine], 1.0, 1))
        print(f"| {variant} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
