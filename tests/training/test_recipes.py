"""Named contrastive recipes (``cl.recipe``): complete, overridable, and doing what they claim."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.training.test_consistent import VALID, _clip
from training.cl_recipes import CL_RECIPES, RECIPE_NAMES, RECIPE_SWITCHES
from training.config import ClConfig, ConfigError, load_config
from training.consistent import build_clip_bank, clip_items
from training.loop import train
from training.multi_ref import multi_ref_items

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "synth_test.yaml"


def test_every_recipe_sets_every_switch_and_official_is_the_default() -> None:
    fields = {f.name for f in dataclasses.fields(ClConfig)}
    assert set(RECIPE_SWITCHES) <= fields and "enabled" not in RECIPE_SWITCHES
    assert set(RECIPE_SWITCHES) == fields - {"enabled", "recipe"}
    assert set(typing.get_args(typing.get_type_hints(ClConfig)["recipe"])) == set(RECIPE_NAMES)
    for name, switches in CL_RECIPES.items():
        assert set(switches) == set(RECIPE_SWITCHES), name
    default = ClConfig()
    assert {k: getattr(default, k) for k in RECIPE_SWITCHES} == CL_RECIPES["official"]


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_is_selected_by_name(name: str) -> None:
    cl = load_config(CONFIG, [f"cl.recipe={name}"]).cl
    assert cl.recipe == name and cl.enabled
    assert {k: getattr(cl, k) for k in RECIPE_SWITCHES} == CL_RECIPES[name]


def test_paper_recipe_values() -> None:
    cl = load_config(CONFIG, ["cl.recipe=paper"]).cl
    assert (cl.positive_mode, cl.ma_prob, cl.future_positive) == ("ma", 1.0, False)
    assert (cl.negative_major, cl.negative_supplementary) == ("memory_ma", "local")
    assert cl.noise_prob > 0 and cl.noise_source == "other_instances" and not cl.noise_as_anchor


def test_explicit_switches_override_the_recipe(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("preset: tiny\ncl:\n  recipe: paper\n  noise_prob: 0.02\n")
    cl = load_config(path).cl
    assert cl.noise_prob == 0.02 and cl.ma_prob == 1.0
    # an override given before the recipe still wins: explicit beats recipe, not order
    cl = load_config(path, ["cl.ma_prob=0.3", "cl.recipe=single_ref"]).cl
    assert (cl.recipe, cl.positive_mode, cl.ma_prob, cl.noise_prob) == (
        "single_ref",
        "prev_frame",
        0.3,
        0.02,
    )
    # a resolved config written back (every switch explicit) reloads to the same values
    full = tmp_path / "full.yaml"
    full.write_text(yaml.safe_dump({"preset": "tiny", "cl": dataclasses.asdict(cl)}))
    assert load_config(full).cl == cl


@pytest.mark.parametrize("bad", ["cl.recipe=ideal", "cl.recipe=3"])
def test_unknown_recipe_is_rejected(bad: str) -> None:
    with pytest.raises(ConfigError, match="cl.recipe"):
        load_config(CONFIG, [bad])


def _paper(*overrides: str) -> ClConfig:
    return load_config(CONFIG, ["cl.recipe=paper", *overrides]).cl


def test_paper_items_are_ma_positive_and_ma_plus_background_negatives() -> None:
    cfg = _paper("cl.noise_prob=0.0")
    embeds, s2q = _clip()
    bank = build_clip_bank(embeds, s2q, VALID, cfg)
    items = clip_items(embeds, s2q, VALID, cfg)
    expected = []
    q = embeds.shape[1]
    for t in range(1, VALID.shape[0]):
        for s in range(VALID.shape[1]):
            if not (VALID[t, s] and VALID[:t, s].any()):
                continue  # no first-appearance items in the paper
            matched = set(s2q[t - 1][VALID[t - 1]].tolist())
            background = sorted(set(range(q)) - matched)
            others = [o for o in range(VALID.shape[1]) if o != s and bank.has_fused[t - 1, o]]
            keys = torch.cat([bank.fused[t - 1, s][None], embeds[t - 1, background],
                              bank.fused[t - 1, others]])  # fmt: skip
            expected.append(keys @ bank.raw[t, s])
    assert len(items) == len(expected) > 0
    for item, dots in zip(items, expected, strict=True):
        assert torch.allclose(item.dot_product, dots) and int(item.label.sum()) == 1


def test_paper_noise_is_another_instance_and_never_an_anchor() -> None:
    embeds, s2q = _clip()
    torch.manual_seed(0)
    cfg = _paper("cl.noise_prob=1.0")
    bank = build_clip_bank(embeds, s2q, VALID, cfg)
    assert bank.is_noise.any()
    for t, s in torch.nonzero(bank.is_noise).tolist():
        donors = [embeds[t, s2q[t, o]] for o in range(VALID.shape[1]) if o != s and VALID[t, o]]
        assert any(torch.equal(bank.raw[t, s], d) for d in donors)
    torch.manual_seed(0)
    items = clip_items(embeds, s2q, VALID, cfg)
    anchors = sum(
        bool(VALID[t, s] and bank.has_raw[:t, s].any())
        for t in range(1, VALID.shape[0])
        for s in range(VALID.shape[1])
    )
    assert len(items) == anchors
    torch.manual_seed(0)
    as_anchor = clip_items(embeds, s2q, VALID, dataclasses.replace(cfg, noise_as_anchor=True))
    assert len(as_anchor) > anchors


def test_multi_ref_items_follow_the_official_plugin() -> None:
    embeds, s2q = _clip()
    cfg = load_config(CONFIG, ["cl.recipe=multi_ref"]).cl
    items = multi_ref_items(embeds, s2q, VALID, cfg)
    q = embeds.shape[1]
    assert len(items) == 2  # anchors: the slots valid in frame 0
    for s, item in zip((0, 1), items, strict=True):
        refs = VALID[1:, s]
        positives = int(refs.sum())
        assert item.label[:positives].all() and not item.label[positives:].any()
        assert item.label.numel() == positives + positives * (q - 1) + int((~refs).sum()) * q
        anchor = embeds[0, s2q[0, s]]
        own = [embeds[r, s2q[r, s]] for r in range(1, VALID.shape[0]) if VALID[r, s]]
        assert torch.allclose(item.dot_product[:positives], torch.stack(own) @ anchor)
    capped = multi_ref_items(embeds, s2q, VALID, dataclasses.replace(cfg, num_negatives=2))
    assert [int((i.label == 0).sum()) for i in capped] == [12, 12]  # 2 from each of 6 frames


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_every_recipe_trains(tmp_path: Path, name: str) -> None:
    torch.set_num_threads(1)
    cfg = load_config(CONFIG, [f"cl.recipe={name}", "optim.max_iter=1"])
    result = train(cfg, tmp_path / name)
    assert result.iteration == 1 and np.isfinite(result.losses[0])
