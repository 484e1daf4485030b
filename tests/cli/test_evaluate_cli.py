"""``ctvis evaluate``: table and JSON output, exit codes for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main
from training.ytvis_eval import METRIC_KEYS


def test_json_output_matches_expected(
    real_sample_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt = real_sample_dir / "instances.json"
    results = real_sample_dir / "results_perturbed.json"
    assert main(["evaluate", "--gt", str(gt), "--results", str(results), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = json.loads((real_sample_dir / "expected_metrics.json").read_text())
    for key in METRIC_KEYS:
        assert out[key] == pytest.approx(expected["results_perturbed.json"][key], abs=1e-6)
    assert out["IDSW"] == 0
    assert out["per_category_AP"]["bird"] == pytest.approx(0.8)


def test_table_output(real_sample_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = real_sample_dir / "instances.json"
    results = real_sample_dir / "results_gt_as_pred.json"
    assert main(["evaluate", "--gt", str(gt), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "AP50" in out and "100.00" in out
    assert "APl" in out and "IDSW" in out and "dog" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not a readable JSON"),
        ('{"a": 1}', "must be a JSON list"),
        ('[{"video_id": 99, "category_id": 1, "score": 1, "segmentations": []}]', "video 99"),
    ],
)
def test_bad_results_exit_1(
    real_sample_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    message: str,
) -> None:
    results = tmp_path / "results.json"
    if content is not None:
        results.write_text(content)
    argv = ["evaluate", "--gt", str(real_sample_dir / "instances.json"), "--results", str(results)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and str(results) in err


def test_bad_ground_truth_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = tmp_path / "gt.json"
    gt.write_text('{"videos": []}')
    results = tmp_path / "results.json"
    results.write_text("[]")
    assert main(["evaluate", "--gt", str(gt), "--results", str(results)]) == 1
    assert "ground truth needs" in capsys.readouterr().err
