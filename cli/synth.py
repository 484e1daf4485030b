"""``ctvis synth``: write the procedural synthetic VIS benchmark in YouTube-VIS layout."""

from __future__ import annotations

import argparse
import sys

REID_HELP = """\
presets:
  reid  a benchmark where association decides (training.data.reid_synth), 32 frames
        of 256x192 per video: 2 look-alike pairs (twins share class, shape, size and
        colour and differ only in shade or in texture; textures are drawn in object
        coordinates, so they move with the object) and 1 distractor, diameters
        28-40 px. The twins of pair 0 swap positions while fully hidden behind an
        occluder bar for 2-5 frames (a crossing or a row swap); one twin of pair 1
        leaves the frame and re-enters 5-20 frames later. Wanderers move 3-5
        px/frame, the events' objects 5-10. Score association with IDF1 and AssA:
          ctvis track --dataset OUT/instances.json --frames-root OUT/frames \\
              --out results.json --tracker box_iou_weight=0
          python -m training.assoc_metrics OUT/instances.json results.json
        (box_iou_weight=0 switches the box cue off, so embeddings, not boxes, decide)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ctvis synth``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = REID_HELP
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--split", choices=["val", "hard"], default="val", help="difficulty")
    which.add_argument(
        "--preset", choices=["reid"], help="a special-purpose benchmark instead of a split"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (deterministic output)")
    parser.add_argument("--videos", type=int, default=8, help="number of videos")
    parser.add_argument("--out", required=True, help="output directory")


def run(args: argparse.Namespace) -> int:
    """Write ``OUT/instances.json`` and ``OUT/frames/<video>/<frame>.png``."""
    from training.data.reid_synth import write_reid_dataset
    from training.data.synthetic import write_dataset

    if args.videos < 1:
        print("ctvis synth: --videos must be at least 1", file=sys.stderr)
        return 1
    if getattr(args, "preset", None) == "reid":
        path = write_reid_dataset(args.out, args.seed, args.videos)
    else:
        path = write_dataset(args.out, args.split, args.seed, args.videos)
    print(f"wrote {args.videos} videos to {path.parent} (annotations: {path})")
    return 0
