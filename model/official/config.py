"""Read an official detectron2 / CTVIS config yaml into our config dataclasses.

Accepts a full ``cfg.dump()`` or an official repo yaml with a ``_BASE_`` chain (paths relative
to the including file, dicts merged recursively, the including file wins). Keys missing from the
whole chain take the detectron2 / Mask2Former / CTVIS defaults in ``DEFAULTS``. Parsed with
``yaml.safe_load``: python tags are rejected, nothing is executed.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from model.config import (
    BackboneKind,
    ModelConfig,
    PreprocessConfig,
    ResNetConfig,
    SwinConfig,
    TrackerConfig,
)

__all__ = ["DEFAULTS", "ConfigError", "official_dataset_preset", "read_official_config"]


class ConfigError(ValueError):
    """The config cannot be read or describes a model we do not implement."""


# defaults of the keys we read (get_cfg + add_maskformer2_config + add_ctvis_config)
DEFAULTS: dict[str, Any] = {
    "MODEL.BACKBONE.NAME": "build_resnet_backbone",
    "MODEL.META_ARCHITECTURE": "CTVISModel",
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.NUM_GROUPS": 1,
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.STEM_TYPE": "basic",
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, False, False],
    "MODEL.SWIN.EMBED_DIM": 96,
    "MODEL.SWIN.DEPTHS": [2, 2, 6, 2],
    "MODEL.SWIN.NUM_HEADS": [3, 6, 12, 24],
    "MODEL.SWIN.WINDOW_SIZE": 7,
    "MODEL.SWIN.PATCH_SIZE": 4,
    "MODEL.SWIN.MLP_RATIO": 4.0,
    "MODEL.SWIN.APE": False,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 54,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM": 256,
    "MODEL.SEM_SEG_HEAD.MASK_DIM": 256,
    "MODEL.SEM_SEG_HEAD.NORM": "GN",
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "MSDeformAttnPixelDecoder",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 0,
    "MODEL.MASK_FORMER.HIDDEN_DIM": 256,
    "MODEL.MASK_FORMER.NHEADS": 8,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 2048,
    "MODEL.MASK_FORMER.DEC_LAYERS": 6,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100,
    "MODEL.MASK_FORMER.PRE_NORM": False,
    "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ": False,
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY": 32,
    "MODEL.MASK_FORMER.REID_HIDDEN_DIM": 256,
    "MODEL.MASK_FORMER.NUM_REID_HEAD_LAYERS": 3,
    "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "INPUT.FORMAT": "BGR",
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "TEST.NUM_CLIP_FRAMES": PreprocessConfig().clip_frames,
    "DATASETS.TEST": [],
}

_BACKBONES: dict[str, BackboneKind] = {
    "build_resnet_backbone": "resnet",
    "D2SwinTransformer": "swin",
}

# MODEL.TRACKER.<key> -> TrackerConfig field; missing keys keep the TrackerConfig default
_TRACKER_KEYS = {
    "MATCH_METRIC": "match_metric",
    "MATCH_TYPE": "match_type",
    "FRAME_WEIGHT": "frame_weight",
    "TEMPORAL_SCORE_TYPE": "temporal_score_type",
    "INFERENCE_SELECT_THR": "select_threshold",
    "INIT_SCORE_THR": "init_score_threshold",
    "MASK_NMS_THR": "mask_nms_threshold",
    "MATCH_SCORE_THR": "match_threshold",
    "MEMORY_BANK.NUM_DEAD_FRAMES": "num_dead_frames",
    "MEMORY_BANK.EMBED_TYPE": "embed_type",
    "MEMORY_BANK.maximum_cache": "cache_size",
    "NOISE_FRAME_NUM": "noise_frame_num",
    "SUPPRESS_FRAME_NUM": "suppress_frame_num",
    "NONE_FRAME_NUM": "none_frame_num",
}
_TRACKER_CHOICES = {
    "match_metric": ("bisoftmax", "cosine"),
    "match_type": ("greedy", "hungarian"),
    "temporal_score_type": ("mean", "max"),
    "embed_type": ("similarity_guided", "momentum", "last", "temporally_weighted"),
}


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot parse config {path} (plain YAML only): {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a YAML mapping, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config_tree(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a yaml config, resolving its ``_BASE_`` chain (relative to each file).

    Args:
        path: config file.

    Returns:
        The merged config as nested dicts, without ``_BASE_``.
    """
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"_BASE_ cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    data = _load_yaml(path)
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: _BASE_ must be a path string")
    base_path = Path(base).expanduser()
    if not base_path.is_absolute():
        base_path = path.parent / base_path
    return _merge(load_config_tree(base_path, (*_seen, path)), data)


