"""``ctvis track`` end to end with the tiny preset (random weights): formats, modes, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cli.main import main
from model.checkpoint import save_checkpoint
from model.nn.build import PRESETS, build_segmenter
from model.video.overlay import OverlayWriter
from model.video.reader import FrameSource


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_cfg, pre_cfg, trk_cfg = PRESETS["tiny"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        segmenter = build_segmenter(model_cfg)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), segmenter, model_cfg, pre_cfg, trk_cfg)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 frames, 64x80, a red square moving right."""
    path = tmp_path_factory.mktemp("video") / "moving.mp4"
    with OverlayWriter(path, fps=12, size=(80, 64)) as writer:
        for i in range(8):
            frame = np.full((64, 80, 3), 30, dtype=np.uint8)
            frame[10:30, 5 + 5 * i : 25 + 5 * i] = (200, 50, 50)
            writer.write(frame)
    return path


def _check_results(path: Path, video_ids: set[int], num_frames: int) -> list[dict]:
    results = json.loads(path.read_text())
    assert isinstance(results, list)
    for entry in results:
        assert entry["video_id"] in video_ids
        assert 1 <= entry["category_id"] <= 40 and 0.0 <= entry["score"] <= 1.0
        assert len(entry["segmentations"]) == num_frames
        assert all(isinstance(s["counts"], str) for s in entry["segmentations"])
    return results


