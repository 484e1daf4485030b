"""A 30-second soak: live sessions and jobs while a worker is SIGKILLed and replaced."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.redis
REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _soak_module():  # noqa: ANN202 - loads bench/soak.py, which is a script, not a package
    path = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
    spec = importlib.util.spec_from_file_location("ctvis_bench_soak", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_short_soak_loses_nothing() -> None:
    soak = _soak_module()
    report = soak.run_soak(
        REDIS_URL, sessions=3, duration_s=30, kill_every_s=15, workers=2, job_every_s=6,
        sample_s=5,
    )  # fmt: skip
    assert report.kills >= 1
    assert report.frames > 0
    assert report.jobs_submitted >= 2
    assert report.jobs_lost == 0, report
    assert report.jobs_failed == 0, report
    assert report.jobs_done == report.jobs_submitted
    assert report.frames_lost == 0, report
    assert report.unexplained_errors == 0, dict(report.errors)
