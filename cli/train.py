"""``ctvis train``: consistent (CTVIS) training from a config file.

::

    ctvis train --config training/configs/synth_tiny.yaml --out runs/demo \\
        [--set optim.max_iter=500 --set cl.positive_mode=latest ...] [--resume]

Multi-GPU / multi-process: ``torchrun --nproc_per_node N -m cli train ...`` (each process
reads its rank from the environment); ``--out`` must be one directory on a filesystem every
node shares (checked at start). Checkpoints land in ``OUT/checkpoints/iter_*/`` and load
directly in ``ctvis track --checkpoint`` and ``ctvis serve``. SIGTERM / SIGUSR1 checkpoint the
current iteration and exit with status 128 + the signal number; ``--resume`` continues there.
"""

from __future__ import annotations

import argparse
import signal
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``train`` options."""
    parser.add_argument("--config", required=True, help="experiment file (.yaml/.yml/.toml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="typed override of one field, e.g. optim.lr=3e-4 (repeatable)",
    )
    parser.add_argument("--out", required=True, help="output directory (logs, checkpoints)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --out"
    )
    parser.add_argument(
        "--stop-at", type=int, help="stop after this iteration (the schedule is unchanged)"
    )


def run(args: argparse.Namespace) -> int:
    """Load the config, train, print where the final checkpoint is.

    Returns:
        0 when training ran to its end; 1 on a bad config or a run directory some rank
        cannot see; 128 + the signal number when SIGTERM / SIGUSR1 stopped it (after it
        wrote a resumable checkpoint).
    """
    from training.config import ConfigError, load_config
    from training.distributed import SharedFilesystemError
    from training.loop import train

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"ctvis train: {exc}", file=sys.stderr)
        return 1
    try:
        result = train(cfg, args.out, resume=args.resume, stop_at=args.stop_at)
    except SharedFilesystemError as exc:
        print(f"ctvis train: {exc}", file=sys.stderr)
        return 1
    if result.stop_signal:
        name = signal.Signals(result.stop_signal).name
        print(
            f"ctvis train: stopped by {name} after iteration {result.iteration}; "
            f"checkpoint {result.checkpoint}; continue with --resume",
            file=sys.stderr,
        )
        return 128 + result.stop_signal
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint} (iteration {result.iteration})", file=sys.stderr)
    if result.metrics:
        print(f"val AP: {result.metrics.get('AP', float('nan')):.4f}", file=sys.stderr)
    return 0
