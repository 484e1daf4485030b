"""Numeric parity with the official CTVIS code on the tiny fixture checkpoint.

The official ``model_final.pth`` + ``config.yaml`` go through ``convert_official`` and
``load_checkpoint``; then preprocessing, every intermediate of frame 0 and the final outputs of
all 8 frames (run as clips of 5, like the official test path) are compared with
``per_frame_outputs.pt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.checkpoint import LoadedCheckpoint, load_checkpoint
from model.official.convert import convert_official
from model.preprocess import prepare_frames, resize_frame


def _assert_close(name: str, ours: torch.Tensor, ref: torch.Tensor, atol: float) -> float:
    """Assert max |ours - ref| <= atol with a message that says where it breaks."""
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    diff = (ours.float() - ref.float()).abs()
    worst = float(diff.max())
    if worst > atol:
        index = np.unravel_index(int(diff.argmax()), tuple(diff.shape))
        raise AssertionError(
            f"{name}: max abs diff {worst:.3e} > {atol:.1e} at {tuple(int(i) for i in index)} "
            f"(ours {float(ours[index]):.6f}, official {float(ref[index]):.6f}, "
            f"official max |x| {float(ref.abs().max()):.3f})"
        )
    return worst


@pytest.fixture(scope="module")
def reference(fixtures_dir: Path) -> dict[str, Any]:
    return torch.load(fixtures_dir / "per_frame_outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def frames(fixtures_dir: Path) -> np.ndarray:
    return np.load(fixtures_dir / "frames.npy")


@pytest.fixture(scope="module")
def loaded(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedCheckpoint:
    out = tmp_path_factory.mktemp("converted")
    convert_official(fixtures_dir / "model_final.pth", fixtures_dir / "config.yaml", out)
    return load_checkpoint(out)


@pytest.fixture(scope="module")
def frame0(loaded: LoadedCheckpoint, reference: dict[str, Any]) -> dict[str, Any]:
    with torch.no_grad():
        return loaded.segmenter.forward_intermediates(reference["input_tensor"][:1])


def test_config_read_from_official_yaml(loaded: LoadedCheckpoint, reference: dict[str, Any]):
    assert loaded.preprocess_cfg.min_size == reference["min_size_test"] == 104
    assert loaded.preprocess_cfg.max_size == reference["max_size_test"]
    assert loaded.preprocess_cfg.size_divisibility == reference["size_divisibility"]
    assert loaded.preprocess_cfg.clip_frames == reference["num_clip_frames"]
    assert torch.allclose(torch.tensor(loaded.preprocess_cfg.pixel_mean), reference["pixel_mean"])
    assert torch.allclose(torch.tensor(loaded.preprocess_cfg.pixel_std), reference["pixel_std"])
    assert loaded.model_cfg.num_queries == 16 and loaded.model_cfg.decoder_layers == 4
    assert loaded.tracker_cfg.match_threshold == 0.3


def test_resized_frames_are_exact(
    loaded: LoadedCheckpoint, frames: np.ndarray, reference: dict[str, Any]
):
    ours = np.stack([resize_frame(f, loaded.preprocess_cfg) for f in frames]).transpose(0, 3, 1, 2)
    official = reference["resized_images_uint8"].numpy()
    assert ours.shape == official.shape
    differing = int((ours != official).sum())
    assert differing == 0, f"{differing} resized uint8 values differ from the official PIL resize"


def test_input_tensor(loaded: LoadedCheckpoint, frames: np.ndarray, reference: dict[str, Any]):
    batch = prepare_frames(frames, loaded.preprocess_cfg)
    assert list(batch.image_sizes[0]) == reference["image_size_resized"]
    assert list(batch.original_sizes[0]) == reference["original_size"]
    assert list(batch.padded_size) == reference["padded_size"]
    _assert_close("input_tensor", batch.pixels, reference["input_tensor"], 1e-5)


def test_frame0_backbone(frame0: dict[str, Any], reference: dict[str, Any]):
    official = reference["frame0_intermediates"]["backbone"]
    assert sorted(frame0["backbone"]) == sorted(official)
    for name, ref in official.items():
        # relative bound: res5 activations reach ~100
        atol = 1e-5 * max(1.0, float(ref.abs().max()))
        _assert_close(f"backbone.{name}", frame0["backbone"][name][0], ref, atol)


def test_frame0_pixel_decoder(frame0: dict[str, Any], reference: dict[str, Any]):
    official = reference["frame0_intermediates"]
    _assert_close(
        "pixel_decoder.mask_features",
        frame0["mask_features"][0],
        official["pixel_decoder_mask_features"],
        1e-4,
    )
    refs = official["pixel_decoder_multi_scale_features"]
    assert len(frame0["multi_scale_features"]) == len(refs) == 3
    for level, (ours, ref) in enumerate(zip(frame0["multi_scale_features"], refs, strict=True)):
        _assert_close(f"pixel_decoder.multi_scale_features[{level}]", ours[0], ref, 1e-4)


def test_frame0_decoder_predictions(frame0: dict[str, Any], reference: dict[str, Any]):
    official = reference["frame0_intermediates"]["decoder_aux_outputs"]
    predictions = frame0["predictions"]
    assert len(predictions) == len(official) + 1, "expected one prediction per layer + 1"
    tolerances = {"pred_logits": 1e-4, "pred_masks": 1e-3, "pred_embeds": 1e-4}
    for i, ref in enumerate(official):
        for key, atol in tolerances.items():
            _assert_close(f"decoder prediction {i} {key}", predictions[i][key][0], ref[key], atol)
    aux = frame0["outputs"].aux_outputs
    assert len(aux) == len(official)


def test_final_outputs_in_clips_of_5(loaded: LoadedCheckpoint, reference: dict[str, Any]):
    pixels = reference["input_tensor"]
    clip = loaded.preprocess_cfg.clip_frames
    with torch.no_grad():
        outputs = [loaded.segmenter(pixels[s : s + clip]) for s in range(0, len(pixels), clip)]
    tolerances = {
        "pred_logits": 1e-4,
        "pred_masks": 1e-3,
        "pred_embeds": 1e-4,
        "pred_queries": 1e-4,
    }
    for key, atol in tolerances.items():
        ours = torch.cat([getattr(o, key) for o in outputs])
        _assert_close(key, ours, reference[key], atol)
