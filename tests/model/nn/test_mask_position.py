"""The ``mask_pos_freqs`` option: Fourier position features appended to the mask features.

Not in the reference (0 for every released checkpoint). With it, a query's mask logit is
``embed . features + coef . position``; these tests pin that formula, the zero start, the
inference shortcut and the ONNX export.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from model.config import ModelConfig
from model.nn.build import PRESETS, build_segmenter
from model.nn.transformer_decoder import fourier_position_features
from model.runtime.backend import OnnxBackend, TorchBackend

FREQS = 3


def _config(freqs: int) -> ModelConfig:
    # the tiny preset with a mask width that tells the two parts of the head apart
    return dataclasses.replace(PRESETS["tiny"][0], mask_dim=16, num_queries=5, mask_pos_freqs=freqs)


def test_fourier_features_values() -> None:
    pos = fourier_position_features(torch.zeros(2, 7, 4, 8), FREQS)
    assert pos.shape == (2, 4 * FREQS, 4, 8)
    y, x = 1, 5
    u, v = (y + 0.5) / 4, (x + 0.5) / 8
    for k in range(1, FREQS + 1):
        f = k - 1
        expected = [
            math.sin(math.pi * k * u),
            math.cos(math.pi * k * u),
            math.sin(math.pi * k * v),
            math.cos(math.pi * k * v),
        ]
        got = [pos[1, f + i * FREQS, y, x].item() for i in range(4)]
        assert got == pytest.approx(expected, abs=1e-6)
    # the y-part is constant along x and the x-part along y
    assert torch.equal(pos[0, :FREQS, :, :1].expand(-1, -1, 8), pos[0, :FREQS])
    assert torch.equal(pos[0, 2 * FREQS :, :1].expand(-1, 4, -1), pos[0, 2 * FREQS :])


def test_new_head_starts_as_the_reference_head() -> None:
    torch.manual_seed(0)
    plain = build_segmenter(_config(0)).eval()
    torch.manual_seed(0)
    with_pos = build_segmenter(_config(FREQS)).eval()
    last = with_pos.sem_seg_head.predictor.mask_embed.layers[-1]
    assert last.weight.shape[0] == 16 + 4 * FREQS
    assert not last.weight[16:].any() and not last.bias[16:].any()
    # same weights everywhere else: the outputs are the reference head's
    state = with_pos.state_dict()
    for name in ("weight", "bias"):
        key = f"sem_seg_head.predictor.mask_embed.layers.2.{name}"
        state[key] = state[key][:16]
    plain.load_state_dict(state, strict=True)
    pixels = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = plain(pixels), with_pos(pixels)
    torch.testing.assert_close(b.pred_masks, a.pred_masks, atol=1e-5, rtol=1e-5)


def _with_position_weights(model: torch.nn.Module) -> torch.nn.Module:
    last = model.sem_seg_head.predictor.mask_embed.layers[-1]
    with torch.no_grad():
        last.weight[16:].normal_(0, 0.5)
        last.bias[16:].normal_(0, 2.0)
    return model


def test_position_term_is_added_to_the_mask_logits() -> None:
    torch.manual_seed(1)
    model = _with_position_weights(build_segmenter(_config(FREQS))).eval()
    with torch.no_grad():
        inter = model.forward_intermediates(torch.randn(2, 3, 64, 96))
        feats = inter["mask_features"]
        out = inter["outputs"]
        embed = model.sem_seg_head.predictor.mask_embed(out.pred_queries)
    assert feats.shape[1] == 16  # the pixel decoder's features: position is the head's
    pos = fourier_position_features(feats, FREQS)
    term = torch.einsum("bqc,bchw->bqhw", embed[..., 16:], pos)
    expected = torch.einsum("bqc,bchw->bqhw", embed[..., :16], feats) + term
    torch.testing.assert_close(out.pred_masks, expected, atol=1e-4, rtol=1e-4)
    # position now matters: the term alone is far from constant over the map
    assert (term.amax((2, 3)) - term.amin((2, 3))).min() > 0.5


def test_inference_shortcut_matches_deep_supervision_path() -> None:
    torch.manual_seed(2)
    model = _with_position_weights(build_segmenter(_config(FREQS))).eval()
    pixels = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        full = model(pixels, return_aux=True)
        fast = model(pixels)
    for name in ("pred_logits", "pred_masks", "pred_embeds"):
        torch.testing.assert_close(
            getattr(fast, name), getattr(full, name), atol=1e-4, rtol=1e-4, msg=name
        )


def test_onnx_export_keeps_the_position_term(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from model.runtime.export_onnx import export_onnx

    torch.manual_seed(3)
    model = _with_position_weights(build_segmenter(_config(FREQS))).eval()
    backend = OnnxBackend(export_onnx(model, tmp_path / "pos.onnx", 64, 96), num_threads=2)
    for shape in [(1, 3, 64, 96), (2, 3, 96, 64)]:
        pixels = torch.randn(*shape)
        expected, got = TorchBackend(model)(pixels), backend(pixels)
        torch.testing.assert_close(got.pred_masks, expected.pred_masks, atol=1e-3, rtol=1e-3)
