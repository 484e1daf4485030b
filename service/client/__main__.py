"""``python -m service.client``: health, one frame, a WebSocket stream, or a video job."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from service.client.http import CtvisClient
from service.client.types import CtvisError, JobStatus


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.client", description="ctvis-serve client"
    )
    parser.add_argument("--url", default=os.environ.get("CTVIS_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("CTVIS_API_KEY"),
                        help="API key (env CTVIS_API_KEY)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("health", help="print /readyz and the served model")
    frame = sub.add_parser("frame", help="track one image over HTTP in a new session")
    frame.add_argument("image", type=Path)
    stream = sub.add_parser("stream", help="stream a video file or a camera over WebSocket")
    stream.add_argument("video", nargs="?", type=Path, help="video file or frame folder")
    stream.add_argument("--camera", type=int, help="OpenCV camera index instead of a file")
    stream.add_argument("--max-frames", type=int)
    job = sub.add_parser("job", help="submit a video job, wait, download the results")
    job.add_argument("video", type=Path)
    job.add_argument("--out", type=Path, default=Path("."), help="folder for result/overlay")
    job.add_argument("--overlay", action="store_true")
    job.add_argument(
        "--overlay-score", type=float, help="lowest score the overlay draws (server default)"
    )
    job.add_argument("--frame-stride", type=int, default=1)
    job.add_argument("--max-frames", type=int)
    job.add_argument("--poll", action="store_true", help="poll instead of server-sent events")
    return parser


def _print_progress(status: JobStatus) -> None:
    total = status.frames_total if status.frames_total is not None else "?"
    print(f"{status.state}: {status.frames_done}/{total} frames", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m service.client``; returns the exit code (1 on any client error)."""
    args = _parser().parse_args(argv)
    with CtvisClient(args.url, args.api_key) as client:
        try:
            if args.command == "health":
                print(json.dumps({"ready": client.ready(), "models": client.models()}))
            elif args.command == "frame":
                result = client.send_frame(client.create_session(), args.image.read_bytes())
                print(json.dumps(asdict(result)))
            elif args.command == "stream":
                session = client.create_session()
                if args.camera is not None:
                    results = client.stream_camera(session, args.camera, args.max_frames)
                elif args.video is not None:
                    results = client.stream_video(session, args.video, max_frames=args.max_frames)
                else:
                    raise CtvisError("give a video path or --camera N")
                for result in results:
                    print(json.dumps(asdict(result)), flush=True)
                client.close_session(session)
            else:
                status = client.submit_video(
                    args.video,
                    args.frame_stride,
                    args.max_frames,
                    args.overlay,
                    overlay_score=args.overlay_score,
                )
                mode: Literal["events", "poll"] = "poll" if args.poll else "events"
                client.wait_job(status.job_id, _print_progress, mode=mode)
                print(client.download_result(status.job_id, args.out / f"{status.job_id}.json"))
                if args.overlay:
                    print(client.download_overlay(status.job_id, args.out / f"{status.job_id}.mp4"))
        except CtvisError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
