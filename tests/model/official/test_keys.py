"""Our presets have exactly the official state-dict keys, shapes and dtypes (real sizes).

Models are built on the ``meta`` device, so no memory is allocated and the test is fast.
Nothing here is skipped: if the Swin trunk fails to import, the Swin tests fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.nn.build import PRESETS, build_segmenter
from model.official.weights import official_key_to_ours


def _official_entries(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    entries = json.loads(path.read_text())["state_dict"]
    out = {}
    for entry in entries:
        ours = official_key_to_ours(entry["key"])
        if ours is not None:
            out[ours] = (tuple(entry["shape"]), entry["dtype"])
    return out


def _our_entries(preset: str) -> dict[str, tuple[tuple[int, ...], str]]:
    with torch.device("meta"):
        model = build_segmenter(PRESETS[preset][0])
    return {
        key: (tuple(t.shape), str(t.dtype).removeprefix("torch."))
        for key, t in model.state_dict().items()
    }


def _compare(official: dict, ours: dict) -> None:
    missing = sorted(set(official) - set(ours))
    extra = sorted(set(ours) - set(official))
    assert not missing, f"{len(missing)} official keys have no counterpart: {missing[:10]}"
    assert not extra, f"{len(extra)} of our keys are not in the official model: {extra[:10]}"
    wrong = [
        f"{k}: ours {ours[k]} official {official[k]}" for k in official if ours[k] != official[k]
    ]
    assert not wrong, f"{len(wrong)} shape/dtype mismatches: {wrong[:10]}"


def test_r50_keys_match_official(fixtures_dir: Path):
    official = _official_entries(fixtures_dir / "state_dict_keys_R50.json")
    assert len(official) == 563  # 564 minus criterion.empty_weight
    _compare(official, _our_entries("ytvis19_r50"))


def test_swinl_keys_match_official(fixtures_dir: Path):
    official = _official_entries(fixtures_dir / "state_dict_keys_SwinL.json")
    assert len(official) == 655
    _compare(official, _our_entries("ytvis19_swinl"))


def test_official_parameter_count(fixtures_dir: Path):
    data = json.loads((fixtures_dir / "state_dict_keys_R50.json").read_text())
    ours = _our_entries("ytvis19_r50")
    numel = sum(int(torch.Size(shape).numel()) for shape, _ in ours.values())
    assert numel + 41 == data["total_numel"]  # + criterion.empty_weight [K+1]


@pytest.mark.parametrize(
    ("preset", "queries", "classes"),
    [
        ("ytvis19_r50", 100, 40),
        ("ytvis21_r50", 100, 40),
        ("ovis_r50", 100, 25),
        ("ytvis19_swinl", 200, 40),
        ("ytvis21_swinl", 200, 40),
        ("ovis_swinl", 200, 25),
    ],
)
def test_released_presets(preset: str, queries: int, classes: int):
    model_cfg, pre_cfg, trk_cfg = PRESETS[preset]
    assert model_cfg.num_queries == queries
    assert model_cfg.num_classes == classes == len(model_cfg.class_names)
    assert len(set(model_cfg.class_names)) == classes
    assert model_cfg.category_ids == tuple(range(1, classes + 1))
    assert model_cfg.backbone == ("swin" if preset.endswith("swinl") else "resnet")
    assert trk_cfg.match_threshold == 0.3
    assert pre_cfg.pixel_mean == (123.675, 116.28, 103.53)
