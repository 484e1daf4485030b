"""``train(cfg, out_dir)``: the consistent-training loop (readable, nanoGPT style, no hooks).

One iteration = ``grad_accum`` micro-batches of ``clips_per_batch`` clips per rank: forward all
frames (clip-major) with deep supervision -> set criterion -> CTCL re-id losses on the memory
bank -> weighted sum -> backward (AMP + GradScaler on CUDA) -> full-model clip -> AdamW ->
per-iteration LR schedule. Every ``checkpoint_period`` iterations (and at the end) rank 0
writes ``out/checkpoints/iter_XXXXXXX/`` with ``model.checkpoint.save_checkpoint`` (loads in
``ctvis track`` / ``ctvis serve``) plus ``train_state.pt`` (optimiser, scheduler, scaler,
iteration) and every rank its ``rng_rank{r}.pt``; ``resume=True`` continues from the newest
one and reproduces the uninterrupted run exactly. Distributed runs use ``torchrun``
(``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` from the environment; NCCL on GPU, gloo on CPU).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from model.build import build_segmenter
from model.checkpoint import convert_official, load_checkpoint, save_checkpoint
from model.segmenter import Segmenter
from training.config import TrainConfig
from training.consistent import consistent_reid_losses, frame_targets
from training.data.batch import Clip, ClipBatch, collate_clips
from training.loop_data import build_clip_loader, data_config_at
from training.loop_eval import evaluate_segmenter, prepare_val_split
from training.losses import segmentation_losses, weighted_total
from training.matcher import MatchCosts
from training.optim import build_optimizer, build_scheduler, clip_gradients

__all__ = ["TrainResult", "init_segmenter", "latest_checkpoint", "train"]

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "train_state.pt"
LOG_FILE = "log.jsonl"


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns (rank 0 has the metrics; other ranks get the same paths).

    Attributes:
        iteration: iterations completed.
        checkpoint: newest checkpoint directory written, or None.
        losses: total loss of every iteration run by this call (this rank).
        metrics: last evaluation metrics (empty if none ran).
        model: the trained segmenter (unwrapped, on the training device).
    """

    iteration: int
    checkpoint: Path | None
    losses: list[float]
    metrics: dict[str, Any]
    model: Segmenter


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(requested: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and requested != "cpu"
    if world <= 1:
        device = torch.device(requested or ("cuda" if cuda else "cpu"))
        return _Dist(device=device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        # long timeout: rank 0 evaluates while the others wait at a barrier
        timeout = datetime.timedelta(hours=2)
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", timeout=timeout)
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    return _Dist(dist.get_rank(), dist.get_world_size(), device)


def _load_matching(model: nn.Module, weights: dict[str, torch.Tensor]) -> list[str]:
    """Copy tensors with equal names and shapes; class/query heads may differ. Returns skipped."""
    own = model.state_dict()
    lenient = ("class_embed.", "predictor.query_feat.", "predictor.query_embed.")
    skipped = []
    for key, target in own.items():
        value = weights.get(key)
        if value is not None and tuple(value.shape) == tuple(target.shape):
            with torch.no_grad():
                target.copy_(value.to(target.dtype))
        elif any(s in key for s in lenient):
            skipped.append(key)
        else:
            raise ValueError(f"init weights lack {key} or have another shape")
    return skipped


def init_segmenter(cfg: TrainConfig, work_dir: Path, convert: bool = True) -> Segmenter:
    """Build the segmenter from ``cfg.model`` and initialise it per ``cfg.init`` (seeded).

    Args:
        cfg: model and init settings.
        work_dir: ``official`` weights are converted into ``work_dir/init_converted``.
        convert: do the conversion here (False: another rank did it already).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_segmenter(cfg.model)
    if cfg.init.kind == "scratch":
        return model
    path = Path(cfg.init.path)
    if cfg.init.kind == "official":
        path = work_dir / "init_converted"
        if convert:
            convert_official(cfg.init.path, cfg.init.config, path)
    loaded = load_checkpoint(path)
    _load_matching(model, loaded.segmenter.state_dict())
    return model


def latest_checkpoint(out_dir: Path) -> Path | None:
    """Newest ``iter_*`` directory holding a training state, or None."""
    root = out_dir / CHECKPOINT_DIR
    done = sorted(p for p in root.glob("iter_*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def _to_device(batch: ClipBatch, device: torch.device) -> ClipBatch:
    return ClipBatch(
        pixels=batch.pixels.to(device, non_blocking=True),
        labels=[x.to(device) for x in batch.labels],
        ids=[x.to(device) for x in batch.ids],
        masks=[x.to(device) for x in batch.masks],
        image_sizes=batch.image_sizes,
        num_frames=batch.num_frames,
    )


def _num_masks(batch: ClipBatch, env: _Dist) -> float:
    count = torch.tensor(float(sum(int((ids != -1).sum()) for ids in batch.ids)), device=env.device)
    if env.world_size > 1:
        dist.all_reduce(count)
    return max(float(count) / env.world_size, 1.0)


def compute_losses(
    model: nn.Module, batch: ClipBatch, cfg: TrainConfig, env: _Dist
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total loss and the unweighted terms of one micro-batch (already on device)."""
    lc = cfg.loss
    costs = MatchCosts(lc.class_weight, lc.mask_weight, lc.dice_weight, lc.num_points)
    outputs = model(batch.pixels, return_aux=lc.deep_supervision)
    final = {"pred_logits": outputs.pred_logits, "pred_masks": outputs.pred_masks}
    predictions = [final, *outputs.aux_outputs]
    targets, target_slots = frame_targets(batch)
    losses, indices = segmentation_losses(
        predictions,
        targets,
        _num_masks(batch, env),
        costs,
        lc.no_object_weight,
        lc.oversample_ratio,
        lc.importance_sample_ratio,
    )
    weights = {"loss_ce": lc.class_weight, "loss_mask": lc.mask_weight, "loss_dice": lc.dice_weight}
    if cfg.cl.enabled:
        losses.update(consistent_reid_losses(outputs, batch, indices, target_slots, cfg.cl, costs))
        weights.update(loss_reid=lc.reid_weight, loss_aux_reid=lc.aux_reid_weight)
    return weighted_total(losses, weights), losses


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested record as ``a/b/c`` keys (e.g. ``eval/AP``)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


class _Logger:
    """JSONL log (+ TensorBoard when the package is importable), rank 0 only."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / LOG_FILE
        self.tb: Any = None
        if enabled and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = int(record["iteration"])
            for key, value in _flatten(record).items():
                if key != "iteration":
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(
    cfg: TrainConfig, out_dir: str | Path, resume: bool = False, stop_at: int | None = None
) -> TrainResult:
    """Run consistent training; see the module docstring.

    Args:
        cfg: the experiment.
        out_dir: where ``config.json``, ``log.jsonl``, checkpoints and val data go.
        resume: continue from the newest checkpoint in ``out_dir`` (fresh start if none).
        stop_at: stop after this iteration even if ``cfg.optim.max_iter`` is larger (used to
            simulate an interruption; the schedule still follows ``cfg.optim``).

    Returns:
        A ``TrainResult``.
    """
    env = _setup_distributed(cfg.device)
    out = Path(out_dir)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    if cfg.init.kind == "official" and env.world_size > 1:
        if env.main:  # convert once, then every rank reads the converted checkpoint
            init_segmenter(cfg, out)
        dist.barrier()
    model = init_segmenter(cfg, out, convert=env.world_size == 1).to(env.device).train()
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim)
    use_amp = cfg.optim.amp and env.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    torch.manual_seed(cfg.seed * 1000 + env.rank)
    start = 0
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        start = _restore(ckpt, model, optimizer, scheduler, scaler, env, cfg.optim.grad_accum)
    wrapped: nn.Module = model
    if env.world_size > 1:
        ids = [env.device.index] if env.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    accum = max(1, cfg.optim.grad_accum)  # micro-batches per iteration = data iterations
    data_cfg = data_config_at(cfg.data, start)
    clips = build_clip_loader(data_cfg, cfg.seed, env.rank, env.world_size, start * accum)
    logger = _Logger(out, env.main)
    end = min(cfg.optim.max_iter, stop_at) if stop_at is not None else cfg.optim.max_iter
    val = prepare_val_split(cfg.eval, out) if env.main and cfg.eval.period > 0 else None
    losses_seen: list[float] = []
    metrics: dict[str, Any] = {}
    bar = _progress(start, end, env.main and cfg.progress)
    tic = time.perf_counter()
    done = start
    for iteration in range(start, end):
        if data_config_at(cfg.data, iteration) != data_cfg:
            # the late stage's sizes start here: the same batches as a run resumed at this
            # iteration (a batch is a function of the seed, its position and the settings)
            data_cfg = data_config_at(cfg.data, iteration)
            clips = build_clip_loader(
                data_cfg, cfg.seed, env.rank, env.world_size, iteration * accum
            )
        total, terms, lr, grad_norm = _train_step(
            wrapped, optimizer, scheduler, scaler, clips, cfg, env, use_amp
        )
        losses_seen.append(total)
        done = iteration + 1
        rate = (done - start) / max(time.perf_counter() - tic, 1e-9)
        if bar is not None:
            bar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.2e}", its=f"{rate:.2f}")
            bar.update(1)
        if done % max(1, cfg.log_period) == 0 or done == end:
            record = {"iteration": done, "loss": total, "lr": lr, "grad_norm": grad_norm}
            logger.write({**record, **terms, "it_per_s": rate})
        if done % cfg.checkpoint_period == 0 or done == end:
            ckpt = _save(out, done, model, optimizer, scheduler, scaler, cfg, env)
        if val is not None and (done % cfg.eval.period == 0 or done == end):
            result = evaluate_segmenter(
                model, cfg.model, cfg.preprocess, cfg.tracker, *val, cfg.eval.max_videos
            )
            metrics = result.to_dict()
            logger.write({"iteration": done, "eval": metrics})
        if env.world_size > 1 and cfg.eval.period > 0 and done % cfg.eval.period == 0:
            dist.barrier()
    if bar is not None:
        bar.close()
    logger.close()
    return TrainResult(done, ckpt, losses_seen, metrics, model)


def _train_step(
    wrapped: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    clips: Iterator[list[Clip]],
    cfg: TrainConfig,
    env: _Dist,
    use_amp: bool,
) -> tuple[float, dict[str, float], float, float]:
    """One optimiser step over ``grad_accum`` micro-batches.

    Returns:
        (weighted total loss, unweighted terms (micro-batch means), lr used, grad norm).
    """
    accum = max(1, cfg.optim.grad_accum)
    total, terms = 0.0, dict[str, float]()
    for micro in range(accum):
        batch = _to_device(collate_clips(next(clips), cfg.preprocess), env.device)
        sync = micro == accum - 1 or env.world_size == 1
        # DDP all-reduces gradients only on the last micro-batch
        ctx = contextlib.nullcontext() if sync else wrapped.no_sync()  # type: ignore[operator]
        with ctx:
            with torch.autocast("cuda", torch.float16, enabled=use_amp):
                loss, parts = compute_losses(wrapped, batch, cfg, env)
            scaler.scale(loss / accum).backward()
        total += float(loss.detach()) / accum
        for k, v in parts.items():
            terms[k] = terms.get(k, 0.0) + float(v.detach()) / accum
    scaler.unscale_(optimizer)  # clip the true gradients (detectron2 AMP trainer)
    grad_norm = clip_gradients(optimizer, cfg.optim.clip_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    lr = float(optimizer.param_groups[0]["lr"])
    with warnings.catch_warnings():
        # With AMP the scaler skips the optimiser step when gradients overflowed (the first
        # iterations, while it finds its scale); the schedule still counts iterations, as in
        # detectron2's AMP trainer, so torch's "scheduler before optimizer" notice is expected.
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        scheduler.step()
    return total, terms, lr, float(grad_norm)


def _progress(start: int, end: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=end, initial=start, desc="train", unit="it", dynamic_ncols=True)


def _save(
    out: Path,
    iteration: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    env: _Dist,
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
        tmp = path / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path / STATE_FILE)  # written last: marks the checkpoint complete
    if env.world_size > 1:
        dist.barrier()
    return path


def _restore(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    env: _Dist,
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
