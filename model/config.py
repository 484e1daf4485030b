"""Frozen configuration dataclasses for the CTVIS network, preprocessing and tracker.

Every checkpoint we write stores these (``to_dict``) so that it can rebuild its model on its own.

Mapping from the reference (detectron2 / CTVIS) config keys to our fields:

=============================================  =========================================
reference key                                  our field
=============================================  =========================================
MODEL.RESNETS.DEPTH                            ResNetConfig.depth
MODEL.RESNETS.STEM_OUT_CHANNELS                ResNetConfig.stem_out_channels
MODEL.RESNETS.RES2_OUT_CHANNELS                ResNetConfig.res2_out_channels
MODEL.RESNETS.WIDTH_PER_GROUP                  ResNetConfig.width_per_group
MODEL.RESNETS.NUM_GROUPS                       ResNetConfig.num_groups
MODEL.SWIN.EMBED_DIM / DEPTHS / NUM_HEADS      SwinConfig.embed_dim / depths / num_heads
MODEL.SWIN.WINDOW_SIZE / PATCH_SIZE            SwinConfig.window_size / patch_size
MODEL.SWIN.MLP_RATIO                           SwinConfig.mlp_ratio
MODEL.SEM_SEG_HEAD.CONVS_DIM                   ModelConfig.conv_dim
MODEL.SEM_SEG_HEAD.MASK_DIM                    ModelConfig.mask_dim
MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS      ModelConfig.encoder_layers
MODEL.SEM_SEG_HEAD.NUM_CLASSES                 ModelConfig.num_classes
MODEL.MASK_FORMER.HIDDEN_DIM                   ModelConfig.hidden_dim
MODEL.MASK_FORMER.NHEADS                       ModelConfig.num_heads
MODEL.MASK_FORMER.DIM_FEEDFORWARD              ModelConfig.dim_feedforward
MODEL.MASK_FORMER.DEC_LAYERS                   ModelConfig.decoder_layers + 1
MODEL.MASK_FORMER.NUM_OBJECT_QUERIES           ModelConfig.num_queries
MODEL.MASK_FORMER.REID_HIDDEN_DIM              ModelConfig.reid_hidden_dim
MODEL.MASK_FORMER.NUM_REID_HEAD_LAYERS         ModelConfig.reid_head_layers
INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST            PreprocessConfig.min_size / max_size
MODEL.MASK_FORMER.SIZE_DIVISIBILITY            PreprocessConfig.size_divisibility
MODEL.PIXEL_MEAN / PIXEL_STD                   PreprocessConfig.pixel_mean / pixel_std
TEST.NUM_CLIP_FRAMES                           PreprocessConfig.clip_frames
MODEL.TRACKER.MATCH_METRIC                     TrackerConfig.match_metric
MODEL.TRACKER.MATCH_TYPE                       TrackerConfig.match_type
MODEL.TRACKER.FRAME_WEIGHT                     TrackerConfig.frame_weight
MODEL.TRACKER.TEMPORAL_SCORE_TYPE              TrackerConfig.temporal_score_type
MODEL.TRACKER.INFERENCE_SELECT_THR             TrackerConfig.select_threshold
MODEL.TRACKER.INIT_SCORE_THR                   TrackerConfig.init_score_threshold
MODEL.TRACKER.MASK_NMS_THR                     TrackerConfig.mask_nms_threshold
MODEL.TRACKER.MATCH_SCORE_THR                  TrackerConfig.match_threshold
MODEL.TRACKER.MEMORY_BANK.NUM_DEAD_FRAMES      TrackerConfig.num_dead_frames
MODEL.TRACKER.MEMORY_BANK.EMBED_TYPE           TrackerConfig.embed_type
MODEL.TRACKER.MEMORY_BANK.maximum_cache        TrackerConfig.cache_size
MODEL.TRACKER.NOISE_FRAME_NUM                  TrackerConfig.noise_frame_num
MODEL.TRACKER.SUPPRESS_FRAME_NUM               TrackerConfig.suppress_frame_num
MODEL.TRACKER.NONE_FRAME_NUM                   TrackerConfig.none_frame_num
=============================================  =========================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

BackboneKind = Literal["resnet", "swin"]


@dataclass(frozen=True)
class ResNetConfig:
    """detectron2 ResNet (stride in the 3x3 conv).

    ``norm`` is detectron2's ``RESNETS.NORM``: ``"FrozenBN"`` (the released checkpoints) or
    ``"GN"`` (32 groups, capped by the channel count; trainable, for training from scratch, where
    frozen identity statistics would leave the trunk without normalisation).
    """

    depth: int = 50
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    width_per_group: int = 64
    num_groups: int = 1
    norm: Literal["FrozenBN", "GN"] = "FrozenBN"
    stage_blocks: tuple[int, ...] = ()
    """Bottleneck blocks of res2..res5; empty: detectron2's for ``depth`` (50: 3, 4, 6, 3)."""


