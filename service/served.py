"""Loading the served model: a checkpoint directory, or the bundled demo checkpoint."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from model.config import ModelConfig, PreprocessConfig, TrackerConfig, to_dict
from model.runtime.backend import Precision, TorchBackend
from model.structures import FrameOutputs
from service.settings import Settings

log = logging.getLogger("ctvis.service")

RANDOM_WEIGHTS_WARNING = (
    "NO CHECKPOINT CONFIGURED and this installation has no bundled demo checkpoint: serving "
    "the 'tiny' preset with RANDOM WEIGHTS. Its outputs are meaningless. Set CTVIS_CHECKPOINT "
    "(or --checkpoint) to a checkpoint directory made by `ctvis convert` or by training."
)
DEMO_MODEL_WARNING = (
    "This is the bundled demo model: a tiny network trained only on synthetic shapes (circle, "
    "square, triangle, star, hexagon, cross). It finds nothing else and is not meant for real "
    "video; serve a real model with CTVIS_CHECKPOINT (or --checkpoint)."
)
RANDOM_CHECKPOINT = "tiny-random"
"""``checkpoint`` value that asks for the random-weight tiny preset explicitly (tests, benches)."""


@dataclass
class ServedModel:
    """A loaded segmenter with the configs that travel with it."""

    name: str
    segmenter: torch.nn.Module
    model_cfg: ModelConfig
    preprocess_cfg: PreprocessConfig
    tracker_cfg: TrackerConfig
    device: str
    warnings: list[str] = field(default_factory=list)
    random_weights: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    backend: TorchBackend | None = None
    """How ``forward`` runs the segmenter (precision, oneDNN); set by ``load_served_model``."""

    def forward(self, pixels: torch.Tensor) -> FrameOutputs:
        """The segmenter on ``pixels`` (Bx3xHxW) through ``backend``; float32 outputs."""
        if self.backend is None:
            raise RuntimeError("ServedModel.backend is unset: load it with load_served_model")
        return self.backend(pixels)

    @cached_property
    def model_id(self) -> str:
        """Identifies the weights + config; a session's state is only valid for this id."""
        blob = json.dumps(
            {"name": self.name, "config": to_dict(self.model_cfg), "src": self.provenance},
            sort_keys=True,
            default=str,
        )
        return f"{self.name}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def describe(self) -> dict[str, Any]:
        """JSON description for ``GET /v1/models``."""
        cfg = self.model_cfg
        return {
            "name": self.name,
            "model_id": self.model_id,
            "backbone": cfg.backbone,
            "num_queries": cfg.num_queries,
            "num_classes": cfg.num_classes,
            "embed_dim": cfg.embed_dim,
            "classes": [
                {"category_id": cfg.category_id(i), "name": cfg.class_name(i)}
                for i in range(cfg.num_classes)
            ],
            "device": self.device,
            "dtype": self.backend.dtype if self.backend is not None else None,
            # kernel behind the float32 CPU linear layers (CTVIS_ONEDNN_LINEAR's outcome)
            "linear_kernel": (
                "onednn"
                if self.backend is not None and self.backend.onednn_linear_layers
                else "default"
            ),
            "random_weights": self.random_weights,
            "warnings": list(self.warnings),
            "provenance": self.provenance,
        }


def load_served_model(
    checkpoint: str | None,
    device: str = "cpu",
    dtype: Precision = "float32",
    onednn_linear: bool | None = None,
) -> ServedModel:
    """Load ``checkpoint`` (a directory in our format); when None, the bundled demo checkpoint.

    ``"tiny-random"`` (or None in an installation without the demo weights) gives the tiny
    preset with random weights; a loud warning then goes to the log and into the model
    description so that nobody mistakes its output for a real model's.

    Args:
        checkpoint: checkpoint directory, ``"tiny-random"``, or None (the demo).
        device: torch device of the forward pass.
        dtype: ``float32``, ``float16`` or ``bfloat16`` (half types run under autocast).
        onednn_linear: for float32 on the CPU, run the larger linear layers through oneDNN;
            None (default): where it is the faster one (``TorchBackend``'s rule); False keeps
            MKL.
    """
    served = _load(checkpoint, device)
    served.backend = TorchBackend(served.segmenter, device, dtype, onednn_linear=onednn_linear)
    log.info(
        "model %s on %s, %s; linear layers: %s",
        served.name,
        device,
        dtype,
        f"oneDNN ({served.backend.onednn_linear_layers})"
        if served.backend.onednn_linear_layers
        else "default kernels",
    )
    return served


def load_served_model_for(settings: Settings) -> ServedModel:
    """``load_served_model`` with the model settings of ``ctvis serve`` / ``ctvis worker``.

    Both processes load through here, so a model setting (``CTVIS_DTYPE``, ``CTVIS_DEVICE``,
    ``CTVIS_ONEDNN_LINEAR``) cannot be applied by one and forgotten by the other.
    """
    return load_served_model(
        settings.checkpoint, settings.device, settings.dtype, settings.onednn_linear_choice
    )


def _load(checkpoint: str | None, device: str) -> ServedModel:
    name = None
    if not checkpoint:
        from model.demo import demo_checkpoint

        bundled = demo_checkpoint()
        if bundled is not None:
            checkpoint, name = str(bundled), "ctvis-demo"
    if checkpoint and checkpoint != RANDOM_CHECKPOINT:
        from model.checkpoint import load_checkpoint

        loaded = load_checkpoint(checkpoint, device=device)
        loaded.segmenter.eval()
        return ServedModel(
            name=name or str(checkpoint).rstrip("/").rsplit("/", 1)[-1],
            segmenter=loaded.segmenter,
            model_cfg=loaded.model_cfg,
            preprocess_cfg=loaded.preprocess_cfg,
            tracker_cfg=loaded.tracker_cfg,
            device=device,
            warnings=[DEMO_MODEL_WARNING] if name == "ctvis-demo" else [],
            provenance=dict(getattr(loaded, "meta", {}) or {}),
        )
    from model.nn.build import PRESETS, build_segmenter

    model_cfg, pre_cfg, trk_cfg = PRESETS["tiny"]
    torch.manual_seed(0)
    segmenter = build_segmenter(model_cfg).to(device).eval()
    log.warning(RANDOM_WEIGHTS_WARNING)
    return ServedModel(
        name="tiny-random",
        segmenter=segmenter,
        model_cfg=model_cfg,
        preprocess_cfg=pre_cfg,
        tracker_cfg=trk_cfg,
        device=device,
        warnings=[RANDOM_WEIGHTS_WARNING],
        random_weights=True,
    )
