"""``ctvis serve``: run the API with an in-process worker (embedded defaults)."""

from __future__ import annotations

import argparse
import sys


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
    """Check the settings and checkpoint, then serve (``service.serving.run_server``) until
    the server stops."""
    from cli.common import load_settings
    from service.served import RANDOM_CHECKPOINT
    from service.serving import run_server

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
    run_server(settings)
    return 0
