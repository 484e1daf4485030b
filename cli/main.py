"""The ``ctvis`` command: a thin dispatcher over subcommand modules in ``cli/``.

Each subcommand lives in ``cli/<name>.py`` and exposes ``add_arguments(parser)`` and
``run(args) -> int``. Those modules import heavy packages (torch, fastapi) inside ``run`` only,
so ``ctvis --help`` stays fast. A subcommand whose module does not exist yet still shows in
``--help`` and exits 2 with a message saying so.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

SUBCOMMANDS: dict[str, str] = {
    "serve": "run the HTTP/WebSocket API (and, by default, an in-process worker)",
    "worker": "run a GPU batch worker attached to Redis",
    "track": "run online tracking on a video file, frame folder or dataset; write results JSON",
    "evaluate": "score a YouTube-VIS results JSON against ground truth (AP/AR)",
    "convert": "convert an official CTVIS / Mask2Former checkpoint to our format",
    "export-onnx": "export a checkpoint's network to ONNX",
    "train": "consistent training (CTVIS) from a config file",
    "synth": "write the procedural synthetic VIS benchmark to disk",
    "bench": "run the micro-benchmarks in bench/",
}

NOT_IMPLEMENTED_EXIT = 2


def _module_name(command: str) -> str:
    return "cli." + command.replace("-", "_")


def _has_module(command: str) -> bool:
    return importlib.util.find_spec(_module_name(command)) is not None


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one sub-parser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="ctvis",
        description="CTVIS online video instance segmentation: serve, track, evaluate, train.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        if _has_module(name):
            module = importlib.import_module(_module_name(name))
            p = sub.add_parser(name, help=help_text, description=help_text)
            module.add_arguments(p)
        else:
            p = sub.add_parser(
                name,
                help=f"{help_text} (not implemented yet)",
                description=f"{help_text}. Not implemented yet: exits {NOT_IMPLEMENTED_EXIT}.",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ctvis`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return NOT_IMPLEMENTED_EXIT
    if not _has_module(args.command):
        print(f"ctvis {args.command}: not implemented yet", file=sys.stderr)
        return NOT_IMPLEMENTED_EXIT
    module = importlib.import_module(_module_name(args.command))
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
