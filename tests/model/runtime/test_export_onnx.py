"""ONNX export: the exported graph matches PyTorch, with dynamic batch, height and width.

The network is the tiny official fixture model (its weights are deliberately non-trivial, so
deformable sampling and masked attention really depend on the input).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from model.config import ModelConfig, ResNetConfig, SwinConfig
from model.nn.build import build_segmenter
from model.nn.ops.onednn_linear import OneDnnLinear
from model.nn.segmenter import Segmenter
from model.runtime.backend import OnnxBackend, TorchBackend
from model.runtime.export_forms import EXPORT_FORMS, use_export_forms
from model.runtime.export_onnx import INPUT_NAME, OUTPUT_NAMES, export_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# Architecture of tests/fixtures/official_ctvis/model_final.pth (see its README).
FIXTURE_CONFIG = ModelConfig(
    resnet=ResNetConfig(stem_out_channels=16, res2_out_channels=32, width_per_group=8),
    conv_dim=64,
    mask_dim=32,
    encoder_layers=2,
    encoder_ffn_dim=1024,
    hidden_dim=64,
    num_heads=4,
    dim_feedforward=128,
    decoder_layers=4,
    num_queries=16,
    num_classes=40,
    reid_hidden_dim=48,
)
FIELDS = ("pred_logits", "pred_masks", "pred_embeds")
SWIN_CONFIG = ModelConfig(
    backbone="swin",
    swin=SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7),
    conv_dim=32,
    mask_dim=32,
    encoder_layers=1,
    encoder_ffn_dim=32,
    hidden_dim=32,
    num_heads=4,
    dim_feedforward=32,
    decoder_layers=2,
    num_queries=4,
    num_classes=3,
    reid_hidden_dim=32,
)


@pytest.fixture(scope="module")
def segmenter(fixtures_dir: Path) -> Segmenter:
    state = torch.load(fixtures_dir / "model_final.pth", weights_only=True)["model"]
    state = {k: v for k, v in state.items() if not k.startswith("criterion.")}
    model = build_segmenter(FIXTURE_CONFIG)
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def onnx_path(segmenter: Segmenter, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(segmenter, tmp_path_factory.mktemp("onnx") / "model.onnx", 128, 160)


def test_graph_has_fixed_names_and_dynamic_axes(onnx_path: Path) -> None:
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    assert [i.name for i in graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("shape", [(1, 3, 128, 160), (2, 3, 96, 128)])
def test_onnx_runtime_matches_pytorch(
    segmenter: Segmenter, onnx_path: Path, fixtures_dir: Path, shape: tuple[int, ...]
) -> None:
    frames = torch.load(fixtures_dir / "per_frame_outputs.pt", weights_only=True)["input_tensor"]
    b, _, h, w = shape
    pixels = frames[:b, :, :h, :w].contiguous()
    expected = TorchBackend(segmenter)(pixels)
    got = OnnxBackend(onnx_path, providers=["CPUExecutionProvider"], num_threads=2)(pixels)
    for name in FIELDS:
        ours, ref = getattr(got, name), getattr(expected, name)
        assert ours.dtype == torch.float32
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=1e-3, rtol=1e-3, msg=name)
    assert expected.pred_masks.shape[-2:] == (h // 4, w // 4)


def test_export_restores_training_flag(segmenter: Segmenter, tmp_path: Path) -> None:
    tiny = build_segmenter(
        ModelConfig(
            resnet=ResNetConfig(stem_out_channels=16, res2_out_channels=32, width_per_group=8),
            conv_dim=32,
            mask_dim=32,
            encoder_layers=1,
            encoder_ffn_dim=32,
            hidden_dim=32,
            num_heads=4,
            dim_feedforward=32,
            decoder_layers=1,
            num_queries=4,
            num_classes=3,
            reid_hidden_dim=32,
        )
    ).train()
    path = export_onnx(tiny, tmp_path / "sub" / "tiny.onnx", 64, 64, opset=18)
    assert path.exists()
    assert tiny.training
    assert not any(type(m).__module__ == "model.runtime.export_forms" for m in tiny.modules())


def test_export_forms_change_classes_only() -> None:
    """Every module with an export form gets it (a Swin segmenter has one of each but the
    oneDNN linear layer); parameters, buffers and state-dict keys stay as they are."""
    torch.manual_seed(0)
    model = build_segmenter(SWIN_CONFIG).eval()
    exported = copy.deepcopy(model)
    count = use_export_forms(exported)
    eager_types = [type(m) for m in model.modules()]
    assert count == sum(t in EXPORT_FORMS for t in eager_types) > 0
    assert {t for t in eager_types if t in EXPORT_FORMS} == set(EXPORT_FORMS) - {OneDnnLinear}
    for eager_module, export_module in zip(model.modules(), exported.modules(), strict=True):
        assert type(export_module) is EXPORT_FORMS.get(type(eager_module), type(eager_module))
    state, exported_state = model.state_dict(), exported.state_dict()
    assert list(state) == list(exported_state)
    assert all(torch.equal(state[k], exported_state[k]) for k in state)


def test_swin_segmenter_exports_with_dynamic_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_segmenter(SWIN_CONFIG).eval()
    backend = OnnxBackend(export_onnx(model, tmp_path / "swin.onnx", 96, 128), num_threads=2)
    # 160x64 needs window padding at every stage and a different number of windows.
    for shape in [(1, 3, 96, 128), (2, 3, 160, 64)]:
        pixels = torch.randn(*shape)
        expected, got = TorchBackend(model)(pixels), backend(pixels)
        for name in FIELDS:
            torch.testing.assert_close(
                getattr(got, name), getattr(expected, name), atol=1e-3, rtol=1e-3
            )
