"""`load_served_model`: precision (CTVIS_DTYPE) and oneDNN linear layers (CTVIS_ONEDNN_LINEAR)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from model.nn.ops import onednn_linear
from model.nn.ops.onednn_linear import OneDnnLinear
from service.served import RANDOM_CHECKPOINT, load_served_model
from service.settings import Settings


def _onednn_layers(served) -> int:
    return sum(isinstance(m, OneDnnLinear) for m in served.segmenter.modules())


def test_float32_on_cpu_uses_onednn_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onednn_linear, "preferred", lambda: True)
    on = load_served_model(RANDOM_CHECKPOINT, onednn_linear=True)
    off = load_served_model(RANDOM_CHECKPOINT, onednn_linear=False)
    assert _onednn_layers(on) > 0
    assert _onednn_layers(off) == 0
    assert on.describe()["linear_kernel"] == "onednn"
    assert off.describe()["linear_kernel"] == "default"
    assert on.describe()["dtype"] == "float32"
    half = load_served_model(RANDOM_CHECKPOINT, dtype="bfloat16")  # float32 only
    assert _onednn_layers(half) == 0
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


@pytest.mark.parametrize("preferred", [True, False])
def test_default_follows_the_cpu_rule(preferred: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onednn_linear, "preferred", lambda: preferred)
    assert (_onednn_layers(load_served_model(RANDOM_CHECKPOINT)) > 0) is preferred


@pytest.mark.parametrize(
    ("value", "setting", "choice"),
    [
        (None, "auto", None),
        ("auto", "auto", None),
        ("on", "on", True),
        ("true", "on", True),
        ("TRUE", "on", True),
        ("1", "on", True),
        ("off", "off", False),
        ("false", "off", False),
        ("no", "off", False),
    ],
)
def test_setting_reads_the_environment(
    value: str | None, setting: str, choice: bool | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("CTVIS_ONEDNN_LINEAR", raising=False)
    else:
        monkeypatch.setenv("CTVIS_ONEDNN_LINEAR", value)
    settings = Settings()
    assert settings.onednn_linear == setting
    assert settings.onednn_linear_choice is choice


def test_bad_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTVIS_ONEDNN_LINEAR", "sometimes")
    with pytest.raises(ValidationError, match="onednn_linear"):
        Settings()


def test_serve_and_worker_load_with_the_model_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.served import load_served_model_for

    monkeypatch.setenv("CTVIS_CHECKPOINT", RANDOM_CHECKPOINT)
    monkeypatch.setenv("CTVIS_DTYPE", "bfloat16")
    half = load_served_model_for(Settings())
    assert half.describe()["dtype"] == "bfloat16" and _onednn_layers(half) == 0
    monkeypatch.setenv("CTVIS_DTYPE", "float32")
    monkeypatch.setenv("CTVIS_ONEDNN_LINEAR", "on")
    on = load_served_model_for(Settings())
    assert on.describe()["dtype"] == "float32" and _onednn_layers(on) > 0
    monkeypatch.setenv("CTVIS_ONEDNN_LINEAR", "off")
    assert _onednn_layers(load_served_model_for(Settings())) == 0
