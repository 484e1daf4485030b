"""TrainConfig loading: presets, YAML/TOML, typed overrides and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import ConfigError, TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


def test_every_shipped_config_loads() -> None:
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert {"ytvis19_r50.yaml", "ovis_swinl.yaml", "synth_tiny.yaml"} <= set(names)
    for path in CONFIGS.glob("*.yaml"):
        cfg = load_config(path)
        assert isinstance(cfg, TrainConfig)


def test_official_settings() -> None:
    cfg = load_config(CONFIGS / "ytvis19_swinl.yaml")
    assert cfg.model.backbone == "swin" and cfg.model.num_queries == 200
    assert (cfg.data.clip_frames, cfg.data.frame_range) == (8, 16)
    assert cfg.cl.num_negatives is None  # all other queries = NUM_NEGATIVES Q - 1
    assert cfg.optim.steps == (6000, 12000) and cfg.optim.clip_norm == 0.01
    ovis = load_config(CONFIGS / "ovis_r50.yaml")
    assert (ovis.data.clip_frames, ovis.data.frame_range, ovis.eval.period) == (10, 15, 4000)
    assert ovis.data.coco_prob == pytest.approx(0.571, abs=1e-3)


def test_typed_overrides(tmp_path: Path) -> None:
    cfg = load_config(
        CONFIGS / "synth_tiny.yaml",
        ["optim.lr=3e-4", "optim.steps=[10, 20]", "cl.positive_mode=latest",
         "cl.num_negatives=null", "optim.amp=false", "model.resnet.depth=50"],
    )  # fmt: skip
    assert cfg.optim.lr == 3e-4 and cfg.optim.steps == (10, 20)
    assert cfg.cl.positive_mode == "latest" and cfg.cl.num_negatives is None
    assert cfg.optim.amp is False
    toml = tmp_path / "x.toml"
    toml.write_text('preset = "tiny"\n[optim]\nlr = 0.5\nsteps = [1, 2]\n')
    assert load_config(toml).optim.steps == (1, 2)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=fast", "expected a number"),
        ("cl.positive_mode=best", "not one of"),
        ("optim.nope=1", "unknown keys"),
        ("optim.max_iter=1.5", "expected an integer"),
        ("optim.amp=1", "true/false"),
        ("optim.betas=[0.9]", "expected 2 values"),
        ("preset=huge", "unknown 'huge'"),
        ("novalue", "key.path=value"),
    ],
)
def test_bad_overrides_are_rejected(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "synth_tiny.yaml", [override])
