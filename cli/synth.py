"""``ctvis synth``: write the procedural synthetic VIS benchmark in YouTube-VIS layout."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ctvis synth``."""
    parser.add_argument("--split", choices=["val", "hard"], default="val", help="difficulty")
    parser.add_argument("--seed", type=int, default=0, help="random seed (deterministic output)")
    parser.add_argument("--videos", type=int, default=8, help="number of videos")
    parser.add_argument("--out", required=True, help="output directory")


def run(args: argparse.Namespace) -> int:
    """Write ``OUT/instances.json`` and ``OUT/frames/<video>/<frame>.png``."""
    from training.data.synthetic import write_dataset

    if args.videos < 1:
        print("ctvis synth: --videos must be at least 1", file=sys.stderr)
        return 1
    path = write_dataset(args.out, args.split, args.seed, args.videos)
    print(f"wrote {args.videos} videos to {path.parent} (annotations: {path})")
    return 0
