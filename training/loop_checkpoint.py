"""Training checkpoints: ``OUT/checkpoints/iter_XXXXXXX/`` and exact resume.

A checkpoint directory is a normal model checkpoint (``model.checkpoint.save_checkpoint``:
``model.safetensors`` + ``config.json``, loadable by ``ctvis track`` / ``ctvis serve``) plus
``rng_rank{r}.pt`` (every rank's torch RNG state) and ``train_state.pt`` (optimiser, scheduler,
GradScaler, iteration, data position, world size), written last, so that only complete
checkpoints are resumed from. Restoring all of it reproduces the uninterrupted run bit for bit
on CPU, because the batch of an iteration is a function of the seed and its position
(``training.loop_data``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from model.checkpoint import save_checkpoint
from model.files import atomic_path
from training.config import TrainConfig
from training.distributed import Dist

__all__ = [
    "CHECKPOINT_DIR",
    "STATE_FILE",
    "latest_checkpoint",
    "restore_training_checkpoint",
    "save_training_checkpoint",
]

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "train_state.pt"


def latest_checkpoint(out_dir: Path) -> Path | None:
    """Newest ``iter_*`` directory holding a training state, or None."""
    root = out_dir / CHECKPOINT_DIR
    done = sorted(p for p in root.glob("iter_*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_training_checkpoint(
    out: Path,
    iteration: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    env: Dist,
) -> Path:
    """Write the checkpoint of ``iteration`` (rank 0: weights + state; all ranks: RNG)."""
    path = out / CHECKPOINT_DIR / f"iter_{iteration:07d}"
    if env.main:
        provenance = {"trainer": "training.loop.train", "iteration": iteration,
                      "train_config": cfg.to_dict()}  # fmt: skip
        save_checkpoint(path, model, cfg.model, cfg.preprocess, cfg.tracker, provenance)
    if env.world_size > 1:
        dist.barrier()
    torch.save(_rng_state(env.device), path / f"rng_rank{env.rank}.pt")
    if env.world_size > 1:
        dist.barrier()
    if env.main:
        state = {
            "iteration": iteration,
            "data_position": iteration * max(1, cfg.optim.grad_accum),  # micro-batches read
            "world_size": env.world_size,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
        }
        with atomic_path(path / STATE_FILE) as tmp:  # written last: marks it complete
            torch.save(state, tmp)
    if env.world_size > 1:
        dist.barrier()
    return path


def restore_training_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    env: Dist,
    accum: int,
) -> int:
    """Load weights, optimiser, scheduler, scaler and this rank's RNG; returns the iteration."""
    from safetensors.torch import load_file

    weights = load_file(str(path / "model.safetensors"), device=str(env.device))
    model.load_state_dict(weights, strict=True)
    state = torch.load(path / STATE_FILE, map_location=env.device, weights_only=True)
    if int(state["world_size"]) != env.world_size:
        raise ValueError(
            f"{path} was written by {state['world_size']} ranks; resuming with "
            f"{env.world_size} would change the data order"
        )
    if int(state["data_position"]) != int(state["iteration"]) * max(1, accum):
        raise ValueError(f"{path} was written with another optim.grad_accum")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rng = torch.load(path / f"rng_rank{env.rank}.pt", map_location="cpu", weights_only=True)
    _set_rng_state(rng, env.device)
    return int(state["iteration"])
