"""Process-level plumbing of a training run: ranks, the shared run directory, stop signals.

* :func:`setup_distributed` joins the ``torchrun`` process group (``WORLD_SIZE`` / ``RANK`` /
  ``LOCAL_RANK`` from the environment; NCCL on GPU, gloo on CPU) or returns a one-process
  :class:`Dist`.
* :func:`check_shared_out_dir`: every rank reads and writes ``OUT`` (rank 0 writes the
  checkpoints and converts official weights that the others then read; every rank writes its
  RNG state next to them), so ``OUT`` must be one directory on a filesystem all nodes share.
  Rank 0 writes a marker with a fresh token, all ranks wait at a barrier and look for it, and
  every rank fails with an error naming ``OUT`` if any rank cannot see it (instead of a hang
  or a half-written checkpoint much later).
* :class:`StopSignals`: SIGTERM (sent by Slurm before a time limit or preemption, and by
  ``torchrun`` to its workers when it is itself terminated) and SIGUSR1 (Slurm
  ``--signal=USR1@<seconds>``) only set a flag; the loop asks :meth:`StopSignals.agreed` after
  every iteration, all ranks agree through one all-reduce, and they write a resumable
  checkpoint together before leaving.
"""

from __future__ import annotations

import datetime
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

import torch
import torch.distributed as dist

__all__ = [
    "STOP_SIGNALS",
    "Dist",
    "SharedFilesystemError",
    "StopSignals",
    "check_shared_out_dir",
    "marker_visible",
    "setup_distributed",
]

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)
MARKER_PREFIX = ".shared-fs-check-"


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, number of ranks and training device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0, which writes checkpoints, logs and evaluations."""
        return self.rank == 0


def setup_distributed(requested: str) -> Dist:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1.

    Args:
        requested: ``TrainConfig.device`` ("" = cuda if available, else cpu).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and requested != "cpu"
    if world <= 1:
        return Dist(device=torch.device(requested or ("cuda" if cuda else "cpu")))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        # long timeout: rank 0 evaluates while the others wait at a barrier
        timeout = datetime.timedelta(hours=2)
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", timeout=timeout)
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Dist(dist.get_rank(), dist.get_world_size(), device)


class SharedFilesystemError(RuntimeError):
    """Some rank cannot see what rank 0 wrote under the run directory ``OUT``."""


def marker_visible(path: Path, token: str, timeout_s: float = 10.0) -> bool:
    """Whether ``path`` exists and holds ``token``, polling up to ``timeout_s`` seconds
    (network filesystems may show a new file on other nodes only after a moment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if path.read_text() == token:
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def check_shared_out_dir(out: Path, env: Dist, timeout_s: float = 10.0) -> None:
    """Fail on every rank unless all ranks see the same ``out`` directory.

    Rank 0 creates ``out`` and writes ``out/.shared-fs-check-<token>`` (a fresh random token,
    broadcast to the others); after a barrier every rank looks for it; the verdicts are
    all-reduced so that all ranks raise together; rank 0 then removes the marker and every rank
    waits for that (a barrier), so no rank returns while the marker is still there. A
    one-process run has nothing to check.

    Raises:
        SharedFilesystemError: naming ``out`` and the ranks that could not see the marker.
    """
    if env.world_size <= 1:
        return
    holder = [secrets.token_hex(8) if env.main else ""]
    dist.broadcast_object_list(holder, src=0)
    marker = out / f"{MARKER_PREFIX}{holder[0]}"
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text(holder[0])
    dist.barrier()
    seen = marker_visible(marker, holder[0], timeout_s)
    missing = torch.zeros(env.world_size, dtype=torch.int32, device=env.device)
    missing[env.rank] = int(not seen)
    dist.all_reduce(missing)
    if env.main:
        marker.unlink(missing_ok=True)
    dist.barrier()  # no rank goes on (and writes to ``out``) before the marker is gone
    if int(missing.sum()):
        ranks = torch.nonzero(missing).flatten().tolist()
        raise SharedFilesystemError(
            f"OUT={out}: rank(s) {ranks} cannot see the file rank 0 wrote there. OUT must be "
            "one directory on a filesystem shared by all nodes (NFS, Lustre, GPFS, ...), with "
            "the same path on every node: checkpoints, converted weights and RNG states are "
            "written by one rank and read by the others."
        )


class StopSignals:
    """Context manager that turns SIGTERM / SIGUSR1 into a stop request (restored on exit).

    Outside the main thread (where Python cannot install handlers) it installs nothing and
    never requests a stop.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        """Args: signals: the signals that request a checkpoint and a clean exit."""
        self.signals = signals
        self.received = 0
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]  # a saved handler
        self._previous.clear()

    def agreed(self, env: Dist) -> int:
        """The stop signal any rank received (0: none), the same value on every rank.

        Collective when ``env.world_size`` > 1: every rank must call it at the same point.
        """
        if env.world_size <= 1:
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int64, device=env.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())
