"""`load_served_model`: precision (CTVIS_DTYPE) and oneDNN linear layers (CTVIS_ONEDNN_LINEAR)."""

from __future__ import annotations

import pytest
import torch

from model.ops.onednn_linear import OneDnnLinear
from service.models import RANDOM_CHECKPOINT, load_served_model
from service.settings import Settings


def _onednn_layers(served) -> int:
    return sum(isinstance(m, OneDnnLinear) for m in served.segmenter.modules())


def test_float32_on_cpu_uses_onednn_unless_turned_off() -> None:
    on = load_served_model(RANDOM_CHECKPOINT)
    off = load_served_model(RANDOM_CHECKPOINT, onednn_linear=False)
    assert _onednn_layers(on) > 0
    assert _onednn_layers(off) == 0
    assert _onednn_layers(load_served_model(RANDOM_CHECKPOINT, dtype="bfloat16")) == 0
    # same weights (seeded tiny preset), same outputs up to float32 rounding
    pixels = torch.randn(1, 3, 256, 320)
    a, b = on.forward(pixels), off.forward(pixels)
    for name in ("pred_logits", "pred_masks", "pred_embeds"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=1e-4)


def test_bfloat16_runs_under_autocast_and_returns_float32() -> None:
    full = load_served_model(RANDOM_CHECKPOINT, onednn_linear=False)
    half = load_served_model(RANDOM_CHECKPOINT, dtype="bfloat16")
    pixels = torch.randn(1, 3, 96, 128)
    a, b = full.forward(pixels), half.forward(pixels)
    assert b.pred_masks.dtype == torch.float32 and b.pred_logits.dtype == torch.float32
    # bfloat16 compute changes the values, but not beyond its precision
    assert not torch.equal(a.pred_masks, b.pred_masks)
    torch.testing.assert_close(b.pred_logits, a.pred_logits, rtol=0.1, atol=0.5)


def test_bad_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="dtype"):
        load_served_model(RANDOM_CHECKPOINT, dtype="int8")


def test_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().onednn_linear is True
    monkeypatch.setenv("CTVIS_ONEDNN_LINEAR", "false")
    assert Settings().onednn_linear is False
