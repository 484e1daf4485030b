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
    import asyncio
    import signal

    from cli.common import load_settings
    from service.engine import Engine, FaultInjection
    from service.jobqueue import JobWorker, run_job_worker
    from service.metrics import Metrics
    from service.models import load_served_model_for
    from service.remote import run_worker
    from service.settings import job_dir

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
    served = load_served_model_for(settings)
    metrics = Metrics()
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr="0.0.0.0", registry=metrics.registry)

    async def main() -> tuple[int, int]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(
            f"ctvis worker: model {served.model_id} on {settings.device}, "
            f"stream {settings.frames_stream}",
            flush=True,
        )

        async def frames_until_stop() -> int:
            try:
                return await frames_loop
            finally:
                stop.set()  # if the frame loop ends for any reason, stop the job loop too

        frames_loop = run_worker(
            settings.redis_url or "",
            Engine(served, FaultInjection.parse(settings.fault_inject)),
            served.model_id,
            settings.max_batch_size,
            stop,
            settings.frames_stream,
            claim_idle_ms=settings.claim_idle_ms,
            metrics=metrics,
            redis_mode=settings.redis_mode,
        )
        jobs_worker = JobWorker(
            settings.redis_url or "",
            served,
            job_dir(settings),
            claim_idle_ms=settings.job_claim_idle_ms,
            max_attempts=settings.max_job_attempts,
            checkpoint_every_clips=settings.job_checkpoint_clips,
            ttl_s=settings.job_ttl_s,
            stream=settings.jobs_stream,
            faults=FaultInjection.parse(settings.fault_inject),
            metrics=metrics,
            redis_mode=settings.redis_mode,
        )
        done = await asyncio.gather(frames_until_stop(), run_job_worker(jobs_worker, stop))
        return done[0], done[1]

    frames_done, jobs_done = asyncio.run(main())
    print(f"ctvis worker: stopped after {frames_done} frames and {jobs_done} jobs", flush=True)
    return 0
