"""Train only the re-id head on cached query features, one contrastive recipe at a time.

The head is the segmenter's own (``model.nn.heads.build_reid_head``: a 3-layer MLP on the
decoder's query features), initialised afresh from the training seed. Each step draws clips
(:mod:`training.reid_study.clips`), embeds their cached query features and builds the
contrastive items with the training code itself, ``training.consistent.clip_items`` (or
``training.multi_ref.multi_ref_items`` for ``cl.plugin: multi_ref``) under the named recipe's
switches (``training.cl_recipes``), on the cached ground-truth assignment; the loss is
``training.losses.reid_losses`` weighted as the trainer weights it (``loss.reid_weight`` 2,
``loss.aux_reid_weight`` 3). The recipes' ``cl_match`` switch has no effect here: every recipe
uses the cached assignment (the segmenter is frozen, so there is nothing to re-match).

Pairing: the clip sampler's ``numpy`` generator and the head's initialisation both come
from the seed alone, so one seed gives every recipe the same clips and the same initial
head; only the recipes' own random draws (noise, MA-vs-raw positives) differ.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.cl_recipes import recipe_switches
from training.config import ClConfig, LossConfig
from training.consistent import clip_items
from training.losses import ContrastiveItem, reid_losses
from training.multi_ref import multi_ref_items
from training.reid_study.cache import VideoCache
from training.reid_study.clips import CLIP_FRAMES, sample_step

__all__ = ["HeadTraining", "load_heads", "new_head", "save_heads", "train_head"]


@dataclass(frozen=True)
class HeadTraining:
    """Settings of one head's training (the same for every recipe and seed of a study).

    Attributes:
        steps: optimiser steps.
        clips: clips per step.
        lr: AdamW learning rate (divided by 10 for the last ``1 - decay_at`` of the steps).
        decay_at: fraction of the steps after which the learning rate drops.
        weight_decay: AdamW weight decay (the demo recipe's 0.05).
        clip_norm: gradient norm clip (the demo recipe's 1.0).
        min_frames, max_frames: clip length T range.
        head_layers: re-id MLP layers (the demo model's 3).
    """

    steps: int = 600
    clips: int = 8
    lr: float = 1e-3
    decay_at: float = 0.8
    weight_decay: float = 0.05
    clip_norm: float = 1.0
    min_frames: int = CLIP_FRAMES[0]
    max_frames: int = CLIP_FRAMES[1]
    head_layers: int = 3


def new_head(dim: int, layers: int, seed: int) -> nn.Module:
    """A freshly initialised re-id head (``build_reid_head``) from ``seed``."""
    from model.nn.heads import build_reid_head

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_reid_head(dim, dim, layers)


def _items(
    head: nn.Module,
    caches: Sequence[VideoCache],
    batch: Sequence[tuple[int, np.ndarray]],
    cfg: ClConfig,
) -> tuple[list[ContrastiveItem], torch.Tensor]:
    """Contrastive items of one step's clips, and one embedding tensor (the loss fallback)."""
    build = multi_ref_items if cfg.plugin == "multi_ref" else clip_items
    items: list[ContrastiveItem] = []
    embeds = torch.zeros(0)
    for v, frames in batch:
        cache = caches[v]
        index = torch.from_numpy(frames)
        embeds = head(cache.feats[index])
        items += build(embeds, cache.slot2query[index], cache.valid[index], cfg)
    return items, embeds


def train_head(
    caches: Sequence[VideoCache],
    recipe: str,
    seed: int,
    settings: HeadTraining,
    on_step: Callable[[int, nn.Module, float], None] | None = None,
) -> nn.Module:
    """Train one head with ``recipe``'s contrastive items; returns it in eval mode.

    Args:
        caches: training videos.
        recipe: a ``cl.recipe`` name (``training.cl_recipes.CL_RECIPES``).
        seed: clip sampling, head initialisation and the recipe's random draws.
        settings: optimisation settings.
        on_step: called as ``on_step(steps_done, head, loss)`` after every step.
    """
    cfg = ClConfig(recipe=recipe, **recipe_switches(recipe))  # type: ignore[arg-type]
    weights = LossConfig()
    head = new_head(caches[0].feats.shape[-1], settings.head_layers, seed).train()
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    decay = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[int(settings.steps * settings.decay_at)], gamma=0.1
    )
    rng = np.random.default_rng(seed)
    lengths = (settings.min_frames, settings.max_frames)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(settings.steps):
            batch = sample_step(rng, caches, settings.clips, lengths)
            items, embeds = _items(head, caches, batch, cfg)
            terms = reid_losses(items, embeds)
            loss = (
                weights.reid_weight * terms["loss_reid"]
                + weights.aux_reid_weight * terms["loss_aux_reid"]
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(head.parameters(), settings.clip_norm)
            opt.step()
            decay.step()
            if on_step is not None:
                on_step(step + 1, head, float(loss.detach()))
    return head.eval()


def save_heads(
    path: str | Path, heads: Mapping[str, nn.Module], meta: Mapping[str, object]
) -> None:
    """All heads in one safetensors file: ``<name>.<parameter>`` keys, ``meta`` as JSON."""
    tensors = {
        f"{name}.{key}": value.detach().contiguous()
        for name, head in heads.items()
        for key, value in head.state_dict().items()
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"meta": json.dumps(meta, sort_keys=True)})


def load_heads(path: str | Path, dim: int, layers: int) -> tuple[dict[str, nn.Module], dict]:
    """Read :func:`save_heads`' file: (heads by name, in eval mode; meta)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("meta", "{}"))
    tensors = load_file(str(path))
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, param = key.partition(".layers.")
        grouped.setdefault(name, {})[f"layers.{param}"] = value
    heads = {}
    for name, state in grouped.items():
        head = new_head(dim, layers, 0)
        head.load_state_dict(state)
        heads[name] = head.eval()
    return heads, meta


def settings_dict(settings: HeadTraining) -> dict[str, object]:
    """The settings as a JSON-able dict (stored with the heads)."""
    return asdict(settings)
