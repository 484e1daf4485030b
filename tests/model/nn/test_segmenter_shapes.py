"""Shapes, aux outputs and backprop of the tiny preset (fast, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.nn.build import PRESETS, build_segmenter
from model.preprocess import prepare_frames


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model_cfg, pre_cfg, _ = PRESETS["tiny"]
    return build_segmenter(model_cfg).eval(), model_cfg, pre_cfg


def test_forward_shapes(tiny):
    model, cfg, _ = tiny
    pixels = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(pixels)
    q, k = cfg.num_queries, cfg.num_classes
    assert out.pred_logits.shape == (2, q, k + 1)
    assert out.pred_masks.shape == (2, q, 16, 24)
    assert out.pred_embeds.shape == (2, q, cfg.embed_dim)
    assert out.pred_queries is not None and out.pred_queries.shape == (2, q, cfg.hidden_dim)
    assert out.aux_outputs == ()
    assert all(torch.isfinite(t).all() for t in (out.pred_logits, out.pred_masks, out.pred_embeds))


def test_aux_outputs_and_intermediates(tiny):
    model, cfg, _ = tiny
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(pixels, return_aux=True)
        inter = model.forward_intermediates(pixels)
    assert len(out.aux_outputs) == cfg.decoder_layers
    for aux in out.aux_outputs:
        assert aux["pred_masks"].shape == (1, cfg.num_queries, 16, 16)
    assert torch.allclose(inter["outputs"].pred_logits, out.pred_logits)
    assert [tuple(f.shape[-2:]) for f in inter["multi_scale_features"]] == [(2, 2), (4, 4), (8, 8)]
    assert inter["mask_features"].shape == (1, cfg.mask_dim, 16, 16)
    channels = model.backbone.out_channels
    for name, stride in (("res2", 4), ("res3", 8), ("res4", 16), ("res5", 32)):
        assert inter["backbone"][name].shape == (1, channels[name], 64 // stride, 64 // stride)


def test_batch_items_are_independent(tiny):
    model, _, _ = tiny
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        together = model(pixels)
        alone = model(pixels[1:2])
    assert torch.allclose(together.pred_masks[1:2], alone.pred_masks, atol=1e-4)
    assert torch.allclose(together.pred_embeds[1:2], alone.pred_embeds, atol=1e-5)


def test_end_to_end_from_frames(tiny):
    model, cfg, pre_cfg = tiny
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 48, 80, 3), dtype=np.uint8)
    batch = prepare_frames(frames, pre_cfg)
    assert batch.image_sizes == ((64, 107), (64, 107))
    assert batch.padded_size == (64, 128)
    with torch.no_grad():
        out = model(batch.pixels)
    assert out.pred_masks.shape == (2, cfg.num_queries, 16, 32)


def test_loss_backpropagates():
    torch.manual_seed(0)
    model = build_segmenter(PRESETS["tiny"][0]).train()
    out = model(torch.randn(1, 3, 64, 64), return_aux=True)
    loss = out.pred_logits.logsumexp(-1).mean() + out.pred_masks.sigmoid().mean()
    loss = loss + out.pred_embeds.pow(2).mean() + out.aux_outputs[0]["pred_masks"].mean()
    loss.backward()
    grads = {
        "backbone": model.backbone.stem.conv1.weight.grad,
        "encoder": model.sem_seg_head.pixel_decoder.transformer.encoder.layers[
            0
        ].linear1.weight.grad,
        "decoder": model.sem_seg_head.predictor.query_feat.weight.grad,
        "reid": model.sem_seg_head.predictor.reid_embed.layers[0].weight.grad,
    }
    for name, grad in grads.items():
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name
    # FrozenBN statistics are buffers, never trained
    names = {n for n, _ in model.named_parameters()}
    assert "backbone.stem.conv1.norm.weight" not in names
