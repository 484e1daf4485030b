"""The ``ctvis worker`` process: the frame consumer and the job worker on one served model.

``run_worker`` loads the model once and runs both loops side by side until SIGTERM / SIGINT:
``service.frame_stream.run_frame_worker`` (live frames, batched across sessions, on the event
loop) and ``service.jobs.redis_worker.JobWorker`` (whole-video jobs, in a thread). When either
loop ends the other is stopped too, so a worker never keeps serving only half of its work.
"""

from __future__ import annotations

import asyncio
import signal

from service.engine import Engine
from service.frame_stream import run_frame_worker
from service.jobs.redis_worker import JobWorker, run_job_worker
from service.metrics import Metrics
from service.served import ServedModel, load_served_model_for
from service.settings import Settings, job_dir


def run_worker(settings: Settings, metrics_port: int = 0) -> tuple[int, int]:
    """Serve frames and jobs until SIGTERM / SIGINT; returns (frames run, jobs run).

    The current batch is finished and acknowledged, and a running job handed back to the
    queue, before this returns. ``metrics_port`` (0: off) serves Prometheus metrics.

    Raises:
        ValueError: ``settings.redis_url`` is not set (workers meet the API in Redis).
    """
    if not settings.redis_url:
        raise ValueError("a worker needs redis_url")
    served = load_served_model_for(settings)
    metrics = Metrics()
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="0.0.0.0", registry=metrics.registry)
    return asyncio.run(_serve(settings, served, metrics))


async def _serve(settings: Settings, served: ServedModel, metrics: Metrics) -> tuple[int, int]:
    url = settings.redis_url or ""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"ctvis worker: model {served.model_id} on {settings.device}, "
        f"stream {settings.frames_stream}"
        + (f" ({settings.stream_shards} shards)" if settings.stream_shards > 1 else ""),
        flush=True,
    )
    frames_loop = run_frame_worker(
        url, Engine(served), served.model_id, settings.max_batch_size, stop,
        settings.frames_stream, claim_idle_ms=settings.claim_idle_ms, metrics=metrics,
        redis_mode=settings.redis_mode, shards=settings.stream_shards,
    )  # fmt: skip
    jobs = JobWorker(
        url, served, job_dir(settings), claim_idle_ms=settings.job_claim_idle_ms,
        max_attempts=settings.max_job_attempts,
        checkpoint_every_clips=settings.job_checkpoint_clips, ttl_s=settings.job_ttl_s,
        stream=settings.jobs_stream, metrics=metrics, redis_mode=settings.redis_mode,
        shards=settings.stream_shards,
    )  # fmt: skip

    async def frames_until_stop() -> int:
        try:
            return await frames_loop
        finally:
            stop.set()  # if the frame loop ends for any reason, stop the job loop too

    frames, jobs_run = await asyncio.gather(frames_until_stop(), run_job_worker(jobs, stop))
    return frames, jobs_run
