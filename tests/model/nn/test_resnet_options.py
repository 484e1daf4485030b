"""ResNet trunk options: ``norm`` (FrozenBN or GN) and ``stage_blocks``."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig, ResNetConfig, from_dict, to_dict
from model.nn.backbone.resnet import BottleneckBlock, FrozenBatchNorm2d, ResNet
from model.nn.build import PRESETS, build_segmenter


def _tiny_gn() -> ModelConfig:
    model_cfg = PRESETS["tiny"][0]
    return dataclasses.replace(model_cfg, resnet=dataclasses.replace(model_cfg.resnet, norm="GN"))


def test_gn_trunk_uses_trainable_group_norm_everywhere():
    trunk = ResNet(ResNetConfig(stem_out_channels=16, res2_out_channels=32, width_per_group=8,
                                norm="GN"))  # fmt: skip
    norms = [m for m in trunk.modules() if isinstance(m, (nn.GroupNorm, FrozenBatchNorm2d))]
    assert norms and all(isinstance(m, nn.GroupNorm) for m in norms)
    assert all(m.weight.requires_grad for m in norms)
    # 16 channels: 16 groups (gcd with 32), never more groups than channels
    assert trunk.stem.conv1.norm.num_groups == 16


def test_gn_block_starts_as_its_shortcut():
    torch.manual_seed(0)
    block = BottleneckBlock(32, 32, 8, norm="GN")
    x = torch.randn(2, 32, 8, 8)
    assert torch.equal(block(x), torch.relu(x))
    block.conv3.norm.weight.data.fill_(1.0)
    assert not torch.allclose(block(x), torch.relu(x))


def test_gn_trunk_normalises_deep_activations():
    """Without normalisation the 16 residual blocks blow activations up; GN keeps them O(1)."""
    torch.manual_seed(0)
    cfg = ResNetConfig(stem_out_channels=16, res2_out_channels=32, width_per_group=8)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        frozen = ResNet(cfg)(x)["res5"].std()
        for module in (gn := ResNet(dataclasses.replace(cfg, norm="GN"))).modules():
            if isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
        grouped = gn(x)["res5"].std()
    assert grouped < 10 and frozen > 10 * grouped


def test_unknown_norm_is_rejected():
    with pytest.raises(ValueError, match="unknown ResNet norm"):
        ResNet(ResNetConfig(norm="BN"))  # type: ignore[arg-type]


def test_gn_checkpoint_round_trip(tmp_path):
    torch.manual_seed(3)
    model_cfg = _tiny_gn()
    _, pre_cfg, trk_cfg = PRESETS["tiny"]
    model = build_segmenter(model_cfg).eval()
    for module in model.modules():  # leave the zero init so that the test can see the trunk
        if isinstance(module, nn.GroupNorm):
            nn.init.normal_(module.weight, 1.0, 0.1)
    save_checkpoint(tmp_path / "gn", model, model_cfg, pre_cfg, trk_cfg)
    loaded = load_checkpoint(tmp_path / "gn")
    assert loaded.model_cfg.resnet.norm == "GN"
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(pixels), loaded.segmenter(pixels)
    assert torch.equal(a.pred_masks, b.pred_masks) and torch.equal(a.pred_logits, b.pred_logits)


def test_configs_written_before_the_option_load_as_frozen_bn():
    data = to_dict(PRESETS["tiny"][0])
    del data["resnet"]["norm"]
    assert from_dict(ModelConfig, data).resnet.norm == "FrozenBN"


def test_stage_blocks_override_the_depth():
    cfg = ResNetConfig(stem_out_channels=16, res2_out_channels=32, width_per_group=8,
                       stage_blocks=(1, 2, 1, 1))  # fmt: skip
    trunk = ResNet(cfg)
    assert [len(getattr(trunk, f"res{i}")) for i in range(2, 6)] == [1, 2, 1, 1]
    out = trunk(torch.randn(1, 3, 64, 64))
    assert out["res5"].shape == (1, 256, 2, 2)
    assert [len(getattr(ResNet(dataclasses.replace(cfg, stage_blocks=())), f"res{i}"))
            for i in range(2, 6)] == [3, 4, 6, 3]  # fmt: skip
    with pytest.raises(ValueError, match="stage_blocks"):
        ResNet(dataclasses.replace(cfg, stage_blocks=(1, 1, 0, 1)))
