"""``train(cfg, out_dir)``: the consistent-training loop (readable, nanoGPT style, no hooks).

One iteration = ``grad_accum`` micro-batches of ``clips_per_batch`` clips per rank: forward all
frames (clip-major) with deep supervision -> set criterion -> CTCL re-id losses on the memory
bank -> weighted sum -> backward (AMP + GradScaler on CUDA) -> full-model clip -> AdamW ->
per-iteration LR schedule. Every ``checkpoint_period`` iterations (and at the end) rank 0
writes ``out/checkpoints/iter_XXXXXXX/`` with ``model.checkpoint.save_checkpoint`` (loads in
``ctvis track`` / ``ctvis serve``) plus ``train_state.pt`` (optimiser, scheduler, scaler,
iteration) and every rank its ``rng_rank{r}.pt``; ``resume=True`` continues from the newest
one and reproduces the uninterrupted run exactly. Distributed runs use ``torchrun``
(``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` from the environment; NCCL on GPU, gloo on CPU);
``training.distributed`` first checks that every rank sees the same ``OUT``. SIGTERM or SIGUSR1
(Slurm before a time limit or preemption; ``torchrun`` forwards SIGTERM to its workers) makes
all ranks finish the current iteration, write a checkpoint and return; ``TrainResult`` then
carries the signal and ``--resume`` continues from that iteration.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from model.checkpoint import load_checkpoint
from model.nn.build import build_segmenter
from model.nn.segmenter import Segmenter
from model.official.convert import convert_official
from training.config import TrainConfig
from training.consistent import consistent_reid_losses, frame_targets
from training.data.batch import Clip, ClipBatch, collate_clips
from training.distributed import Dist, StopSignals, check_shared_out_dir, setup_distributed
from training.loop_checkpoint import (
    CHECKPOINT_DIR,
    STATE_FILE,
    latest_checkpoint,
    restore_training_checkpoint,
    save_training_checkpoint,
)
from training.loop_data import build_clip_loader, data_config_at
from training.loop_eval import evaluate_segmenter, prepare_val_split
from training.loop_log import TrainLogger
from training.losses import segmentation_losses, weighted_total
from training.matcher import MatchCosts
from training.optim import build_optimizer, build_scheduler, clip_gradients

__all__ = [
    "CHECKPOINT_DIR",
    "STATE_FILE",
    "TrainResult",
    "init_segmenter",
    "latest_checkpoint",
    "train",
]


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns (rank 0 has the metrics; other ranks get the same paths).

    Attributes:
        iteration: iterations completed.
        checkpoint: newest checkpoint directory written, or None.
        losses: total loss of every iteration run by this call (this rank).
        metrics: last evaluation metrics (empty if none ran).
        model: the trained segmenter (unwrapped, on the training device).
        stop_signal: the signal (SIGTERM / SIGUSR1) that stopped the run early after
            checkpointing, or 0 when it ran to its end.
    """

    iteration: int
    checkpoint: Path | None
    losses: list[float]
    metrics: dict[str, Any]
    model: Segmenter
    stop_signal: int = 0


@dataclass(frozen=True)
class _Run:
    """The state one ``train`` call steps: weights, optimiser, schedule, AMP scaler.

    Attributes:
        model: the segmenter (unwrapped).
        wrapped: ``model`` or its DDP wrapper (what the forward pass calls).
        start: first iteration to run (restored from a checkpoint, or 0).
        checkpoint: the checkpoint restored from, or None.
    """

    model: Segmenter
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    use_amp: bool
    start: int
    checkpoint: Path | None


_Dist = Dist  # the names bench/bench_train_step.py imports
_setup_distributed = setup_distributed


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


def _to_device(batch: ClipBatch, device: torch.device) -> ClipBatch:
    return ClipBatch(
        pixels=batch.pixels.to(device, non_blocking=True),
        labels=[x.to(device) for x in batch.labels],
        ids=[x.to(device) for x in batch.ids],
        masks=[x.to(device) for x in batch.masks],
        image_sizes=batch.image_sizes,
        num_frames=batch.num_frames,
    )


def _num_masks(batch: ClipBatch, env: Dist) -> float:
    count = torch.tensor(float(sum(int((ids != -1).sum()) for ids in batch.ids)), device=env.device)
    if env.world_size > 1:
        dist.all_reduce(count)
    return max(float(count) / env.world_size, 1.0)


