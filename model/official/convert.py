"""Conversion of official CTVIS / Mask2Former checkpoints into our checkpoint directory.

The official ``.pth`` (CTVIS) or ``.pkl`` (COCO Mask2Former) weights are read without executing
code (see ``model.official.weights``), their detectron2 config is mapped onto our configs
(``model.official.config``), and the result is saved in our format (``model.checkpoint``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from model.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    LoadedCheckpoint,
    load_state_into,
    match_weights,
    save_checkpoint,
    sha256_file,
)
from model.config import ModelConfig
from model.nn.build import PRESETS, build_segmenter
from model.official.config import ConfigError, official_dataset_preset, read_official_config
from model.official.weights import official_key_to_ours, read_official_weights


def _with_class_names(cfg: ModelConfig, preset: str | None, dataset: str | None) -> ModelConfig:
    name = preset
    if name is None and dataset is not None:
        name = official_dataset_preset(dataset, cfg.backbone)
    if name is None:
        return cfg
    if name not in PRESETS:
        raise CheckpointError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    names = PRESETS[name][0].class_names
    if len(names) != cfg.num_classes:
        if preset is None:  # inferred from the dataset name only: keep generic names
            return cfg
        raise CheckpointError(
            f"preset {name!r} has {len(names)} classes but the config has {cfg.num_classes}"
        )
    ids = PRESETS[name][0].category_ids or tuple(range(1, len(names) + 1))
    return dataclasses.replace(cfg, class_names=names, category_ids=ids)


def convert_official(
    ckpt_path: str | Path,
    config_path: str | Path,
    out_dir: str | Path,
    preset: str | None = None,
) -> LoadedCheckpoint:
    """Convert an official checkpoint + its detectron2 config into our checkpoint directory.

    Args:
        ckpt_path: CTVIS ``.pth`` (strict) or Mask2Former COCO ``.pkl`` (class head, query
            embeddings of another count and the re-id head are left at init).
        config_path: dumped detectron2 config or official repo yaml (``_BASE_`` chains).
        out_dir: where to write ``model.safetensors`` + ``config.json``.
        preset: take class names/category ids from this preset (default: inferred from
            ``DATASETS.TEST`` when the class count agrees).

    Returns:
        The converted model (eval mode) with its configs and metadata.

    Raises:
        CheckpointError: unreadable/unsafe files, unsupported config, or weights that do not
            match the config.
    """
    ckpt_path, config_path = Path(ckpt_path), Path(config_path)
    try:
        model_cfg, pre_cfg, trk_cfg, dataset = read_official_config(config_path)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    model_cfg = _with_class_names(model_cfg, preset, dataset)
    weights, kind = read_official_weights(ckpt_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # deterministic init of anything a .pkl leaves at init
        segmenter = build_segmenter(model_cfg)
    state, left_at_init, skipped = match_weights(
        segmenter, weights, str(ckpt_path), lenient=kind == "pkl", key_map=official_key_to_ours
    )
    load_state_into(segmenter, state)
    provenance = {
        "converter": "model.official.convert.convert_official",
        "source_kind": "ctvis_pth" if kind == "pth" else "mask2former_pkl",
        "source_checkpoint": ckpt_path.name,
        "source_sha256": sha256_file(ckpt_path),
        "source_config": config_path.name,
        "source_config_sha256": sha256_file(config_path),
        "dropped_keys": sorted(k for k in weights if official_key_to_ours(k) is None),
        "skipped_keys": skipped,
        "left_at_init": left_at_init,
    }
    save_checkpoint(out_dir, segmenter, model_cfg, pre_cfg, trk_cfg, provenance)
    meta = {
        "format_version": FORMAT_VERSION,
        "class_names": list(model_cfg.class_names),
        "category_ids": list(model_cfg.category_ids),
        "provenance": provenance,
    }
    return LoadedCheckpoint(segmenter.eval(), model_cfg, pre_cfg, trk_cfg, meta)
