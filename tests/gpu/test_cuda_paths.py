"""The CUDA paths, checked against the official fixture (``pytest -m gpu`` on a CUDA machine).

Deselected by default (CI has no GPU). The fixture checkpoint goes through ``convert_official``
as in ``tests/model/test_parity.py``; here the network runs on the GPU in float32 (TF32 off),
in half precision with channels-last, inside the whole video pipeline, and the tracker runs on
CUDA tensors. Training takes a few AMP steps on the GPU and its checkpoint serves on the CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model import rle
from model.checkpoint import LoadedCheckpoint, load_checkpoint
from model.config import TrackerConfig
from model.official.convert import convert_official
from model.postprocess import VideoAccumulator
from model.runtime.backend import TorchBackend
from model.tracker.select import select_candidates
from model.tracker.state import init_state
from model.tracker.step import track_step
from model.video.runner import track_frames
from training.config import load_config
from training.loop import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _exact_float32() -> Iterator[None]:
    """TF32 would round matmul inputs to 10 mantissa bits; parity wants true float32."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def reference(fixtures_dir: Path) -> dict[str, Any]:
    return torch.load(fixtures_dir / "per_frame_outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def loaded(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedCheckpoint:
    out = tmp_path_factory.mktemp("converted")
    convert_official(fixtures_dir / "model_final.pth", fixtures_dir / "config.yaml", out)
    return load_checkpoint(out)


def _run_clips(backend: TorchBackend, pixels: torch.Tensor, clip: int) -> dict[str, torch.Tensor]:
    outs = [backend(pixels[s : s + clip]) for s in range(0, len(pixels), clip)]
    return {
        key: torch.cat([getattr(o, key) for o in outs]).cpu()
        for key in ("pred_logits", "pred_masks", "pred_embeds")
    }


def test_float32_on_cuda_matches_official(
    loaded: LoadedCheckpoint, reference: dict[str, Any]
) -> None:
    backend = TorchBackend(copy.deepcopy(loaded.segmenter), device="cuda")
    out = backend(reference["input_tensor"][:1])
    assert out.pred_logits.device.type == "cuda"
    ours = _run_clips(backend, reference["input_tensor"], loaded.preprocess_cfg.clip_frames)
    # GPU reductions sum in another order than the CPU: a few ulps more than the CPU bounds.
    for key, atol in (("pred_logits", 2e-4), ("pred_masks", 2e-3), ("pred_embeds", 2e-4)):
        worst = float((ours[key] - reference[key]).abs().max())
        assert worst <= atol, f"{key}: max abs diff {worst:.2e} > {atol:.0e}"


@pytest.mark.parametrize(("dtype", "prob_atol"), [("bfloat16", 0.15), ("float16", 0.1)])
def test_half_precision_channels_last_on_cuda(
    loaded: LoadedCheckpoint, reference: dict[str, Any], dtype: str, prob_atol: float
) -> None:
    backend = TorchBackend(
        copy.deepcopy(loaded.segmenter),
        device="cuda",
        dtype=dtype,  # type: ignore[arg-type]
        channels_last=True,
    )
    ours = _run_clips(backend, reference["input_tensor"], loaded.preprocess_cfg.clip_frames)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in ours.values())
    probs = ours["pred_logits"].softmax(-1)
    ref_probs = reference["pred_logits"].softmax(-1)
    assert float((probs - ref_probs).abs().max()) < prob_atol  # bf16 keeps 8 mantissa bits
    masks, ref_masks = ours["pred_masks"] > 0, reference["pred_masks"] > 0
    inter = (masks & ref_masks).flatten(2).sum(-1).float()
    union = (masks | ref_masks).flatten(2).sum(-1).float()
    agreement = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    assert float(agreement.mean()) > 0.97


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def test_video_on_cuda_equals_official_result(loaded: LoadedCheckpoint, fixtures_dir: Path) -> None:
    frames = np.load(fixtures_dir / "frames.npy")
    expected = json.loads((fixtures_dir / "video_result.json").read_text())
    backend = TorchBackend(copy.deepcopy(loaded.segmenter), device="cuda")
    result = track_frames(
        iter(frames),
        backend,
        loaded.model_cfg,
        loaded.preprocess_cfg,
        loaded.tracker_cfg,
        video_id=1,
    )
    assert [r["category_id"] for r in result.results] == [r["category_id"] for r in expected]
    for ours, ref in zip(result.results, expected, strict=True):
        assert ours["score"] == pytest.approx(ref["score"], abs=1e-4)
        for seg, ref_seg in zip(ours["segmentations"], ref["segmentations"], strict=True):
            a, b = rle.decode(seg).astype(bool), rle.decode(ref_seg).astype(bool)
            assert _iou(a, b) >= 0.999


