"""``ctvis worker``: a batch worker that serves frames sent through Redis Streams."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags override the ``CTVIS_*`` environment variables of ``service.settings``."""
    parser.add_argument("--redis-url", help="Redis URL (env CTVIS_REDIS_URL); required")
    parser.add_argument("--checkpoint", help="checkpoint directory (env CTVIS_CHECKPOINT)")
    parser.add_argument("--device", help="torch device (env CTVIS_DEVICE, default cpu)")
    parser.add_argument(
        "--max-batch-size", type=int, help="frames per batch (env CTVIS_MAX_BATCH_SIZE)"
    )
    parser.add_argument(
        "--claim-idle-ms",
        type=int,
        help="take over frames another worker left unanswered this long (env CTVIS_CLAIM_IDLE_MS)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus metrics here (0: off)"
    )
    parser.add_argument("--job-dir", help="shared job directory (env CTVIS_JOB_DIR)")
    parser.add_argument("--stream", help="frames stream name (env CTVIS_FRAMES_STREAM)")
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="log level"
    )


def run(args: argparse.Namespace) -> int:
    """Serve frames until SIGTERM / SIGINT, then finish the current batch and exit 0."""
    from cli.common import load_settings
    from service.worker_main import run_worker

    settings = load_settings(
        "worker",
        {
            "redis_url": args.redis_url,
            "checkpoint": args.checkpoint,
            "device": args.device,
            "max_batch_size": args.max_batch_size,
            "frames_stream": args.stream,
            "job_dir": args.job_dir,
            "claim_idle_ms": args.claim_idle_ms,
            "log_level": args.log_level,
        },
    )
    if settings is None:
        return 1
    if not settings.redis_url:
        print("ctvis worker: --redis-url (or CTVIS_REDIS_URL) is required", file=sys.stderr)
        return 1
    frames_done, jobs_done = run_worker(settings, args.metrics_port)
    print(f"ctvis worker: stopped after {frames_done} frames and {jobs_done} jobs", flush=True)
    return 0
