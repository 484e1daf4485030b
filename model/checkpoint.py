"""Our checkpoint format: save, check and load (conversion of official checkpoints is in
``model.official.convert``).

A checkpoint is a directory holding ``model.safetensors`` (the segmenter's state dict, keys as in
the official models minus ``criterion.*``) and ``config.json`` (model, preprocessing and tracker
configs, class names, provenance, format version), so it rebuilds its model on its own.

Loading never executes code from a file: safetensors and JSON for our format,
``torch.load(weights_only=True)`` for official ``.pth`` files, a restricted unpickler that admits
only numpy arrays and plain containers for Mask2Former ``.pkl`` files, and ``yaml.safe_load`` for
configs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.config import (
    ModelConfig,
    PreprocessConfig,
    TrackerConfig,
    from_dict,
    to_dict,
    tracker_config_from_dict,
)
from model.nn.build import build_segmenter
from model.nn.segmenter import Segmenter

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "LoadedCheckpoint",
    "check_checkpoint_dir",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_MAX_LISTED = 8  # keys listed per problem in error messages


class CheckpointError(ValueError):
    """A checkpoint or config cannot be read, is unsafe, or does not match the model."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A segmenter rebuilt from a checkpoint, in eval mode, with the configs it was saved with."""

    segmenter: Segmenter
    model_cfg: ModelConfig
    preprocess_cfg: PreprocessConfig
    tracker_cfg: TrackerConfig
    meta: dict[str, Any]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


# --- matching weights to the model --------------------------------------------------------


