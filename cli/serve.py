"""``ctvis serve``: run the API with an in-process worker (embedded defaults)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags override the ``CTVIS_*`` environment variables of ``service.settings``."""
    parser.add_argument("--host", help="bind address (env CTVIS_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (env CTVIS_PORT, default 8000)")
    parser.add_argument("--checkpoint", help="checkpoint directory (env CTVIS_CHECKPOINT)")
    parser.add_argument("--redis-url", help="Redis URL (env CTVIS_REDIS_URL); unset: in-process")
    parser.add_argument("--device", help="torch device (env CTVIS_DEVICE, default cpu)")
    parser.add_argument(
        "--no-worker",
        action="store_true",
        help="API only: frames go to `ctvis worker` processes via Redis (needs --redis-url)",
    )
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="log level"
    )


def run(args: argparse.Namespace) -> int:
    """Start uvicorn with ``service.main.create_app``; returns when the server stops."""
    import asyncio

    import uvicorn

    from cli.common import load_settings
    from service.api.ws import close_all_for_restart
    from service.logs import install_redaction
    from service.main import create_app
    from service.served import RANDOM_CHECKPOINT
    from service.serving import header_deadline_protocol

    settings = load_settings(
        "serve",
        {
            "host": args.host,
            "port": args.port,
            "checkpoint": args.checkpoint,
            "redis_url": args.redis_url,
            "device": args.device,
            "log_level": args.log_level,
            "worker": False if args.no_worker else None,
        },
    )
    if settings is None:
        return 1
    if settings.checkpoint and settings.checkpoint != RANDOM_CHECKPOINT:
        from model.checkpoint import CheckpointError, check_checkpoint_dir

        try:
            check_checkpoint_dir(settings.checkpoint)
        except CheckpointError as exc:
            print(f"ctvis serve: checkpoint {exc}", file=sys.stderr)
            return 2
    store = settings.redis_url or "in-process store"
    model = settings.checkpoint or "bundled demo checkpoint (synthetic shapes)"
    url = f"http://{settings.host}:{settings.port}"
    print(f"ctvis serve: {url}  (model: {model}; sessions: {store})")
    print(f"ctvis serve: API docs at {url}/docs", flush=True)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # A WebSocket message over this is refused with close 1009 before it is buffered; the
        # 64 KiB margin lets a frame just over max_frame_bytes get a frame_too_large reply.
        ws_max_size=settings.max_frame_bytes + 64 * 1024,
        # On SIGTERM uvicorn stops accepting and gives in-flight requests this long to finish.
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        http=header_deadline_protocol(settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
    )

    # uvicorn has configured its loggers in Config(): secrets in URLs never reach a log line
    install_redaction("uvicorn", "uvicorn.error", "uvicorn.access")

    class GracefulServer(uvicorn.Server):
        """On SIGTERM/SIGINT, first close live WebSockets with 1012 and a reconnect hint."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            sockets = app.state.websockets
            if sockets and not self.should_exit:
                loop = asyncio.get_event_loop()
                loop.call_soon_threadsafe(lambda: loop.create_task(close_all_for_restart(sockets)))
            super().handle_exit(sig, frame)

    GracefulServer(config).run()
    return 0
