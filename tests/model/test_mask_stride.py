"""The ``mask_stride`` option: mask features at stride 2 from a light FPN level on the stem.

Not in the reference (4 for every released checkpoint). With 2 the final prediction's masks
come out at half the input resolution; the earlier predictions and the attention masks use
the 2x2 average of the same features (stride 4). These tests pin the shapes, the formulas of
both kinds of prediction, that the stem adds detail finer than stride 4, the inference
shortcut, checkpoints, the ONNX export and the errors.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model.backend import OnnxBackend, TorchBackend
from model.build import PRESETS, build_segmenter
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.transformer_decoder import fourier_position_features, mask_product

FREQS = 2


def _config(stride: int = 2, freqs: int = FREQS) -> ModelConfig:
    return dataclasses.replace(
        PRESETS["tiny"][0], num_queries=5, mask_stride=stride, mask_pos_freqs=freqs
    )


def _model(seed: int, stride: int = 2, freqs: int = FREQS) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_segmenter(_config(stride, freqs)).eval()
    last = model.sem_seg_head.predictor.mask_embed.layers[-1]
    with torch.no_grad():  # a position term that matters (it starts at zero)
        last.weight[32:].normal_(0, 0.5)
        last.bias[32:].normal_(0, 2.0)
    return model


def test_default_is_the_reference_layout() -> None:
    model = build_segmenter(PRESETS["tiny"][0])
    assert "stem" not in model.backbone.out_channels
    assert not any("adapter_0" in k for k in model.state_dict())
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 64, 96))
    assert out.pred_masks.shape[-2:] == (16, 24)


def test_shapes_and_prediction_formulas() -> None:
    model = _model(0)
    assert model.backbone.out_channels["stem"] == 16
    predictor = model.sem_seg_head.predictor
    with torch.no_grad():
        inter = model.forward_intermediates(torch.randn(2, 3, 64, 96))
    fine = inter["mask_features"]
    assert inter["backbone"]["stem"].shape[-2:] == (32, 48)
    assert fine.shape == (2, 32, 32, 48)  # stride 2, the pixel decoder's own channels
    predictions = inter["predictions"]
    assert predictions[-1]["pred_masks"].shape == (2, 5, 32, 48)
    for p in predictions[:-1]:
        assert p["pred_masks"].shape == (2, 5, 16, 24)

    def expected(pred: dict, feats: torch.Tensor) -> torch.Tensor:
        feats = torch.cat((feats, fourier_position_features(feats, FREQS)), dim=1)
        with torch.no_grad():
            embed = predictor.mask_embed(pred["pred_queries"])
        return mask_product(embed, feats)

    final = predictions[-1]
    torch.testing.assert_close(final["pred_masks"], expected(final, fine), atol=1e-4, rtol=1e-4)
    coarse = F.avg_pool2d(fine, 2)
    for p in predictions[:-1]:
        torch.testing.assert_close(p["pred_masks"], expected(p, coarse), atol=1e-4, rtol=1e-4)


def test_stem_adds_detail_finer_than_stride_4() -> None:
    model = _model(1)
    pixels = torch.randn(1, 3, 64, 96)

    def block_spread(m: torch.nn.Module) -> float:
        with torch.no_grad():
            fine = m.forward_intermediates(pixels)["mask_features"]
        blocks = F.pixel_unshuffle(fine, 2).unflatten(1, (fine.shape[1], 4))
        return float((blocks.amax(2) - blocks.amin(2)).abs().max())

    assert block_spread(model) > 1e-2
    with torch.no_grad():  # without the stem's contribution each 2x2 block is constant
        model.sem_seg_head.pixel_decoder.adapter_0.weight.zero_()
    assert block_spread(model) < 1e-6


def test_inference_shortcut_matches_deep_supervision_path() -> None:
    model = _model(2)
    pixels = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        full = model(pixels, return_aux=True)
        fast = model(pixels)
    for name in ("pred_logits", "pred_masks", "pred_embeds"):
        torch.testing.assert_close(
            getattr(fast, name), getattr(full, name), atol=1e-4, rtol=1e-4, msg=name
        )


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = _model(3)
    _, preprocess, tracker = PRESETS["tiny"]
    save_checkpoint(tmp_path / "ckpt", model, _config(), preprocess, tracker)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.model_cfg.mask_stride == 2
    pixels = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = model(pixels), loaded.segmenter(pixels)
    torch.testing.assert_close(b.pred_masks, a.pred_masks)


def test_onnx_export_keeps_the_fine_masks(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from model.export_onnx import export_onnx

    model = _model(4)
    backend = OnnxBackend(export_onnx(model, tmp_path / "s2.onnx", 64, 96), num_threads=2)
    for shape in [(1, 3, 64, 96), (2, 3, 96, 64)]:
        pixels = torch.randn(*shape)
        expected, got = TorchBackend(model)(pixels), backend(pixels)
        assert got.pred_masks.shape[-2:] == (shape[2] // 2, shape[3] // 2)
        torch.testing.assert_close(got.pred_masks, expected.pred_masks, atol=1e-3, rtol=1e-3)


def test_bad_strides_are_refused() -> None:
    with pytest.raises(ValueError, match="mask_stride"):
        build_segmenter(_config(stride=3))
    swin = dataclasses.replace(PRESETS["ytvis19_swinl"][0], mask_stride=2)
    with pytest.raises(ValueError, match="stem"):
        build_segmenter(swin)