@dataclass(frozen=True)
class SwinConfig:
    """Swin Transformer backbone as vendored by Mask2Former (D2SwinTransformer)."""

    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    patch_size: int = 4
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the CTVIS segmenter (backbone, pixel decoder, decoder, heads).

    ``decoder_layers`` counts transformer decoder layers, i.e. the reference
    ``DEC_LAYERS - 1``. The embedding width equals ``hidden_dim`` (the re-id MLP maps
    hidden -> reid_hidden -> ... -> hidden). ``mask_pos_freqs`` > 0 is not in the
    reference (0 for every released checkpoint): Fourier position features appended to the
    mask features, so that masks can be weighted by position (``MaskedTransformerDecoder``).
    """

    backbone: BackboneKind = "resnet"
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    swin: SwinConfig = field(default_factory=SwinConfig)
    conv_dim: int = 256
    mask_dim: int = 256
    encoder_layers: int = 6
    encoder_ffn_dim: int = 1024
    encoder_points: int = 4
    hidden_dim: int = 256
    num_heads: int = 8
    dim_feedforward: int = 2048
    decoder_layers: int = 9
    num_queries: int = 100
    num_classes: int = 40
    reid_hidden_dim: int = 256
    reid_head_layers: int = 3
    mask_pos_freqs: int = 0
    class_names: tuple[str, ...] = ()
    category_ids: tuple[int, ...] = ()

    @property
    def embed_dim(self) -> int:
        """Width of the instance embeddings the re-id head produces."""
        return self.hidden_dim

    def category_id(self, label: int) -> int:
        """Dataset category id of contiguous label ``label`` (default ``label + 1``)."""
        if self.category_ids:
            return self.category_ids[label]
        return label + 1

    def class_name(self, label: int) -> str:
        """Human-readable class name of contiguous label ``label``."""
        if self.class_names:
            return self.class_names[label]
        return f"class_{label}"


@dataclass(frozen=True)
class PreprocessConfig:
    """Test-time preprocessing (official ``ResizeShortestEdge`` + normalisation + padding)."""

    min_size: int = 480
    max_size: int = 1333
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    clip_frames: int = 5


@dataclass(frozen=True)
class TrackerConfig:
    """Online tracker settings; defaults are the official CTVIS YTVIS/OVIS values.

    Three settings are not in the reference and are off (neutral) by default: ``max_tracks``
    bounds the live tracks of a session; ``box_iou_weight`` w > 0 adds a position cue,
    ``match = (1 - w) * embedding score + w * IoU(candidate box, track's last box)``, which
    tells apart look-alike instances that embeddings alone confuse (``docs/experiments.md``
    1f); ``mask_logit_offset`` d is added to every selected candidate's mask logits, so a
    pixel belongs to a mask where its probability exceeds ``sigmoid(-d)`` instead of 0.5
    (d > 0 grows the masks), in the mask NMS, the boxes, the output masks and the
    mask-quality rescoring alike (``docs/experiments.md`` 1j). Official checkpoints convert
    with w = 0 and d = 0, so their track ids and masks stay the reference's.
    """

    match_metric: Literal["bisoftmax", "cosine"] = "bisoftmax"
    match_type: Literal["greedy", "hungarian"] = "greedy"
    frame_weight: bool = True
    temporal_score_type: Literal["mean", "max"] = "mean"
    select_threshold: float = 0.01
    init_score_threshold: float = 0.01
    mask_nms_threshold: float = 0.6
    match_threshold: float = 0.3
    num_dead_frames: int = 20
    embed_type: Literal["similarity_guided", "momentum", "last", "temporally_weighted"] = (
        "similarity_guided"
    )
    cache_size: int = 10
    momentum: float = 0.75
    noise_frame_num: int = 8
    suppress_frame_num: int = 3
    none_frame_num: int = 2
    max_tracks: int = 256
    box_iou_weight: float = 0.0
    mask_logit_offset: float = 0.0


@dataclass(frozen=True)
class OptionRule:
    """Type and allowed values of one tracker option.

    ``kind`` is ``bool``, ``int``, ``float`` or ``str``; numbers must be finite and lie in
    ``[low, high]``; strings must be one of ``choices``.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        """The allowed values in words, e.g. ``an integer in [1, 64]``."""
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return "one of " + ", ".join(self.choices)
        word = "an integer" if self.kind is int else "a number"
        return f"{word} in [{self.low:g}, {self.high:g}]"


TRACKER_OPTION_RULES: dict[str, OptionRule] = {
    "match_metric": OptionRule(str, choices=("bisoftmax", "cosine")),
    "match_type": OptionRule(str, choices=("greedy", "hungarian")),
    "frame_weight": OptionRule(bool),
    "temporal_score_type": OptionRule(str, choices=("mean", "max")),
    "select_threshold": OptionRule(float, 0.0, 1.0),
    "init_score_threshold": OptionRule(float, 0.0, 1.0),
    "mask_nms_threshold": OptionRule(float, 0.0, 1.0),
    "match_threshold": OptionRule(float, -1.0, 1.0),
    "num_dead_frames": OptionRule(int, 0, 10_000),
    "embed_type": OptionRule(
        str, choices=("similarity_guided", "momentum", "last", "temporally_weighted")
    ),
    "cache_size": OptionRule(int, 1, 64),
    "momentum": OptionRule(float, 0.0, 1.0),
    "noise_frame_num": OptionRule(int, 0, 10_000),
    "suppress_frame_num": OptionRule(int, 0, 10_000),
    "none_frame_num": OptionRule(int, 0, 10_000),
    "max_tracks": OptionRule(int, 1, 1024),
    "box_iou_weight": OptionRule(float, 0.0, 1.0),
    "mask_logit_offset": OptionRule(float, -10.0, 10.0),
}
"""Every ``TrackerConfig`` field with its type and range (one table for the API, the CLI,
checkpoints and training configs)."""

MAX_CACHE_ROWS = 16_384
"""Ceiling of ``cache_size * max_tracks``: a session's raw-embedding cache (K x T x D floats)
stays within 16 MiB at D = 256 whatever the options."""


class TrackerOptionError(ValueError):
    """A tracker option with the wrong type or out of its range.

    Attributes:
        option: the option's name (``tracker`` when the whole value is not a mapping).
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def check_tracker_option(name: str, value: Any) -> Any:
    """``value`` as tracker option ``name`` takes it (ints become floats for float options).

    Raises:
        TrackerOptionError: unknown name, wrong type, non-finite number or out of range; the
            message names the option and its allowed values.
    """
    rule = TRACKER_OPTION_RULES.get(name)
    if rule is None:
        known = ", ".join(sorted(TRACKER_OPTION_RULES))
        raise TrackerOptionError(name, f"unknown tracker option {name!r}; known: {known}")
    allowed = f"tracker option {name!r} must be {rule.describe()}"
    if rule.kind is bool:
        if not isinstance(value, bool):
            raise TrackerOptionError(name, f"{allowed}; got {_shown(value)}")
        return value
    if rule.kind is str:
        if not isinstance(value, str) or value not in rule.choices:
            raise TrackerOptionError(name, f"{allowed}; got {_shown(value)}")
        return value
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if rule.kind is int and not isinstance(value, int):
        is_number = False
    if not is_number:
        raise TrackerOptionError(name, f"{allowed}; got {_shown(value)}")
    assert rule.low is not None and rule.high is not None
    # exact for ints of any size; NaN and the infinities fail it (the bounds are finite)
    if not rule.low <= value <= rule.high:
        raise TrackerOptionError(name, f"{allowed}; got {_shown(value)}")
    return float(value) if rule.kind is float else int(value)


def _shown(value: Any) -> str:
    """A short rendering of a client-supplied value for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def tracker_config_from_dict(
    data: Mapping[str, Any], base: TrackerConfig | None = None
) -> TrackerConfig:
    """``base`` (default: ``TrackerConfig()``) with the options in ``data``, each checked.

    The one way a tracker configuration is read from outside: session options of the API,
    the state a frame stream carries to a worker, ``ctvis track --tracker``, checkpoints and
    training configs all come through here.

    Raises:
        TrackerOptionError: see ``check_tracker_option``; also when ``data`` is not a mapping
            or ``cache_size * max_tracks`` exceeds ``MAX_CACHE_ROWS``.
    """
    if not isinstance(data, Mapping):
        raise TrackerOptionError("tracker", "tracker options must be an object of name: value")
    clean = {str(name): check_tracker_option(str(name), value) for name, value in data.items()}
    cfg = dataclasses.replace(base or TrackerConfig(), **clean)
    if cfg.cache_size * cfg.max_tracks > MAX_CACHE_ROWS:
        raise TrackerOptionError(
            "cache_size",
            f"cache_size * max_tracks must be at most {MAX_CACHE_ROWS}; "
            f"got {cfg.cache_size} * {cfg.max_tracks}",
        )
    return cfg


def validate_tracker_config(cfg: TrackerConfig) -> TrackerConfig:
    """``cfg`` itself when every field is within ``TRACKER_OPTION_RULES`` (else raises)."""
    return tracker_config_from_dict(to_dict(cfg))


def to_dict(cfg: Any) -> dict[str, Any]:
    """Serialise a (nested) config dataclass to plain JSON-compatible values."""
    out = dataclasses.asdict(cfg)
    return _tuples_to_lists(out)


def _tuples_to_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tuples_to_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tuples_to_lists(v) for v in value]
    return value


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild config dataclass ``cls`` from ``to_dict`` output; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = from_dict(type(default), value)
        elif isinstance(default, tuple):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)
