"""``ctvis export-onnx``: exports a preset or checkpoint and reports bad input with an exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_exports_tiny_preset_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny.onnx"
    code = main(
        [
            "export-onnx",
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--height",
            "64",
            "--width",
            "96",
            "--check",
        ]
    )
    assert code == 0
    assert out.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "traced at 64x96" in printed
    assert "pred_masks: max |onnx - torch|" in printed


def test_rejects_sizes_off_the_grid(tmp_path: Path) -> None:
    code = main(
        ["export-onnx", "--preset", "tiny", "--out", str(tmp_path / "x.onnx"), "--height", "70"]
    )
    assert code == 2


def test_unknown_preset(tmp_path: Path) -> None:
    assert main(["export-onnx", "--preset", "nope", "--out", str(tmp_path / "x.onnx")]) == 2


def test_missing_checkpoint_is_an_error(tmp_path: Path) -> None:
    code = main(["export-onnx", "--checkpoint", str(tmp_path / "none"), "--out", "x.onnx"])
    assert code == 1


def test_out_is_required_with_a_preset() -> None:
    assert main(["export-onnx", "--preset", "tiny"]) == 2


def test_checkpoint_export_defaults_to_model_onnx_inside_it(tmp_path: Path) -> None:
    from model.checkpoint import save_checkpoint
    from model.nn.build import PRESETS, build_segmenter

    model_cfg, pre_cfg, trk_cfg = PRESETS["tiny"]
    ckpt = save_checkpoint(
        tmp_path / "ckpt", build_segmenter(model_cfg), model_cfg, pre_cfg, trk_cfg
    )
    assert main(["export-onnx", "--checkpoint", str(ckpt), "--height", "64", "--width", "64"]) == 0
    assert (ckpt / "model.onnx").is_file()
