"""``TrainConfig``: one experiment, loaded from YAML/TOML plus typed ``key=value`` overrides.

A config file holds nested sections matching the dataclasses below. ``preset`` (a name in
``model.nn.build.PRESETS``) supplies the base ``model`` / ``preprocess`` / ``tracker`` values; keys
under those sections override single fields. Overrides use dotted paths
(``optim.lr=3e-4``, ``cl.positive_mode=latest``, ``optim.steps=[600,900]``); values are parsed
with ``yaml.safe_load`` and then checked against the field's annotated type. Nothing is ever
executed. Official values are those of the released configs
(``configs/{ytvis_2019,ytvis_2021,ovis}/CTVIS_*.yaml`` and the defaults in ``ctvis/config.py``
of https://github.com/KainingYing/CTVIS); comments name the official key where it differs from
the field's name.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from model.config import (
    ModelConfig,
    PreprocessConfig,
    TrackerConfig,
    TrackerOptionError,
    to_dict,
    validate_tracker_config,
)
from model.nn.build import PRESETS
from training.cl_recipes import RECIPE_NAMES, recipe_switches
from training.config_data import DataConfig, PseudoConfig, data_config_errors

__all__ = [
    "ClConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "InitConfig",
    "LossConfig",
    "OptimConfig",
    "PseudoConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
]


class ConfigError(ValueError):
    """A config file or override is malformed (unknown key, wrong type, bad value)."""


@dataclass(frozen=True)
class InitConfig:
    """Where the weights start.

    ``scratch``: random init (seeded); ``checkpoint``: our checkpoint directory (``ctvis convert``
    output), lenient on the class head when the class count differs; ``official``: an official
    CTVIS ``.pth`` or COCO Mask2Former ``.pkl`` plus its detectron2 ``config`` yaml.
    """

    kind: Literal["scratch", "checkpoint", "official"] = "scratch"
    path: str = ""
    config: str = ""


@dataclass(frozen=True)
class LossConfig:
    """Criterion settings (``MODEL.MASK_FORMER.*`` and ``MODEL.CL_PLUGIN`` weights)."""

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    deep_supervision: bool = True
    reid_weight: float = 2.0
    aux_reid_weight: float = 3.0


@dataclass(frozen=True)
class ClConfig:
    """CTCLPlugin switches; defaults = the official code's behaviour.

    The defaults reproduce ``CTCLPlugin`` (``ctvis/modeling/cl_plugin/ct_cl_plugin.py`` of
    https://github.com/KainingYing/CTVIS); the other values give the variants of the paper's
    ablations (Ying et al., ICCV 2023, arXiv:2307.12616, Tables 3 and 4).

    ``num_negatives`` caps the negatives per item (sampled without replacement, sorted);
    ``None`` keeps all, which equals the official ``NUM_NEGATIVES = Q - 1``.
    ``fusion_window`` caps the raw embeddings the training bank's similarity-guided fusion
    averages over (``None``: all earlier ones in the clip, as the official training bank).
    ``recipe`` names a complete setting of the item switches (``training.cl_recipes``:
    ``official``, ``paper``, ``single_ref``, ``multi_ref``, ``memory_bank``,
    ``memory_bank_ma``); switches the config names explicitly override it. The recipe is
    applied when a config is loaded (``build_config``); a ``ClConfig`` built in code takes its
    fields as given (``ClConfig(recipe=name, **recipe_switches(name))``). ``plugin``
    ``multi_ref`` replaces the consistent items by the IDOL-style multi-reference ones
    (``training.multi_ref``, the paper's Fig. 4 baseline).
    """

    enabled: bool = True
    recipe: Literal[
        "official", "paper", "single_ref", "multi_ref", "memory_bank", "memory_bank_ma"
    ] = "official"
    plugin: Literal["ctcl", "multi_ref"] = "ctcl"
    positive_mode: Literal["prev_frame", "latest", "ma"] = "ma"
    ma_prob: float = 0.5
    future_positive: bool = True
    fix_future_guard: bool = False
    negative_major: Literal["none", "prev_frame_raw", "memory_ma"] = "prev_frame_raw"
    negative_supplementary: Literal["none", "local", "global"] = "local"
    num_negatives: int | None = None
    noise_prob: float = 0.0
    noise_source: Literal["any_query", "other_instances"] = "any_query"
    noise_as_anchor: bool = True
    detach_memory: bool = False
    cl_match: Literal["separate_unpadded", "criterion_padded"] = "separate_unpadded"
    fusion_window: int | None = None


@dataclass(frozen=True)
class OptimConfig:
    """``SOLVER.*``: AdamW, full-model clipping, warm-up + multi-step schedule, AMP."""

    lr: float = 1e-4
    weight_decay: float = 0.05
    weight_decay_norm: float = 0.0
    weight_decay_embed: float = 0.0
    backbone_multiplier: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_norm: float = 0.01
    warmup_iters: int = 10
    warmup_factor: float = 1.0
    steps: tuple[int, ...] = (6000, 12000)
    gamma: float = 0.1
    max_iter: int = 16000
    amp: bool = True
    grad_accum: int = 1


@dataclass(frozen=True)
class EvalConfig:
    """Periodic evaluation on a val split with the YouTube-VIS evaluator (0 = never)."""

    period: int = 2000
    kind: Literal["synthetic", "ytvis"] = "synthetic"
    synth_split: str = "val"
    synth_seed: int = 7
    synth_videos: int = 8
    ytvis_json: str = ""
    ytvis_frames: str = ""
    max_videos: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs (the output directory comes from the CLI)."""

    preset: str = "tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    cl: ClConfig = field(default_factory=ClConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 42
    checkpoint_period: int = 1000
    log_period: int = 20
    device: str = ""  # "" = cuda if available, else cpu
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML values (tuples as lists)."""
        return to_dict(self)


# --- typed construction -------------------------------------------------------------------


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert lists to tuples / ints to floats."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} matches none of {tp} ({'; '.join(errors)})")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(
            _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return config_from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported field type {tp}")  # pragma: no cover


def config_from_dict(cls: type, data: dict[str, Any], where: str = "", base: Any = None) -> Any:
    """Build dataclass ``cls`` from nested plain values with type checks.

    Args:
        cls: the dataclass type.
        data: field values (missing fields keep ``base``'s value, or the default).
        where: dotted path for error messages.
        base: an instance whose values fill the fields ``data`` does not name.

    Raises:
        ConfigError: unknown keys or ill-typed values.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown keys {unknown}; known: {sorted(names)}"
        )
    base = base if base is not None else cls()
    kwargs: dict[str, Any] = {}
    for name in names:
        path = f"{where}.{name}" if where else name
        if name not in data:
            kwargs[name] = getattr(base, name)
            continue
        value = data[name]
        current = getattr(base, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            kwargs[name] = config_from_dict(type(current), value, path, current)
        else:
            kwargs[name] = _coerce(value, hints[name], path)
    return cls(**kwargs)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Merge ``key.path=value`` strings into a raw config dict (values parsed as YAML)."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse value: {exc}") from exc
        _set_path(out, key.strip(), value)
    return out


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def build_config(data: dict[str, Any]) -> TrainConfig:
    """Turn a raw config dict into a ``TrainConfig`` (preset first, then the sections)."""
    preset = data.get("preset", TrainConfig.preset)
    if preset not in PRESETS:
        raise ConfigError(f"preset: unknown {preset!r}; choose from {sorted(PRESETS)}")
    model_cfg, pre_cfg, trk_cfg = PRESETS[preset]
    base = TrainConfig(preset=preset, model=model_cfg, preprocess=pre_cfg, tracker=trk_cfg)
    base = dataclasses.replace(base, cl=_recipe_base(data))
    cfg = config_from_dict(TrainConfig, data, base=base)
    try:
        validate_tracker_config(cfg.tracker)
    except TrackerOptionError as exc:
        raise ConfigError(f"tracker: {exc}") from exc
    if cfg.model.class_names and len(cfg.model.class_names) != cfg.model.num_classes:
        raise ConfigError("model.class_names must have model.num_classes entries")
    if cfg.data.clip_frames < 2 and cfg.cl.enabled:
        raise ConfigError("data.clip_frames must be >= 2 for the contrastive loss")
    errors = data_config_errors(cfg.data)
    if errors:
        raise ConfigError("; ".join(errors))
    return cfg


def _recipe_base(data: dict[str, Any]) -> ClConfig:
    """``ClConfig`` with every switch of the recipe ``data["cl"]["recipe"]`` names (default
    ``official``); ``config_from_dict`` then applies the switches the config names itself."""
    section = data.get("cl", {})
    if not isinstance(section, dict):
        return ClConfig()  # config_from_dict reports the malformed section
    name = section.get("recipe", ClConfig.recipe)
    if name not in RECIPE_NAMES:
        raise ConfigError(f"cl.recipe: unknown {name!r}; choose from {list(RECIPE_NAMES)}")
    return config_from_dict(ClConfig, {**recipe_switches(name), "recipe": name}, "cl")


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config and apply overrides.

    Args:
        path: config file, or None for the defaults.
        overrides: ``key.path=value`` strings, applied in order.

    Raises:
        ConfigError: unreadable file, unknown key, or a value of the wrong type.
    """
    data = _read_file(Path(path)) if path is not None else {}
    return build_config(apply_overrides(data, overrides))
