"""``ctvis export-onnx``: write a checkpoint's network (pixels -> logits, masks, embeds) to ONNX."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the export flags."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint directory (model.safetensors + config)")
    source.add_argument("--preset", help="export a preset with random weights (e.g. tiny)")
    parser.add_argument(
        "--out",
        help="output .onnx file (default: <checkpoint>/model.onnx, where `ctvis track` looks)",
    )
    parser.add_argument(
        "--height", type=int, help="trace height, multiple of 32 (default: from the min size)"
    )
    parser.add_argument(
        "--width", type=int, help="trace width, multiple of 32 (default: 16:9 of the height)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="run the exported file with ONNX Runtime and report the max difference to PyTorch",
    )


def _round_up(value: float, multiple: int) -> int:
    return int(-(-int(value + 0.5) // multiple) * multiple)


def run(args: argparse.Namespace) -> int:
    """Export the network and print the written path; returns the exit code."""
    import sys
    from pathlib import Path

    import torch

    from model.nn.build import PRESETS, build_segmenter
    from model.runtime.export_onnx import export_onnx

    if args.out is None and args.checkpoint is None:
        print("ctvis export-onnx: --out is required with --preset", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out is not None else Path(args.checkpoint) / "model.onnx"
    if args.checkpoint is not None:
        from model.checkpoint import CheckpointError, load_checkpoint

        try:
            loaded = load_checkpoint(args.checkpoint)
        except CheckpointError as exc:
            print(f"ctvis export-onnx: {exc}", file=sys.stderr)
            return 1
        segmenter, pre_cfg = loaded.segmenter, loaded.preprocess_cfg
    else:
        if args.preset not in PRESETS:
            names = ", ".join(sorted(PRESETS))
            print(f"ctvis export-onnx: unknown preset {args.preset!r} ({names})", file=sys.stderr)
            return 2
        model_cfg, pre_cfg, _ = PRESETS[args.preset]
        segmenter = build_segmenter(model_cfg).eval()
    divisibility = pre_cfg.size_divisibility
    height = args.height or _round_up(pre_cfg.min_size, divisibility)
    width = args.width or _round_up(pre_cfg.min_size * 16 / 9, divisibility)
    if height % divisibility or width % divisibility:
        msg = f"ctvis export-onnx: height and width must be multiples of {divisibility}"
        print(msg, file=sys.stderr)
        return 2
    path = export_onnx(segmenter, out, height, width, opset=args.opset)
    print(f"wrote {path} (traced at {height}x{width}, opset {args.opset}; batch/H/W dynamic)")
    if args.check:
        from model.runtime.backend import OnnxBackend, TorchBackend

        pixels = torch.randn(1, 3, height, width)
        expected = TorchBackend(segmenter)(pixels)
        got = OnnxBackend(path)(pixels)
        for name in ("pred_logits", "pred_masks", "pred_embeds"):
            diff = (getattr(got, name) - getattr(expected, name)).abs().max().item()
            print(f"  {name}: max |onnx - torch| = {diff:.3g}")
    return 0
