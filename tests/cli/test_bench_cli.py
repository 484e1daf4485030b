"""``ctvis bench``: every name maps to a script in ``bench/`` that answers ``--help``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli.bench import SCRIPTS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_bench_name_runs_its_script(name: str) -> None:
    assert (ROOT / "bench" / SCRIPTS[name]).is_file()
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", name, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and SCRIPTS[name] in done.stdout


def test_unknown_bench_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "invalid choice" in done.stderr