def test_video_with_stride_overlay(checkpoint: Path, video: Path, tmp_path: Path) -> None:
    out, overlay = tmp_path / "res" / "results.json", tmp_path / "overlay.mp4"
    argv = ["track", str(video), "--checkpoint", str(checkpoint), "--out", str(out)]
    argv += ["--overlay", str(overlay), "--overlay-score", "0", "--frame-stride", "2"]
    argv += ["--max-frames", "3", "--video-id", "7", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    results = _check_results(out, {7}, 3)
    assert len(results) in (0, 40)  # top-k over (track, class) with k = num_classes
    written = FrameSource(overlay)
    assert written.num_frames == 3 and written.fps == pytest.approx(6)


def test_dataset_mode_and_evaluate(
    checkpoint: Path, real_sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt = json.loads((real_sample_dir / "instances.json").read_text())
    video = gt["videos"][2]  # dog
    video["file_names"] = video["file_names"][:3]
    video["length"] = 3
    annotations = [a for a in gt["annotations"] if a["video_id"] == video["id"]]
    for ann in annotations:
        for key in ("segmentations", "areas", "bboxes"):
            ann[key] = ann[key][:3]
    subset = {**gt, "videos": [video], "annotations": annotations}
    gt_path, out = tmp_path / "gt.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(subset))
    argv = ["track", "--dataset", str(gt_path), "--frames-root"]
    argv += [str(real_sample_dir / "JPEGImages"), "--checkpoint", str(checkpoint)]
    argv += ["--out", str(out), "--device", "cpu", "--no-progress", "--evaluate"]
    assert main(argv) == 0
    _check_results(out, {video["id"]}, 3)
    assert "AP50" in capsys.readouterr().out


def test_onnx_backend_matches_torch(checkpoint: Path, video: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from model.checkpoint import load_checkpoint
    from model.runtime.export_onnx import export_onnx

    onnx_path = export_onnx(load_checkpoint(checkpoint).segmenter, tmp_path / "m.onnx", 64, 96)
    common = [str(video), "--checkpoint", str(checkpoint), "--max-frames", "4"]
    common += ["--device", "cpu", "--no-progress"]
    torch_out, onnx_out = tmp_path / "torch.json", tmp_path / "onnx.json"
    assert main(["track", *common, "--out", str(torch_out)]) == 0
    argv = ["track", *common, "--out", str(onnx_out), "--backend", "onnx"]
    assert main([*argv, "--onnx-model", str(onnx_path)]) == 0
    a, b = _check_results(torch_out, {1}, 4), _check_results(onnx_out, {1}, 4)
    assert len(a) == len(b)
    assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-4)


def test_tracker_overrides_change_the_run(checkpoint: Path, video: Path, tmp_path: Path) -> None:
    common = [str(video), "--checkpoint", str(checkpoint), "--device", "cpu", "--no-progress"]
    plain, strict = tmp_path / "plain.json", tmp_path / "strict.json"
    assert main(["track", *common, "--out", str(plain)]) == 0
    assert len(_check_results(plain, {1}, 8)) == 40  # the checkpoint's own settings: tracks
    # no detection scores above 1, so with this threshold no track can ever start
    argv = ["track", *common, "--out", str(strict), "--tracker", "init_score_threshold=1.0"]
    assert main([*argv, "--tracker", "box_iou_weight=0.5"]) == 0
    assert _check_results(strict, {1}, 8) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give a video file"),
        (["MISSING"], "no such file"),
        (["JUNK"], "cannot open as a video"),
        (["VIDEO", "--dataset", "x.json"], "not both"),
        (["--dataset", "x.json"], "needs --frames-root"),
        (["VIDEO", "--frame-stride", "0"], "--frame-stride"),
        (["VIDEO", "--backend", "onnx"], "no ONNX model"),
        (["VIDEO", "--evaluate"], "--evaluate needs --dataset"),
        (["VIDEO", "--tracker", "box_iou_weight=2"], "'box_iou_weight' must be a number in [0, 1]"),
        (["VIDEO", "--tracker", "no_such_option=1"], "unknown tracker option 'no_such_option'"),
        (["VIDEO", "--tracker", "match_type=sometimes"], "must be one of greedy, hungarian"),
        (["VIDEO", "--tracker", "match_threshold"], "key.path=value"),
    ],
)
def test_errors_exit_1(
    checkpoint: Path,
    video: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    names = {"MISSING": str(tmp_path / "missing.mp4"), "JUNK": str(junk), "VIDEO": str(video)}
    argv = ["track", *[names.get(x, x) for x in extra], "--checkpoint", str(checkpoint)]
    assert main([*argv, "--out", str(tmp_path / "r.json"), "--device", "cpu"]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_bad_checkpoint_exit_1(
    video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["track", str(video), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "r.json")]
    assert main(argv) == 1
    assert "not a checkpoint" in capsys.readouterr().err


def test_overlay_draws_results_entries_from_the_shared_default(
    checkpoint: Path, video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--overlay`` draws results entries at or above ``OVERLAY_MIN_SCORE`` (or the flag)."""
    from model.video import overlay as runner

    drawn: list[tuple[float, list[int]]] = []
    real = runner.overlay_tracks

    def spy(result: Any, model_cfg: Any, min_score: float) -> list[Any]:
        tracks = real(result, model_cfg, min_score)
        drawn.append((min_score, sorted(t[0] for t in tracks)))
        return tracks

    monkeypatch.setattr(runner, "overlay_tracks", spy)
    common = [str(video), "--checkpoint", str(checkpoint), "--device", "cpu", "--no-progress"]
    out = tmp_path / "results.json"
    common += ["--out", str(out), "--overlay", str(tmp_path / "overlay.mp4")]
    assert main(["track", *common]) == 0
    assert drawn[-1][0] == runner.OVERLAY_MIN_SCORE
    assert main(["track", *common, "--overlay-score", "0"]) == 0
    results = _check_results(out, {1}, 8)
    assert results and all(isinstance(r["track_id"], int) for r in results)
    assert drawn[-1] == (0.0, sorted({r["track_id"] for r in results}))
    cut = sorted(r["score"] for r in results)[len(results) // 2]
    assert main(["track", *common, "--overlay-score", str(cut)]) == 0
    assert drawn[-1][0] == cut
    assert set(drawn[-1][1]) == {r["track_id"] for r in results if r["score"] >= cut}


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_overlay_score_out_of_range_exit_1(
    checkpoint: Path, video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    argv = ["track", str(video), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "r.json")]
    argv += ["--overlay", str(tmp_path / "o.mp4"), "--overlay-score", value]
    assert main(argv) == 1
    assert "--overlay-score must be within [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_help_states_the_shared_overlay_default() -> None:
    import argparse

    from cli import track
    from model.video.overlay import OVERLAY_MIN_SCORE

    parser = argparse.ArgumentParser()
    track.add_arguments(parser)
    assert f"({OVERLAY_MIN_SCORE:g}, as the API)" in " ".join(parser.format_help().split())


def test_evaluate_warns_about_a_foreign_label_space(
    checkpoint: Path, real_sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tiny preset names YouTube-VIS 2019 classes; the real sample is YouTube-VIS 2021."""
    from model.nn.build import YTVIS_2019_CLASSES

    gt = json.loads((real_sample_dir / "instances.json").read_text())
    video = gt["videos"][2]
    video["file_names"] = video["file_names"][:3]
    annotations = [a for a in gt["annotations"] if a["video_id"] == video["id"]]
    for ann in annotations:
        for key in ("segmentations", "areas", "bboxes"):
            ann[key] = ann[key][:3]
    out = tmp_path / "results.json"
    argv = ["track", "--dataset", "GT", "--frames-root", str(real_sample_dir / "JPEGImages")]
    argv += ["--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu"]
    argv += ["--no-progress", "--evaluate"]
    own = [{"id": i + 1, "name": n} for i, n in enumerate(YTVIS_2019_CLASSES)]
    for categories, warned in ((gt["categories"], True), (own, False)):
        gt_path = tmp_path / "gt.json"
        subset = {**gt, "videos": [video], "annotations": annotations, "categories": categories}
        gt_path.write_text(json.dumps(subset))
        assert main([a if a != "GT" else str(gt_path) for a in argv]) == 0
        assert _check_results(out, {video["id"]}, 3)
        captured = capsys.readouterr()
        assert ("ctvis track: warning: results use names" in captured.err) == warned
        assert "AP50" in captured.out


def test_dataset_without_annotations_is_tracked(
    checkpoint: Path, real_sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A test split (no annotations) is tracked; ``--evaluate`` on it still writes the results."""
    gt = json.loads((real_sample_dir / "instances.json").read_text())
    video = gt["videos"][2]
    video["file_names"] = video["file_names"][:2]
    split, out = tmp_path / "test.json", tmp_path / "results.json"
    split.write_text(json.dumps({"videos": [video], "annotations": None}))
    argv = ["track", "--dataset", str(split), "--frames-root", str(real_sample_dir / "JPEGImages")]
    argv += ["--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    expected = _check_results(out, {video["id"]}, 2)
    out.unlink()
    assert main([*argv, "--evaluate"]) == 1
    err = capsys.readouterr().err
    assert f"wrote {out}" in err and "results written, but cannot evaluate" in err
    assert _check_results(out, {video["id"]}, 2) == expected
    split.write_text(json.dumps({"annotations": []}))
    assert main(argv) == 1
    assert "not a YouTube-VIS dataset json" in capsys.readouterr().err
