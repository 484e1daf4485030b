"""Optimiser parameter groups, gradient clipping and the LR schedule."""

from __future__ import annotations

import pytest
import torch

from model.nn.build import PRESETS, build_segmenter
from training.config import OptimConfig
from training.optim import (
    build_optimizer,
    build_scheduler,
    clip_gradients,
    lr_factor,
    param_settings,
)


def test_param_groups_follow_official_rules() -> None:
    model = build_segmenter(PRESETS["tiny"][0])
    cfg = OptimConfig()
    settings = param_settings(model, cfg)
    assert set(settings) == {n for n, p in model.named_parameters() if p.requires_grad}
    backbone = [n for n in settings if n.startswith("backbone.")]
    assert backbone and all(settings[n][0] == pytest.approx(1e-5) for n in backbone)
    head = "sem_seg_head.predictor.class_embed.weight"
    assert settings[head] == (1e-4, 0.05)
    assert settings["sem_seg_head.predictor.class_embed.bias"] == (1e-4, 0.05)  # bias decays
    for name in ("query_feat.weight", "query_embed.weight", "level_embed.weight"):
        assert settings[f"sem_seg_head.predictor.{name}"][1] == 0.0  # nn.Embedding
    assert settings["sem_seg_head.predictor.decoder_norm.weight"][1] == 0.0  # LayerNorm
    assert settings["sem_seg_head.pixel_decoder.transformer.level_embed"][1] == 0.05
    norms = [n for n in settings if ".norm." in n and "pixel_decoder" in n]
    assert norms and all(settings[n][1] == 0.0 for n in norms)  # GroupNorm
    assert any("reid_embed" in n and settings[n][0] == 1e-4 for n in settings)
    optimizer = build_optimizer(model, cfg)
    total = sum(len(g["params"]) for g in optimizer.param_groups)
    assert total == len(settings)


def test_schedule_and_clipping() -> None:
    cfg = OptimConfig(warmup_iters=10, warmup_factor=0.1, steps=(20, 30), gamma=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(5, cfg) == pytest.approx(0.55)
    assert lr_factor(19, cfg) == 1.0
    assert lr_factor(20, cfg) == pytest.approx(0.1)
    assert lr_factor(35, cfg) == pytest.approx(0.01)
    assert lr_factor(3, OptimConfig()) == 1.0  # official WARMUP_FACTOR 1.0: no warm-up
    model = torch.nn.Linear(4, 2)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    lrs = []
    for _ in range(25):
        lrs.append(optimizer.param_groups[0]["lr"])
        model(torch.randn(3, 4)).sum().mul(100).backward()
        norm = clip_gradients(optimizer, 0.01)
        after = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
        assert float(norm) > 0.01 and float(after) == pytest.approx(0.01, rel=1e-4)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-5) and lrs[24] == pytest.approx(1e-5)
