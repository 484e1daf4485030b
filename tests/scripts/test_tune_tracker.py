"""``scripts/tune_tracker.py`` scores a setting exactly as ``ctvis track --evaluate`` does."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from cli.main import main
from model.demo import DEMO_CHECKPOINT
from tests.scripts import load_script
from training.data.synthetic import write_dataset
from training.ytvis_eval import evaluate_files
from training.ytvis_json import load_ground_truth


def test_cached_outputs_score_like_the_track_cli(tmp_path: Path) -> None:
    tune = load_script("tune_tracker")
    gt_path = write_dataset(tmp_path / "synth", "val", seed=11, num_videos=2)
    frames = str(tmp_path / "synth" / "frames")
    ckpt, videos = tune.network_outputs(str(DEMO_CHECKPOINT), str(gt_path), frames)
    gt = load_ground_truth(gt_path)
    ours = tune.score(ckpt, videos, gt, ckpt.tracker_cfg)

    out = tmp_path / "results.json"
    argv = ["track", "--dataset", str(gt_path), "--frames-root", frames, "--out", str(out)]
    assert main([*argv, "--no-progress", "--device", "cpu"]) == 0
    ev = evaluate_files(gt_path, out)
    assert ours["AP"] == pytest.approx(round(100 * ev.metrics["AP"], 2), abs=1e-6)
    assert ours["IDSW"] == ev.id_switches
    # another setting gives another result set: the config reaches the tracker (no score
    # exceeds 1, so no track starts)
    strict = dataclasses.replace(ckpt.tracker_cfg, init_score_threshold=1.0)
    assert tune.score(ckpt, videos, gt, strict)["AR10"] == 0.0
    assert json.loads(out.read_text())  # the CLI wrote results
    # the mask threshold option scores as the CLI's override of it does
    grown = dataclasses.replace(ckpt.tracker_cfg, mask_logit_offset=1.0)
    offset_out = tmp_path / "offset.json"
    argv = ["track", "--dataset", str(gt_path), "--frames-root", frames, "--out", str(offset_out)]
    argv += ["--tracker", "mask_logit_offset=1.0", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    ev_grown = evaluate_files(gt_path, offset_out)
    score_grown = tune.score(ckpt, videos, gt, grown)
    assert score_grown["AP"] == pytest.approx(round(100 * ev_grown.metrics["AP"], 2), abs=1e-6)
    assert json.loads(offset_out.read_text()) != json.loads(out.read_text())  # masks changed


def test_grid_values_are_checked_by_the_tracker_rules(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value out of an option's range stops the script before the network runs."""
    tune = load_script("tune_tracker")
    argv = ["tune_tracker.py", "--checkpoint", "C", "--dataset", "D", "--frames-root", "F"]
    monkeypatch.setattr(sys, "argv", [*argv, "--nms", "0.5", "1.5"])
    with pytest.raises(SystemExit):
        tune.parse_args()
    assert "'mask_nms_threshold' must be a number in [0, 1]" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", [*argv, "--box", "0", "0.5"])
    assert tune.parse_args().box == [0.0, 0.5]
