"""Build the segmenter from a ``ModelConfig``; presets for the released CTVIS settings.

``PRESETS`` maps a name to ``(ModelConfig, PreprocessConfig, TrackerConfig)``. Sizes follow the
official configs (``configs/{ytvis_2019,ytvis_2021,ovis}/CTVIS_{R50,SwinL}.yaml``): R50 uses
100 queries, Swin-L 200; category ids are ``label + 1``.
"""

from __future__ import annotations

from typing import cast

from torch import nn

from model.config import ModelConfig, PreprocessConfig, ResNetConfig, SwinConfig, TrackerConfig
from model.nn.backbone.resnet import ResNet
from model.nn.pixel_decoder import MSDeformAttnPixelDecoder
from model.nn.segmenter import Segmenter
from model.nn.transformer_decoder import MaskedTransformerDecoder

__all__ = [
    "OVIS_CLASSES",
    "PRESETS",
    "YTVIS_2019_CLASSES",
    "YTVIS_2021_CLASSES",
    "build_backbone",
    "build_segmenter",
]

YTVIS_2019_CLASSES: tuple[str, ...] = (
    "person", "giant_panda", "lizard", "parrot", "skateboard", "sedan", "ape", "dog", "snake",
    "monkey", "hand", "rabbit", "duck", "cat", "cow", "fish", "train", "horse", "turtle", "bear",
    "motorbike", "giraffe", "leopard", "fox", "deer", "owl", "surfboard", "airplane", "truck",
    "zebra", "tiger", "elephant", "snowboard", "boat", "shark", "mouse", "frog", "eagle",
    "earless_seal", "tennis_racket",
)  # fmt: skip

YTVIS_2021_CLASSES: tuple[str, ...] = (
    "airplane", "bear", "bird", "boat", "car", "cat", "cow", "deer", "dog", "duck",
    "earless_seal", "elephant", "fish", "flying_disc", "fox", "frog", "giant_panda", "giraffe",
    "horse", "leopard", "lizard", "monkey", "motorbike", "mouse", "parrot", "person", "rabbit",
    "shark", "skateboard", "snake", "snowboard", "squirrel", "surfboard", "tennis_racket",
    "tiger", "train", "truck", "turtle", "whale", "zebra",
)  # fmt: skip

# spelling ("Vehical") as in the official OVIS annotations
OVIS_CLASSES: tuple[str, ...] = (
    "Person", "Bird", "Cat", "Dog", "Horse", "Sheep", "Cow", "Elephant", "Bear", "Zebra",
    "Giraffe", "Poultry", "Giant_panda", "Lizard", "Parrot", "Monkey", "Rabbit", "Tiger", "Fish",
    "Turtle", "Bicycle", "Motorcycle", "Airplane", "Boat", "Vehical",
)  # fmt: skip

DATASET_CLASSES: dict[str, tuple[str, ...]] = {
    "ytvis19": YTVIS_2019_CLASSES,
    "ytvis21": YTVIS_2021_CLASSES,
    "ovis": OVIS_CLASSES,
}

SWIN_L = SwinConfig(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12)


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """Backbone module for ``cfg.backbone`` (exposes ``out_channels``: ``res2..res5`` -> C)."""
    if cfg.backbone == "resnet":
        return ResNet(cfg.resnet)
    if cfg.backbone == "swin":
        # imported lazily: the Swin trunk is only needed for Swin checkpoints
        from model.nn.backbone.swin import SwinBackbone

        return SwinBackbone(cfg.swin)
    raise ValueError(f"unknown backbone {cfg.backbone!r}; expected 'resnet' or 'swin'")


def build_segmenter(cfg: ModelConfig) -> Segmenter:
    """Build the (randomly initialised) CTVIS segmenter described by ``cfg``.

    Args:
        cfg: architecture; load weights separately (``model.checkpoint.load_checkpoint``).

    Returns:
        Segmenter whose ``state_dict()`` keys equal the official ones minus ``criterion.*``.
    """
    backbone = build_backbone(cfg)
    in_channels = cast(dict[str, int], backbone.out_channels)
    pixel_decoder = MSDeformAttnPixelDecoder(
        in_channels,
        conv_dim=cfg.conv_dim,
        mask_dim=cfg.mask_dim,
        num_layers=cfg.encoder_layers,
        num_heads=cfg.num_heads,
        ffn_dim=cfg.encoder_ffn_dim,
        num_points=cfg.encoder_points,
    )
    predictor = MaskedTransformerDecoder(
        in_channels=cfg.conv_dim,
        mask_dim=cfg.mask_dim,
        num_classes=cfg.num_classes,
        hidden_dim=cfg.hidden_dim,
        num_queries=cfg.num_queries,
        nheads=cfg.num_heads,
        dim_feedforward=cfg.dim_feedforward,
        dec_layers=cfg.decoder_layers,
        reid_hidden_dim=cfg.reid_hidden_dim,
        reid_layers=cfg.reid_head_layers,
        mask_pos_freqs=cfg.mask_pos_freqs,
    )
    return Segmenter(backbone, pixel_decoder, predictor)


def _released(dataset: str, backbone: str) -> tuple[ModelConfig, PreprocessConfig, TrackerConfig]:
    names = DATASET_CLASSES[dataset]
    model_cfg = ModelConfig(
        backbone="swin" if backbone == "swinl" else "resnet",
        swin=SWIN_L,
        num_queries=200 if backbone == "swinl" else 100,
        num_classes=len(names),
        class_names=names,
        category_ids=tuple(range(1, len(names) + 1)),
    )
    return model_cfg, PreprocessConfig(min_size=480, max_size=1333), TrackerConfig()


def _tiny() -> tuple[ModelConfig, PreprocessConfig, TrackerConfig]:
    model_cfg = ModelConfig(
        resnet=ResNetConfig(stem_out_channels=16, res2_out_channels=32, width_per_group=8),
        conv_dim=32,
        mask_dim=32,
        encoder_layers=1,
        encoder_ffn_dim=64,
        hidden_dim=32,
        num_heads=4,
        dim_feedforward=64,
        decoder_layers=3,
        num_queries=10,
        num_classes=len(YTVIS_2019_CLASSES),
        reid_hidden_dim=32,
        class_names=YTVIS_2019_CLASSES,
        category_ids=tuple(range(1, len(YTVIS_2019_CLASSES) + 1)),
    )
    return model_cfg, PreprocessConfig(min_size=64, max_size=1333), TrackerConfig()


PRESETS: dict[str, tuple[ModelConfig, PreprocessConfig, TrackerConfig]] = {
    "tiny": _tiny(),
    **{
        f"{dataset}_{backbone}": _released(dataset, backbone)
        for dataset in ("ytvis19", "ytvis21", "ovis")
        for backbone in ("r50", "swinl")
    },
}
