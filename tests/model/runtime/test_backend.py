"""Inference backends: the PyTorch backend's precision modes and output contract."""

from __future__ import annotations

import pytest
import torch

from model.nn.build import PRESETS, build_segmenter
from model.nn.segmenter import Segmenter
from model.runtime.backend import InferenceBackend, TorchBackend, default_providers

FIELDS = ("pred_logits", "pred_masks", "pred_embeds")


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    return build_segmenter(PRESETS["tiny"][0]).eval()


def test_float32_backend_equals_plain_forward(segmenter: Segmenter) -> None:
    pixels = torch.randn(2, 3, 64, 96)
    backend: InferenceBackend = TorchBackend(segmenter)
    out = backend(pixels)
    with torch.no_grad():
        ref = segmenter(pixels)
    for name in FIELDS:
        torch.testing.assert_close(getattr(out, name), getattr(ref, name))
    assert not out.pred_logits.requires_grad


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_returns_float32(segmenter: Segmenter, dtype: str) -> None:
    pixels = torch.randn(1, 3, 64, 64)
    out = TorchBackend(segmenter, dtype=dtype, channels_last=True)(pixels)  # type: ignore[arg-type]
    with torch.no_grad():
        ref = segmenter(pixels)
    for name in FIELDS:
        got = getattr(out, name)
        assert got.dtype == torch.float32
        assert got.shape == getattr(ref, name).shape
        assert torch.isfinite(got).all()
    # Half precision is approximate; the class logits must still be close in scale.
    assert (out.pred_logits - ref.pred_logits).abs().max() < 0.5


def test_rejects_unknown_dtype(segmenter: Segmenter) -> None:
    with pytest.raises(ValueError, match="dtype"):
        TorchBackend(segmenter, dtype="int8")  # type: ignore[arg-type]


def test_default_providers_end_with_cpu() -> None:
    pytest.importorskip("onnxruntime")
    providers = default_providers()
    assert providers[-1] == "CPUExecutionProvider"
