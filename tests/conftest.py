"""Shared pytest fixtures: where the reference data lives.

* ``tests/fixtures/official_ctvis``: numbers and a tiny checkpoint produced by the official CTVIS
  code (see its README). They are part of the repository, so every checkout can run the tests
  that use them.
* The real sample (``data/real-sample``, derived from DAVIS) stays out of the repository because
  of its licence. It is read from ``$CTVIS_SHARED/data/real-sample``; without ``CTVIS_SHARED``,
  from ``../shared`` beside the checkout. When it is absent (and ``CTVIS_SHARED`` is not set),
  the tests that use it are deselected and listed once at the end of the run as not run. When
  ``CTVIS_SHARED`` is set (``.ci/run`` always sets it), they always run, and fail if the data is
  not there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures" / "official_ctvis"
SHARED_FROM_ENV = os.environ.get("CTVIS_SHARED")
SHARED_DIR = Path(SHARED_FROM_ENV or REPO_ROOT.parent / "shared").resolve()
REAL_SAMPLE_DIR = SHARED_DIR / "data" / "real-sample"
REAL_SAMPLE_FIXTURE = "real_sample_dir"

_NOT_RUN = pytest.StashKey[list[str]]()


def _real_sample_present() -> bool:
    return (REAL_SAMPLE_DIR / "instances.json").is_file()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``tests/fixtures/official_ctvis``: numbers from the official implementation."""
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def real_sample_dir() -> Path:
    """``$CTVIS_SHARED/data/real-sample``: a small real YouTube-VIS style dataset."""
    if not _real_sample_present():
        raise FileNotFoundError(
            f"real sample not found at {REAL_SAMPLE_DIR} (CTVIS_SHARED={SHARED_FROM_ENV!r}); "
            "set CTVIS_SHARED to the shared/ folder that holds data/real-sample"
        )
    return REAL_SAMPLE_DIR


@pytest.hookimpl(trylast=True)  # after -m / -k: list only tests that would otherwise have run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without the real sample (and without ``CTVIS_SHARED``), deselect the tests that need it."""
    if SHARED_FROM_ENV or _real_sample_present():
        return
    needs = [item for item in items if REAL_SAMPLE_FIXTURE in getattr(item, "fixturenames", ())]
    if not needs:
        return
    dropped = set(needs)
    items[:] = [item for item in items if item not in dropped]
    config.hook.pytest_deselected(items=needs)
    config.stash[_NOT_RUN] = [item.nodeid for item in needs]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """The one place that says which tests did not run for want of the real sample."""
    not_run = config.stash.get(_NOT_RUN, [])
    if not not_run:
        return
    tr = terminalreporter
    tr.section(f"{len(not_run)} tests NOT RUN: real sample absent", sep="=", yellow=True, bold=True)
    tr.line(
        f"They need the DAVIS-derived real sample, kept out of the repository by its licence; "
        f"it was not found at {REAL_SAMPLE_DIR}."
    )
    tr.line("set CTVIS_SHARED=/path/to/shared (the folder holding data/real-sample) to run them")
    for nodeid in not_run:
        tr.line(f"  {nodeid}")


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