def compute_losses(
    model: nn.Module, batch: ClipBatch, cfg: TrainConfig, env: Dist
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


def train(
    cfg: TrainConfig, out_dir: str | Path, resume: bool = False, stop_at: int | None = None
) -> TrainResult:
    """Run consistent training; see the module docstring.

    Args:
        cfg: the experiment.
        out_dir: where ``config.json``, ``log.jsonl``, checkpoints and val data go; on a
            filesystem every rank shares (checked at start).
        resume: continue from the newest checkpoint in ``out_dir`` (fresh start if none).
        stop_at: stop after this iteration even if ``cfg.optim.max_iter`` is larger (used to
            simulate an interruption; the schedule still follows ``cfg.optim``).

    Returns:
        A ``TrainResult``.

    Raises:
        training.distributed.SharedFilesystemError: some rank cannot see ``out_dir``.
    """
    env = setup_distributed(cfg.device)
    out = Path(out_dir)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    check_shared_out_dir(out, env)
    run = _prepare_run(cfg, out, env, resume)
    end = min(cfg.optim.max_iter, stop_at) if stop_at is not None else cfg.optim.max_iter
    logger = TrainLogger(out, env.main)
    try:
        with StopSignals() as stop:
            return _loop(cfg, out, env, run, end, logger, stop)
    finally:
        logger.close()


def _prepare_run(cfg: TrainConfig, out: Path, env: Dist, resume: bool) -> _Run:
    """Build and initialise the model, optimiser, schedule and scaler; restore on resume."""
    if cfg.init.kind == "official" and env.world_size > 1:
        if env.main:  # convert once, then every rank reads the converted checkpoint
            init_segmenter(cfg, out)
        dist.barrier()
    model = init_segmenter(cfg, out, convert=env.world_size == 1).to(env.device).train()
    if not cfg.cl.enabled:
        # No loss reaches the re-id head without the contrastive loss. Frozen, it is left out
        # of the optimiser and of DDP, whose reducer would otherwise wait for its gradients
        # and fail at the second iteration (it is computed in the forward pass, so DDP's
        # find_unused_parameters would count it as used); a one-process run never updates
        # it either (no gradient, no AdamW step).
        for name, param in model.named_parameters():
            if ".reid_embed." in name:
                param.requires_grad_(False)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim)
    use_amp = cfg.optim.amp and env.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    torch.manual_seed(cfg.seed * 1000 + env.rank)
    start = 0
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        start = restore_training_checkpoint(
            ckpt, model, optimizer, scheduler, scaler, env, cfg.optim.grad_accum
        )
    wrapped: nn.Module = model
    if env.world_size > 1:
        ids = [env.device.index] if env.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return _Run(model, wrapped, optimizer, scheduler, scaler, use_amp, start, ckpt)


def _loop(
    cfg: TrainConfig,
    out: Path,
    env: Dist,
    run: _Run,
    end: int,
    logger: TrainLogger,
    stop: StopSignals,
) -> TrainResult:
    """Iterations ``run.start`` .. ``end``: step, log, checkpoint, evaluate; stop on a signal."""
    accum = max(1, cfg.optim.grad_accum)  # micro-batches per iteration = data iterations
    data_cfg = data_config_at(cfg.data, run.start)
    clips = build_clip_loader(data_cfg, cfg.seed, env.rank, env.world_size, run.start * accum)
    val = prepare_val_split(cfg.eval, out) if env.main and cfg.eval.period > 0 else None
    losses_seen: list[float] = []
    metrics: dict[str, Any] = {}
    bar = _progress(run.start, end, env.main and cfg.progress)
    tic = time.perf_counter()
    done, ckpt, signum = run.start, run.checkpoint, 0
    for iteration in range(run.start, end):
        if data_config_at(cfg.data, iteration) != data_cfg:
            # the late stage's sizes start here: the same batches as a run resumed at this
            # iteration (a batch is a function of the seed, its position and the settings)
            data_cfg = data_config_at(cfg.data, iteration)
            clips = build_clip_loader(
                data_cfg, cfg.seed, env.rank, env.world_size, iteration * accum
            )
        total, terms, lr, grad_norm = _train_step(
            run.wrapped, run.optimizer, run.scheduler, run.scaler, clips, cfg, env, run.use_amp
        )
        losses_seen.append(total)
        done = iteration + 1
        rate = (done - run.start) / max(time.perf_counter() - tic, 1e-9)
        signum = stop.agreed(env)  # collective: every rank stops at the same iteration
        if bar is not None:
            bar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.2e}", its=f"{rate:.2f}")
            bar.update(1)
        if done % max(1, cfg.log_period) == 0 or done == end or signum:
            record = {"iteration": done, "loss": total, "lr": lr, "grad_norm": grad_norm}
            logger.write({**record, **terms, "it_per_s": rate})
        if signum or done % cfg.checkpoint_period == 0 or done == end:
            ckpt = save_training_checkpoint(
                out, done, run.model, run.optimizer, run.scheduler, run.scaler, cfg, env
            )
        if signum:
            logger.write({"iteration": done, "stop_signal": signum, "checkpoint": str(ckpt)})
            break
        metrics = _maybe_evaluate(cfg, env, run.model, val, done, end, logger) or metrics
    if bar is not None:
        bar.close()
    return TrainResult(done, ckpt, losses_seen, metrics, run.model, signum)


def _maybe_evaluate(
    cfg: TrainConfig,
    env: Dist,
    model: Segmenter,
    val: Any,
    done: int,
    end: int,
    logger: TrainLogger,
) -> dict[str, Any]:
    """Rank 0 evaluates every ``eval.period`` iterations and at the end (metrics, or {});
    the other ranks wait for it at a barrier."""
    metrics: dict[str, Any] = {}
    if val is not None and (done % cfg.eval.period == 0 or done == end):
        result = evaluate_segmenter(
            model, cfg.model, cfg.preprocess, cfg.tracker, *val, cfg.eval.max_videos
        )
        metrics = result.to_dict()
        logger.write({"iteration": done, "eval": metrics})
    if env.world_size > 1 and cfg.eval.period > 0 and done % cfg.eval.period == 0:
        dist.barrier()
    return metrics


def _train_step(
    wrapped: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    clips: Iterator[list[Clip]],
    cfg: TrainConfig,
    env: Dist,
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
