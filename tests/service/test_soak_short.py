"""A 30-second soak: live sessions and jobs while a worker is SIGKILLed and replaced."""

from __future__ import annotations

import os
from types import ModuleType

import pytest

from tests.modules import REPO, load_module

pytestmark = pytest.mark.redis
REDIS_URL = os.environ.get("CTVIS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _soak_module() -> ModuleType:
    return load_module(REPO / "bench" / "soak.py", "ctvis_bench_soak")


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
