"""Conversion of official checkpoints, our checkpoint format, and their error messages."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cli.main import main as ctvis_main
from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.nn.build import PRESETS, build_segmenter
from model.official.convert import convert_official
from model.official.weights import read_official_weights


@pytest.fixture(scope="module")
def official_state(fixtures_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(fixtures_dir / "model_final.pth", weights_only=True)["model"]


@pytest.fixture()
def config_path(fixtures_dir: Path) -> Path:
    return fixtures_dir / "config.yaml"


def _save_pth(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"model": state}, path)
    return path


def _write_yaml(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def _fixture_tree(config_path: Path) -> dict:
    return yaml.safe_load(config_path.read_text())


# --- conversion + round trip ------------------------------------------------------------


def test_convert_and_load_round_trip(fixtures_dir, config_path, official_state, tmp_path):
    ckpt = fixtures_dir / "model_final.pth"
    converted = convert_official(ckpt, config_path, tmp_path / "out")
    loaded = load_checkpoint(tmp_path / "out")
    assert loaded.model_cfg == converted.model_cfg
    assert (
        loaded.preprocess_cfg == converted.preprocess_cfg
        and loaded.tracker_cfg == converted.tracker_cfg
    )
    assert not loaded.segmenter.training
    state = loaded.segmenter.state_dict()
    for key, value in official_state.items():
        if key.startswith("criterion."):
            assert key not in state
        else:
            assert torch.equal(state[key], value), key
    provenance = loaded.meta["provenance"]
    assert provenance["source_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert provenance["dropped_keys"] == ["criterion.empty_weight"]
    assert loaded.meta["format_version"] == 1
    # DATASETS.TEST = ytvis_2019_val -> YouTube-VIS 2019 names, ids label + 1
    assert loaded.model_cfg.class_name(0) == "person" and loaded.model_cfg.category_id(39) == 40
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["class_names"][-1] == "tennis_racket"


def test_bare_state_dict_and_explicit_preset(config_path, official_state, tmp_path):
    ckpt = tmp_path / "bare.pth"
    torch.save(dict(official_state), ckpt)
    result = convert_official(ckpt, config_path, tmp_path / "out", preset="ytvis21_r50")
    assert result.model_cfg.class_names[0] == "airplane"
    with pytest.raises(CheckpointError, match="preset 'ovis_r50' has 25 classes"):
        convert_official(ckpt, config_path, tmp_path / "out2", preset="ovis_r50")


def test_save_load_tiny_preserves_outputs(tmp_path):
    torch.manual_seed(1)
    model_cfg, pre_cfg, trk_cfg = PRESETS["tiny"]
    model = build_segmenter(model_cfg).eval()
    save_checkpoint(tmp_path / "tiny", model, model_cfg, pre_cfg, trk_cfg, {"note": "test"})
    loaded = load_checkpoint(tmp_path / "tiny")
    assert loaded.meta["provenance"] == {"note": "test"}
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(pixels), loaded.segmenter(pixels)
    assert torch.equal(a.pred_logits, b.pred_logits) and torch.equal(a.pred_masks, b.pred_masks)


def test_base_chain_is_resolved(config_path, fixtures_dir, tmp_path):
    (tmp_path / "base").mkdir()
    shutil.copy(config_path, tmp_path / "base" / "Base.yaml")
    child = {"_BASE_": "base/Base.yaml", "INPUT": {"MIN_SIZE_TEST": 96}}
    cfg = _write_yaml(tmp_path / "Child.yaml", child)
    result = convert_official(fixtures_dir / "model_final.pth", cfg, tmp_path / "out")
    assert result.preprocess_cfg.min_size == 96
    assert result.preprocess_cfg.max_size == 1333  # from the base
    assert result.model_cfg.hidden_dim == 64


def test_mask2former_pkl_leaves_heads_at_init(config_path, official_state, tmp_path):
    arrays = {k: v.numpy() for k, v in official_state.items() if ".reid_embed." not in k}
    arrays["sem_seg_head.predictor.class_embed.weight"] = np.zeros((81, 64), np.float32)
    arrays["sem_seg_head.predictor.class_embed.bias"] = np.zeros(81, np.float32)
    arrays["sem_seg_head.predictor.static_query.weight"] = arrays.pop(
        "sem_seg_head.predictor.query_feat.weight"
    )
    arrays["pixel_mean"] = np.zeros((3, 1, 1), np.float32)
    path = tmp_path / "m2f.pkl"
    with path.open("wb") as f:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f)
    result = convert_official(path, config_path, tmp_path / "out")
    state = result.segmenter.state_dict()
    query_feat = official_state["sem_seg_head.predictor.query_feat.weight"]
    assert torch.equal(state["sem_seg_head.predictor.query_feat.weight"], query_feat)
    assert state["sem_seg_head.predictor.class_embed.weight"].shape == (41, 64)
    left = result.meta["provenance"]["left_at_init"]
    assert "sem_seg_head.predictor.class_embed.weight" in left
    assert "sem_seg_head.predictor.reid_embed.layers.0.weight" in left
    assert load_checkpoint(tmp_path / "out").model_cfg == result.model_cfg


# --- bad checkpoints --------------------------------------------------------------------


def test_missing_key(config_path, official_state, tmp_path):
    state = dict(official_state)
    del state["sem_seg_head.pixel_decoder.layer_1.weight"]
    ckpt = _save_pth(tmp_path / "m.pth", state)
    with pytest.raises(CheckpointError, match=r"1 missing keys: .*layer_1\.weight"):
        convert_official(ckpt, config_path, tmp_path / "out")


def test_unexpected_key(config_path, official_state, tmp_path):
    state = dict(official_state)
    state["sem_seg_head.predictor.extra.weight"] = torch.zeros(3)
    ckpt = _save_pth(tmp_path / "u.pth", state)
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: .*extra\.weight"):
        convert_official(ckpt, config_path, tmp_path / "out")


def test_shape_mismatch(config_path, official_state, tmp_path):
    state = dict(official_state)
    state["backbone.stem.conv1.weight"] = torch.zeros(16, 3, 5, 5)
    ckpt = _save_pth(tmp_path / "s.pth", state)
    with pytest.raises(CheckpointError, match=r"shape mismatches: backbone\.stem\.conv1\.weight"):
        convert_official(ckpt, config_path, tmp_path / "out")


def test_class_count_mismatch(config_path, official_state, tmp_path):
    state = dict(official_state)
    state["sem_seg_head.predictor.class_embed.weight"] = torch.zeros(26, 64)
    state["sem_seg_head.predictor.class_embed.bias"] = torch.zeros(26)
    ckpt = _save_pth(tmp_path / "c.pth", state)
    with pytest.raises(CheckpointError, match="class-count mismatch.*NUM_CLASSES=40.*25 classes"):
        convert_official(ckpt, config_path, tmp_path / "out")


def test_config_does_not_match_weights(fixtures_dir, config_path, tmp_path):
    tree = _fixture_tree(config_path)
    tree["MODEL"]["SEM_SEG_HEAD"]["TRANSFORMER_ENC_LAYERS"] = 3
    tree["MODEL"]["MASK_FORMER"]["HIDDEN_DIM"] = 96
    cfg = _write_yaml(tmp_path / "wrong.yaml", tree)
    with pytest.raises(CheckpointError, match="do not match the model built from the config"):
        convert_official(fixtures_dir / "model_final.pth", cfg, tmp_path / "out")


def test_unsafe_pickle_is_refused_without_running_it(config_path, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")

    class Exploit:
        def __reduce__(self):
            return (os.remove, (str(victim),))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": Exploit()}}))
    with pytest.raises(CheckpointError, match=r"unsafe pickle.*(posix|os)\.(remove|unlink)"):
        read_official_weights(path)
    assert victim.exists()
    pth = tmp_path / "evil.pth"
    pth.write_bytes(pickle.dumps({"model": {"w": Exploit()}}))
    with pytest.raises(CheckpointError, match="weights_only"):
        convert_official(pth, config_path, tmp_path / "out")
    assert victim.exists()


def test_unreadable_files(config_path, tmp_path):
    for name in ("junk.pth", "junk.pkl"):
        (tmp_path / name).write_bytes(b"\x00not a checkpoint at all")
        with pytest.raises(CheckpointError, match="cannot read"):
            read_official_weights(tmp_path / name)
    with pytest.raises(CheckpointError, match="not found"):
        read_official_weights(tmp_path / "absent.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        read_official_weights(tmp_path / "list.pth")


# --- bad configs ------------------------------------------------------------------------


def test_bad_configs(fixtures_dir, config_path, tmp_path):
    ckpt = fixtures_dir / "model_final.pth"
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("MODEL: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(CheckpointError, match="cannot parse config"):
        convert_official(ckpt, tagged, tmp_path / "out")
    tree = _fixture_tree(config_path)
    tree["MODEL"]["BACKBONE"]["NAME"] = "build_efficientnet_backbone"
    with pytest.raises(CheckpointError, match="unsupported config: MODEL.BACKBONE.NAME"):
        convert_official(ckpt, _write_yaml(tmp_path / "b.yaml", tree), tmp_path / "out")
    cycle = _write_yaml(tmp_path / "cycle.yaml", {"_BASE_": "cycle.yaml"})
    with pytest.raises(CheckpointError, match="_BASE_ cycle"):
        convert_official(ckpt, cycle, tmp_path / "out")
    missing_base = _write_yaml(tmp_path / "orphan.yaml", {"_BASE_": "nowhere.yaml"})
    with pytest.raises(CheckpointError, match="config not found"):
        convert_official(ckpt, missing_base, tmp_path / "out")


# --- our format: bad directories --------------------------------------------------------


def test_load_checkpoint_errors(fixtures_dir, config_path, tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path)
    out = tmp_path / "ok"
    convert_official(fixtures_dir / "model_final.pth", config_path, out)
    config = json.loads((out / "config.json").read_text())
    config["format_version"] = 99
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unsupported checkpoint format_version 99"):
        load_checkpoint(out)
    config["format_version"] = 1
    config["model"]["hidden_dim"] = 32
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(out)
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(out)


# --- CLI --------------------------------------------------------------------------------


def test_cli_convert(fixtures_dir, config_path, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["convert", "--official", str(fixtures_dir / "model_final.pth")]
    argv += ["--official-config", str(config_path), "--out", str(out)]
    assert ctvis_main(argv) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert "16 queries" in capsys.readouterr().out
    bad = ["convert", "--official", str(tmp_path / "absent.pth")]
    bad += ["--official-config", str(config_path), "--out", str(tmp_path / "x")]
    assert ctvis_main(bad) == 1
    assert "checkpoint not found" in capsys.readouterr().err
