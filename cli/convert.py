"""``ctvis convert``: official CTVIS ``.pth`` / Mask2Former ``.pkl`` + config -> our checkpoint."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``convert`` options on ``parser``."""
    parser.add_argument(
        "--official",
        required=True,
        metavar="CKPT",
        help="official CTVIS .pth (detectron2 dict or bare state dict) or Mask2Former .pkl",
    )
    parser.add_argument(
        "--official-config",
        required=True,
        metavar="CONFIG.yaml",
        help="the detectron2 config of that checkpoint (dumped, or repo yaml with _BASE_)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output checkpoint directory")
    parser.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="take class names / category ids from this preset (e.g. ytvis19_r50); "
        "default: inferred from DATASETS.TEST",
    )


def run(args: argparse.Namespace) -> int:
    """Convert; print a one-line summary. Returns 0, or 1 with a message on stderr."""
    from model.checkpoint import CheckpointError
    from model.official.convert import convert_official

    try:
        result = convert_official(args.official, args.official_config, args.out, args.preset)
    except CheckpointError as exc:
        print(f"ctvis convert: error: {exc}", file=sys.stderr)
        return 1
    cfg = result.model_cfg
    provenance = result.meta["provenance"]
    print(
        f"wrote {args.out}: {cfg.backbone} backbone, {cfg.num_queries} queries, "
        f"{cfg.num_classes} classes, min_size {result.preprocess_cfg.min_size}; "
        f"left at init: {len(provenance['left_at_init'])} tensors"
    )
    return 0