def _track_case(case: dict[str, Any], device: str) -> tuple[list[list[int]], list[torch.Tensor]]:
    cfg = dataclasses.replace(TrackerConfig(), **case["tracker_overrides"])
    inputs = {k: v.to(device) for k, v in case["inputs"].items() if torch.is_tensor(v)}
    num_frames, _, num_logits = inputs["pred_logits"].shape
    state = init_state(
        inputs["pred_embeds"].shape[-1], num_logits - 1, cfg.cache_size, device=device
    )
    acc = VideoAccumulator(cfg, sizes=None, keep_mask_logits=True)
    ids = []
    for f in range(num_frames):
        det = select_candidates(
            inputs["pred_logits"][f], inputs["pred_masks"][f], inputs["pred_embeds"][f], cfg
        )
        state, assignment = track_step(state, det, cfg)
        acc.add_frame(det, assignment)
        ids.append(assignment.track_ids[assignment.kept].cpu().tolist())
        assert state.track_ids.device.type == torch.device(device).type
    return ids, [e.logits.cpu() for e in acc.finalize()]


def test_tracker_on_cuda_tensors_gives_the_official_ids(fixtures_dir: Path) -> None:
    data = torch.load(fixtures_dir / "tracker_cases.pt", weights_only=True)
    for case in data["cases"]:
        ids, logits = _track_case(case, "cuda")
        expected = [ref["assigned_ids"].tolist() for ref in case["per_frame"]]
        assert ids == expected, case["name"]
        torch.testing.assert_close(
            torch.stack(logits), case["outputs"]["pred_logits"], atol=1e-5, rtol=1e-5
        )


def test_amp_training_on_cuda_serves_on_cpu(tmp_path: Path) -> None:
    cfg = load_config(
        REPO / "training" / "configs" / "synth_test.yaml",
        ["device=cuda", "optim.amp=true", "optim.max_iter=40", "checkpoint_period=40"],
    )
    result = train(cfg, tmp_path / "run")
    assert len(result.losses) == 40 and all(np.isfinite(result.losses))
    assert np.mean(result.losses[-5:]) < 0.8 * np.mean(result.losses[:5]), result.losses
    assert result.checkpoint is not None
    served = load_checkpoint(result.checkpoint)  # weights saved as CPU tensors
    pixels = torch.randn(2, 3, 64, 96)
    out = TorchBackend(served.segmenter)(pixels)
    assert out.pred_logits.device.type == "cpu" and torch.isfinite(out.pred_masks).all()


def test_onnx_runtime_cuda_provider_matches_torch(
    loaded: LoadedCheckpoint, reference: dict[str, Any], tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider")
    from model.runtime.backend import OnnxBackend
    from model.runtime.export_onnx import export_onnx

    height, width = reference["input_tensor"].shape[-2:]
    path = export_onnx(copy.deepcopy(loaded.segmenter), tmp_path / "model.onnx", height, width)
    backend = OnnxBackend(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert backend.providers[0] == "CUDAExecutionProvider"
    out = backend(reference["input_tensor"][:2])
    torch.testing.assert_close(
        out.pred_logits.cpu(), reference["pred_logits"][:2], atol=1e-3, rtol=0
    )
