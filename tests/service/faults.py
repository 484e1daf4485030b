"""Fault injection for the fault-tolerance tests, installed around the shipped code.

The service has no fault branches: a test installs wrappers around two of its functions.

* ``Engine.run_group`` (one forward of a batch): ``poison_rgb`` makes the group raise when a
  frame's top-left pixel has that colour (the engine then retries the frames one by one, so
  only the poison frame fails); ``crash_after_frames`` exits the process abruptly (as if
  SIGKILLed: no reply, no acknowledgement) when it is about to run its N+1-th frame.
* ``run_video_job`` as the job worker calls it: ``crash_after_job_frames`` exits abruptly once a
  job has tracked N frames; ``fail_job_video_id`` makes jobs with that ``video_id`` raise on
  every attempt.

In-process tests call ``install`` with ``monkeypatch.setattr``; worker processes start through
``worker_command``, which runs ``python -m tests.service.faults <spec> worker ...``: this module
installs the faults, then hands the rest of the command line to ``ctvis``.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class FaultInjection:
    """The faults to inject (None: that fault is off); see the module docstring."""

    poison_rgb: tuple[int, int, int] | None = None
    crash_after_frames: int | None = None
    crash_after_job_frames: int | None = None
    fail_job_video_id: int | None = None

    @classmethod
    def parse(cls, spec: str | None) -> FaultInjection | None:
        """Parse ``"poison_rgb=R,G,B;crash_after_frames=N"`` (every part optional)."""
        if not spec:
            return None
        values: dict[str, Any] = {}
        for part in spec.split(";"):
            key, _, value = part.partition("=")
            key = key.strip()
            if key == "poison_rgb":
                r, g, b = (int(v) for v in value.split(","))
                values[key] = (r, g, b)
            elif key in ("crash_after_frames", "crash_after_job_frames", "fail_job_video_id"):
                values[key] = int(value)
            else:
                raise ValueError(f"unknown fault injection {key!r}")
        return cls(**values)


Setter = Callable[[Any, str, Any], None]


def install(faults: FaultInjection, setattr_: Setter = setattr) -> None:
    """Wrap the engine and the job worker with ``faults`` (``setattr_``: e.g.
    ``monkeypatch.setattr``, so that a test's faults are undone after it)."""
    from service.engine import Engine
    from service.jobs import redis_worker

    if faults.poison_rgb is not None or faults.crash_after_frames is not None:
        setattr_(Engine, "run_group", _faulty_group(Engine.run_group, faults))
    if faults.crash_after_job_frames is not None or faults.fail_job_video_id is not None:
        job = _faulty_job(redis_worker.run_video_job, faults)
        setattr_(redis_worker, "run_video_job", job)


def _faulty_group(run_group: Callable[..., Any], faults: FaultInjection) -> Callable[..., Any]:
    frames_run = 0

    @functools.wraps(run_group)
    def wrapper(engine: Any, items: list[Any], batches: list[Any]) -> Any:
        nonlocal frames_run
        crash = faults.crash_after_frames
        if crash is not None and frames_run + len(items) > crash:
            os._exit(137)  # die mid-batch without replying or acknowledging, like SIGKILL
        poison = faults.poison_rgb
        if poison is not None and any(
            tuple(int(v) for v in i.frame[0, 0]) == poison for i in items
        ):
            raise RuntimeError("injected poison frame")
        frames_run += len(items)
        return run_group(engine, items, batches)

    return wrapper


def _faulty_job(run_video_job: Callable[..., int], faults: FaultInjection) -> Callable[..., int]:
    @functools.wraps(run_video_job)
    def wrapper(served: Any, workdir: Path, options: Any, progress: Any, *rest: Any) -> int:
        if faults.fail_job_video_id == options.video_id:
            raise RuntimeError("injected job failure")
        crash_at = faults.crash_after_job_frames

        def crashing_progress(done: int, total: int | None) -> None:
            if crash_at is not None and done >= crash_at:
                os._exit(137)  # die mid-job like SIGKILL
            progress(done, total)

        return run_video_job(served, workdir, options, crashing_progress, *rest)

    return wrapper


def worker_command(fault: str | None, *args: str) -> list[str]:
    """The command line of ``ctvis worker *args``, with ``fault`` (a ``parse`` spec)
    installed first when given."""
    if not fault:
        return [
            shutil.which("ctvis") or str(Path(sys.executable).parent / "ctvis"),
            "worker",
            *args,
        ]
    return [sys.executable, "-m", "tests.service.faults", fault, "worker", *args]


def worker_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this checkout on ``PYTHONPATH`` (for ``worker_command``'s ``-m``)."""
    path = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path}


def main(argv: list[str]) -> int:
    """``<spec> <ctvis arguments...>``: install the faults, then run ``ctvis``."""
    spec, *rest = argv
    faults = FaultInjection.parse(spec)
    if faults is not None:
        install(faults)
    from cli.main import main as ctvis

    return ctvis(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
