"""Shared pytest fixtures: where the read-only reference data lives.

The fixtures and the real sample are read from ``../shared`` beside the checkout (CI lays it
there), or from ``$CTVIS_SHARED``. They are never copied into the repository.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("CTVIS_SHARED", REPO_ROOT.parent / "shared")).resolve()
FIXTURES_DIR = SHARED_DIR / "fixtures" / "official_ctvis"
REAL_SAMPLE_DIR = SHARED_DIR / "data" / "real-sample"


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"reference data not found at {path}; set CTVIS_SHARED to the shared/ folder"
        )
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``shared/fixtures/official_ctvis``: numbers from the official implementation."""
    return _require(FIXTURES_DIR)


@pytest.fixture(scope="session")
def real_sample_dir() -> Path:
    """``shared/data/real-sample``: a small real YouTube-VIS style dataset."""
    return _require(REAL_SAMPLE_DIR)


@pytest.fixture(autouse=True)
def _isolate_service_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Service settings in tests come from the test, never from the caller's ``CTVIS_*``.

    The served model defaults to the random-weight tiny preset (``tiny-random``): service tests
    exercise plumbing and must not depend on the bundled demo weights; tests of the demo model
    delete ``CTVIS_CHECKPOINT`` to get the real default.
    """
    for name in list(os.environ):
        if name.startswith("CTVIS_") and not name.startswith(("CTVIS_TEST_", "CTVIS_SHARED")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CTVIS_CHECKPOINT", "tiny-random")


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """A test may pin torch to one thread; the next must not inherit it. Tests that compare
    this process's outputs bit for bit with worker processes (which run torch's default thread
    count) depend on it: float reductions round differently with another thread count."""
    try:
        import torch
    except ImportError:  # the client-only install has no torch
        yield
        return
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)