def _decode(value: Any) -> Any:
    # detectron2 (fvcore) literal_evals string values, e.g. TEST: ("ytvis_2019_val",)
    if isinstance(value, str) and value.strip()[:1] in ("(", "["):
        try:
            return ast.literal_eval(value)  # literals only: never runs code
        except (ValueError, SyntaxError):
            return value
    return value


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if dotted not in DEFAULTS:
                raise ConfigError(f"config has no {dotted} and there is no default for it")
            return DEFAULTS[dotted]
        node = node[part]
    return _decode(node)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(f"unsupported config: {message}")


def _model_config(tree: dict[str, Any]) -> ModelConfig:
    name = _get(tree, "MODEL.BACKBONE.NAME")
    _require(name in _BACKBONES, f"MODEL.BACKBONE.NAME {name!r} (expected {sorted(_BACKBONES)})")
    backbone = _BACKBONES[name]
    resnet, swin = ResNetConfig(), SwinConfig()
    if backbone == "resnet":
        _require(not _get(tree, "MODEL.RESNETS.STRIDE_IN_1X1"), "STRIDE_IN_1X1 must be False")
        _require(_get(tree, "MODEL.RESNETS.RES5_DILATION") == 1, "RES5_DILATION must be 1")
        _require(_get(tree, "MODEL.RESNETS.STEM_TYPE") == "basic", "only the basic stem")
        _require(_get(tree, "MODEL.RESNETS.NORM") == "FrozenBN", "RESNETS.NORM must be FrozenBN")
        _require(not any(_get(tree, "MODEL.RESNETS.DEFORM_ON_PER_STAGE")), "deformable convs")
        resnet = ResNetConfig(
            depth=int(_get(tree, "MODEL.RESNETS.DEPTH")),
            stem_out_channels=int(_get(tree, "MODEL.RESNETS.STEM_OUT_CHANNELS")),
            res2_out_channels=int(_get(tree, "MODEL.RESNETS.RES2_OUT_CHANNELS")),
            width_per_group=int(_get(tree, "MODEL.RESNETS.WIDTH_PER_GROUP")),
            num_groups=int(_get(tree, "MODEL.RESNETS.NUM_GROUPS")),
        )
        _require(resnet.depth in (50, 101, 152), f"ResNet depth {resnet.depth}")
    else:
        _require(not _get(tree, "MODEL.SWIN.APE"), "Swin absolute position embedding")
        swin = SwinConfig(
            embed_dim=int(_get(tree, "MODEL.SWIN.EMBED_DIM")),
            depths=tuple(int(d) for d in _get(tree, "MODEL.SWIN.DEPTHS")),
            num_heads=tuple(int(h) for h in _get(tree, "MODEL.SWIN.NUM_HEADS")),
            window_size=int(_get(tree, "MODEL.SWIN.WINDOW_SIZE")),
            patch_size=int(_get(tree, "MODEL.SWIN.PATCH_SIZE")),
            mlp_ratio=float(_get(tree, "MODEL.SWIN.MLP_RATIO")),
        )
    decoder = _get(tree, "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME")
    _require(decoder == "MSDeformAttnPixelDecoder", f"pixel decoder {decoder!r}")
    _require(_get(tree, "MODEL.SEM_SEG_HEAD.NORM") == "GN", "SEM_SEG_HEAD.NORM must be GN")
    _require(not _get(tree, "MODEL.MASK_FORMER.PRE_NORM"), "PRE_NORM decoder layers")
    conv_dim = int(_get(tree, "MODEL.SEM_SEG_HEAD.CONVS_DIM"))
    hidden_dim = int(_get(tree, "MODEL.MASK_FORMER.HIDDEN_DIM"))
    _require(
        not (_get(tree, "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ") and conv_dim == hidden_dim),
        "ENFORCE_INPUT_PROJ",
    )
    _require(conv_dim % 32 == 0, f"CONVS_DIM {conv_dim} must be a multiple of 32 (GroupNorm)")
    dec_layers = int(_get(tree, "MODEL.MASK_FORMER.DEC_LAYERS"))
    _require(dec_layers >= 1, f"DEC_LAYERS {dec_layers}")
    return ModelConfig(
        backbone=backbone,
        resnet=resnet,
        swin=swin,
        conv_dim=conv_dim,
        mask_dim=int(_get(tree, "MODEL.SEM_SEG_HEAD.MASK_DIM")),
        encoder_layers=int(_get(tree, "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS")),
        encoder_ffn_dim=1024,  # hard-coded in the reference pixel decoder
        encoder_points=4,  # hard-coded too (the N_POINTS key is not wired)
        hidden_dim=hidden_dim,
        num_heads=int(_get(tree, "MODEL.MASK_FORMER.NHEADS")),
        dim_feedforward=int(_get(tree, "MODEL.MASK_FORMER.DIM_FEEDFORWARD")),
        decoder_layers=dec_layers - 1,
        num_queries=int(_get(tree, "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES")),
        num_classes=int(_get(tree, "MODEL.SEM_SEG_HEAD.NUM_CLASSES")),
        reid_hidden_dim=int(_get(tree, "MODEL.MASK_FORMER.REID_HIDDEN_DIM")),
        reid_head_layers=int(_get(tree, "MODEL.MASK_FORMER.NUM_REID_HEAD_LAYERS")),
    )


