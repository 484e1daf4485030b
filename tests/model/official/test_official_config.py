"""Reading official repo-style configs (``_BASE_`` chains, detectron2 defaults, tuple strings)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from model.nn.build import PRESETS
from model.official.config import ConfigError, official_dataset_preset, read_official_config

# shaped like the official configs/M2F.yaml -> ytvis_2019/CTVIS_R50.yaml -> CTVIS_SwinL.yaml
M2F = """
MODEL:
  BACKBONE: {FREEZE_AT: 0, NAME: build_resnet_backbone}
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  RESNETS:
    DEPTH: 50
    STEM_TYPE: basic
    STEM_OUT_CHANNELS: 64
    STRIDE_IN_1X1: False
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
  META_ARCHITECTURE: CTVISModel
  SEM_SEG_HEAD:
    NAME: MaskFormerHead
    NUM_CLASSES: 40
    CONVS_DIM: 256
    MASK_DIM: 256
    NORM: GN
    PIXEL_DECODER_NAME: MSDeformAttnPixelDecoder
    TRANSFORMER_ENC_LAYERS: 6
  MASK_FORMER:
    HIDDEN_DIM: 256
    NUM_OBJECT_QUERIES: 100
    NHEADS: 8
    DIM_FEEDFORWARD: 2048
    DEC_LAYERS: 10
    PRE_NORM: False
    ENFORCE_INPUT_PROJ: False
    SIZE_DIVISIBILITY: 32
INPUT:
  FORMAT: RGB
"""

R50 = """
_BASE_: ../M2F.yaml
DATASETS:
  TRAIN: ("coco2ytvis2019_train", "ytvis_2019_train")
  TEST: ("ytvis_2019_val",)
INPUT:
  MIN_SIZE_TEST: 480
MODEL:
  TRACKER:
    MATCH_SCORE_THR: 0.3
    MEMORY_BANK: {NUM_DEAD_FRAMES: 20}
"""

SWINL = """
_BASE_: CTVIS_R50.yaml
MODEL:
  BACKBONE: {NAME: D2SwinTransformer}
  SWIN:
    EMBED_DIM: 192
    DEPTHS: [2, 2, 18, 2]
    NUM_HEADS: [6, 12, 24, 48]
    WINDOW_SIZE: 12
    APE: False
    PATCH_NORM: True
    PRETRAIN_IMG_SIZE: 384
  MASK_FORMER:
    NUM_OBJECT_QUERIES: 200
"""


@pytest.fixture()
def configs(tmp_path: Path) -> Path:
    (tmp_path / "ytvis_2019").mkdir()
    (tmp_path / "M2F.yaml").write_text(M2F)
    (tmp_path / "ytvis_2019" / "CTVIS_R50.yaml").write_text(R50)
    (tmp_path / "ytvis_2019" / "CTVIS_SwinL.yaml").write_text(SWINL)
    return tmp_path / "ytvis_2019"


@pytest.mark.parametrize(("name", "preset"), [("R50", "ytvis19_r50"), ("SwinL", "ytvis19_swinl")])
def test_official_chain_gives_the_preset(configs: Path, name: str, preset: str):
    model_cfg, pre_cfg, trk_cfg, dataset = read_official_config(configs / f"CTVIS_{name}.yaml")
    expected = dataclasses.replace(PRESETS[preset][0], class_names=(), category_ids=())
    assert model_cfg == expected
    assert pre_cfg == PRESETS[preset][1]
    assert trk_cfg == PRESETS[preset][2]
    assert dataset == "ytvis_2019_val"
    assert official_dataset_preset(dataset, model_cfg.backbone) == preset


def test_dataset_names_map_to_presets():
    assert official_dataset_preset("ytvis_2021_val", "resnet") == "ytvis21_r50"
    assert official_dataset_preset("ovis_val", "swin") == "ovis_swinl"
    assert official_dataset_preset("coco_2017_val", "resnet") is None


def test_unsupported_settings_are_named(configs: Path, tmp_path: Path):
    bgr = tmp_path / "bgr.yaml"
    bgr.write_text("_BASE_: ytvis_2019/CTVIS_R50.yaml\nINPUT: {FORMAT: BGR}\n")
    with pytest.raises(ConfigError, match="INPUT.FORMAT 'BGR'"):
        read_official_config(bgr)
    stride = tmp_path / "stride.yaml"
    stride.write_text(
        "_BASE_: ytvis_2019/CTVIS_R50.yaml\nMODEL: {RESNETS: {STRIDE_IN_1X1: True}}\n"
    )
    with pytest.raises(ConfigError, match="STRIDE_IN_1X1"):
        read_official_config(stride)
    tracker = tmp_path / "tracker.yaml"
    tracker.write_text("_BASE_: ytvis_2019/CTVIS_R50.yaml\nMODEL: {TRACKER: {MATCH_TYPE: magic}}\n")
    with pytest.raises(ConfigError, match="MATCH_TYPE = 'magic'"):
        read_official_config(tracker)
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        read_official_config(not_a_mapping)