def match_weights(
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    source: str,
    lenient: bool = False,
    key_map: Callable[[str], str | None] | None = None,
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Map weights onto ``model``'s keys and check them.

    ``key_map`` renames a source key to ours (None drops it); our own checkpoints use our keys
    as they are, official ones pass ``model.official.weights.official_key_to_ours``.

    ``lenient`` (COCO Mask2Former ``.pkl`` files): a shape-mismatched ``class_embed`` or query
    embedding and a missing ``reid_embed`` are skipped (left at init). Otherwise, and for every
    other key, the match must be exact.

    Returns:
        (state dict to load, keys left at init, source keys skipped).
    """
    expected = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        ours = key if key_map is None else key_map(key)
        if ours is not None:
            mapped[ours] = value
    num_classes = expected["sem_seg_head.predictor.class_embed.weight"].shape[0] - 1
    got = mapped.get("sem_seg_head.predictor.class_embed.weight")
    if not lenient and got is not None and got.shape[0] != num_classes + 1:
        raise CheckpointError(
            f"class-count mismatch: the config says NUM_CLASSES={num_classes} but the weights "
            f"in {source} have {got.shape[0] - 1} classes (class_embed {tuple(got.shape)})"
        )
    skippable = ("class_embed.", "predictor.query_feat.", "predictor.query_embed.")
    missing = [k for k in expected if k not in mapped]
    left_at_init = [k for k in missing if lenient and ".reid_embed." in k]
    missing = [k for k in missing if k not in left_at_init]
    unexpected = [k for k in mapped if k not in expected]
    mismatched, skipped = [], []
    for key in [k for k in mapped if k in expected]:
        if tuple(mapped[key].shape) != tuple(expected[key].shape):
            if lenient and any(s in key for s in skippable):
                skipped.append(key)
            else:
                shapes = f"{tuple(mapped[key].shape)} vs model {tuple(expected[key].shape)}"
                mismatched.append(f"{key} {shapes}")
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listed(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_listed(mismatched)}")
    if problems:
        raise CheckpointError(
            f"weights in {source} do not match the model built from the config "
            "(wrong config for these weights?): " + "; ".join(problems)
        )
    state = {k: v for k, v in mapped.items() if k not in skipped}
    return state, left_at_init + skipped, skipped


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        own = model.state_dict()
        for key, value in state.items():
            own[key].copy_(value.to(own[key].dtype))


def _has_meta_tensors(model: torch.nn.Module) -> bool:
    for module in model.modules():
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        tensors += [v for v in vars(module).values() if isinstance(v, torch.Tensor)]
        if any(t.is_meta for t in tensors):
            return True
    return False


def _build_with_weights(
    model_cfg: ModelConfig, weights: dict[str, torch.Tensor], source: str
) -> Segmenter:
    """Build the segmenter and load ``weights`` strictly, skipping the random init if possible.

    The model is first built on the ``meta`` device (no allocation, no init: Swin-L takes ~10 s
    to initialise on CPU) and the loaded tensors are assigned; if anything stays on ``meta``
    (a tensor that is not in the state dict) it is rebuilt normally.
    """
    with torch.device("meta"):
        segmenter = build_segmenter(model_cfg)
    state, _, _ = match_weights(segmenter, weights, source)
    segmenter.load_state_dict(state, strict=True, assign=True)
    if not _has_meta_tensors(segmenter):
        return segmenter
    segmenter = build_segmenter(model_cfg)  # pragma: no cover - no module has such a tensor
    load_state_into(segmenter, state)  # pragma: no cover
    return segmenter  # pragma: no cover


# --- our format ---------------------------------------------------------------------------


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    pre_cfg: PreprocessConfig,
    trk_cfg: TrackerConfig,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` and its configs as a checkpoint directory.

    Args:
        directory: output directory (created if needed; existing files are replaced).
        model: the segmenter (its ``state_dict`` is saved as float tensors on CPU).
        model_cfg: architecture that rebuilds ``model``.
        pre_cfg: preprocessing settings.
        trk_cfg: tracker settings.
        provenance: JSON-serialisable notes (source file, sha256, converter ...).

    Returns:
        The checkpoint directory.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format_version": "1"})
    config = {
        "format_version": FORMAT_VERSION,
        "model": to_dict(model_cfg),
        "preprocess": to_dict(pre_cfg),
        "tracker": to_dict(trk_cfg),
        "class_names": list(model_cfg.class_names),
        "category_ids": list(model_cfg.category_ids),
        "provenance": provenance or {},
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a checkpoint: {CONFIG_FILE} is missing")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported checkpoint format_version {version!r} "
            f"(this code reads version {FORMAT_VERSION})"
        )
    return config


def check_checkpoint_dir(directory: str | Path) -> None:
    """Cheap checks that ``directory`` holds a checkpoint of ours, without loading weights.

    Raises:
        CheckpointError: one line naming the path and what is wrong with it.
    """
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"{directory}: no such directory")
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (give the checkpoint's directory)")
    config = _read_config(directory)
    for section in ("model", "preprocess", "tracker"):
        if not isinstance(config.get(section), dict):
            raise CheckpointError(f"{directory / CONFIG_FILE}: the {section!r} section is missing")
    if not (directory / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the segmenter saved by ``save_checkpoint`` and load its weights strictly.

    Args:
        directory: checkpoint directory (``model.safetensors`` + ``config.json``).
        device: where to put the model.

    Returns:
        LoadedCheckpoint with the segmenter in eval mode.

    Raises:
        CheckpointError: missing/unreadable files, unknown version, or weights that do not
            match the stored config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config = _read_config(directory)
    try:
        model_cfg = from_dict(ModelConfig, config["model"])
        pre_cfg = from_dict(PreprocessConfig, config["preprocess"])
        trk_cfg = tracker_config_from_dict(config["tracker"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: invalid config: {exc}") from exc
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {weights_path}: {exc}") from exc
    segmenter = _build_with_weights(model_cfg, weights, str(weights_path))
    meta = {k: config.get(k) for k in ("format_version", "class_names", "category_ids")}
    meta["provenance"] = config.get("provenance") or {}
    return LoadedCheckpoint(segmenter.to(device).eval(), model_cfg, pre_cfg, trk_cfg, meta)