def _preprocess_config(tree: dict[str, Any]) -> PreprocessConfig:
    fmt = _get(tree, "INPUT.FORMAT")
    _require(fmt == "RGB", f"INPUT.FORMAT {fmt!r}: our frames are RGB")
    min_size = _get(tree, "INPUT.MIN_SIZE_TEST")
    _require(isinstance(min_size, int) and min_size > 0, f"MIN_SIZE_TEST {min_size!r}")
    mean = tuple(float(v) for v in _get(tree, "MODEL.PIXEL_MEAN"))
    std = tuple(float(v) for v in _get(tree, "MODEL.PIXEL_STD"))
    _require(len(mean) == 3 and len(std) == 3, "PIXEL_MEAN/PIXEL_STD need 3 values")
    return PreprocessConfig(
        min_size=min_size,
        max_size=int(_get(tree, "INPUT.MAX_SIZE_TEST")),
        size_divisibility=int(_get(tree, "MODEL.MASK_FORMER.SIZE_DIVISIBILITY")),
        pixel_mean=mean,  # type: ignore[arg-type]
        pixel_std=std,  # type: ignore[arg-type]
        clip_frames=int(_get(tree, "TEST.NUM_CLIP_FRAMES")),
    )


def _tracker_config(tree: dict[str, Any]) -> TrackerConfig:
    node = tree.get("MODEL", {}).get("TRACKER", {}) or {}
    defaults = TrackerConfig()
    kwargs: dict[str, Any] = {}
    for dotted, field_name in _TRACKER_KEYS.items():
        value: Any = node
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            continue
        value = _decode(value)
        default = getattr(defaults, field_name)
        if isinstance(default, bool):
            value = bool(value)
        elif isinstance(default, (int, float)):
            value = type(default)(value)
        choices = _TRACKER_CHOICES.get(field_name)
        _require(choices is None or value in choices, f"MODEL.TRACKER.{dotted} = {value!r}")
        kwargs[field_name] = value
    return TrackerConfig(**kwargs)


def read_official_config(
    path: str | Path,
) -> tuple[ModelConfig, PreprocessConfig, TrackerConfig, str | None]:
    """Read the architecture, preprocessing and tracker settings of an official config.

    Args:
        path: dumped detectron2 config or official repo yaml.

    Returns:
        (model config without class names, preprocessing, tracker, first ``DATASETS.TEST``
        name or None).

    Raises:
        ConfigError: unreadable yaml, ``_BASE_`` problems, or a model we do not implement.
    """
    tree = load_config_tree(path)
    arch = _get(tree, "MODEL.META_ARCHITECTURE")
    _require(arch in ("CTVISModel", "MaskFormer"), f"META_ARCHITECTURE {arch!r}")
    tests = _get(tree, "DATASETS.TEST")
    dataset = str(tests[0]) if isinstance(tests, (list, tuple)) and tests else None
    return _model_config(tree), _preprocess_config(tree), _tracker_config(tree), dataset


def official_dataset_preset(dataset: str, backbone: str) -> str | None:
    """Preset whose class names fit an official dataset name (e.g. ``ytvis_2019_val``)."""
    suffix = "swinl" if backbone == "swin" else "r50"
    lowered = dataset.lower()
    if "ytvis_2019" in lowered:
        return f"ytvis19_{suffix}"
    if "ytvis_2021" in lowered or "ytvis_2022" in lowered:
        return f"ytvis21_{suffix}"
    if "ovis" in lowered:
        return f"ovis_{suffix}"
    return None
