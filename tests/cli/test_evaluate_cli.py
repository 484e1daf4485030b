"""``ctvis evaluate``: table and JSON output, exit codes for bad input, label-space checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def _rewritten(src: Path, dest: Path, **changes: Any) -> Path:
    """``src``'s results with per-entry keys set from ``changes`` (callables of (i, entry))."""
    results = json.loads(src.read_text())
    for i, entry in enumerate(results):
        for key, value in changes.items():
            entry[key] = value(i, entry)
    dest.write_text(json.dumps(results))
    return dest


def test_track_ids_and_names_change_no_number(
    real_sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Our extra keys (``track_id``, ``category_name``) are ignored: the same numbers."""
    gt = real_sample_dir / "instances.json"
    plain = real_sample_dir / "results_perturbed.json"
    names = {c["id"]: c["name"] for c in json.loads(gt.read_text())["categories"]}
    ours = _rewritten(
        plain,
        tmp_path / "ours.json",
        track_id=lambda i, e: i // 2,
        category_name=lambda i, e: names[e["category_id"]].upper().replace("_", " "),
    )
    outputs = []
    for results in (plain, ours):
        assert main(["evaluate", "--gt", str(gt), "--results", str(results), "--json"]) == 0
        captured = capsys.readouterr()
        assert "warning" not in captured.err  # names equal up to case and "_"
        outputs.append(json.loads(captured.out))
    assert outputs[0] == outputs[1]
    assert 0 < outputs[0]["AP"] < 1


@pytest.mark.parametrize("strict", [False, True])
def test_foreign_label_space_warns_or_is_refused(
    real_sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], strict: bool
) -> None:
    gt = real_sample_dir / "instances.json"
    plain = real_sample_dir / "results_perturbed.json"
    assert main(["evaluate", "--gt", str(gt), "--results", str(plain), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    shapes = ["circle", "square", "triangle"]
    foreign = _rewritten(
        plain,
        tmp_path / "foreign.json",
        category_name=lambda i, e: shapes[e["category_id"] % 3],
    )
    argv = ["evaluate", "--gt", str(gt), "--results", str(foreign), "--json"]
    assert main([*argv, "--strict"] if strict else argv) == (1 if strict else 0)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    prefix = "refused (--strict)" if strict else "warning"
    assert lines[0].startswith(f"ctvis evaluate: {prefix}: results use names {{")
    assert "(ground truth: 'bird')" in lines[0]
    assert "not in the ground truth's label space (40 categories, ids 1-40)" in lines[0]
    if strict:
        assert captured.out == ""
    else:
        assert json.loads(captured.out) == expected  # a warning changes no number


def test_unknown_category_ids_warn_and_strict_refuses(
    real_sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without names only ids can be compared: ids the ground truth lacks are named."""
    gt = real_sample_dir / "instances.json"
    shifted = _rewritten(
        real_sample_dir / "results_perturbed.json",
        tmp_path / "shifted.json",
        category_id=lambda i, e: e["category_id"] + 100 if i in (0, 1, 3) else e["category_id"],
    )
    argv = ["evaluate", "--gt", str(gt), "--results", str(shifted)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: results use category ids {103, 126}" in err
    assert "3 of 20 results entries" in err
    assert main([*argv, "--strict"]) == 1
    assert "refused (--strict): results use category ids {103, 126}" in capsys.readouterr().err
    strict_ok = ["evaluate", "--gt", str(gt), "--results"]
    assert main([*strict_ok, str(real_sample_dir / "results_perturbed.json"), "--strict"]) == 0
    assert "ctvis evaluate:" not in capsys.readouterr().err  # neither warned nor refused
