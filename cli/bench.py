"""``ctvis bench``: run one of the benchmark scripts in ``bench/`` (results: BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

SCRIPTS = {
    "tracker": "bench_tracker.py",
    "model": "bench_model.py",
    "service": "bench_service.py",
    "soak": "soak.py",
    "kernels": "bench_kernels.py",
    "train-step": "bench_train_step.py",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``ctvis bench NAME [ARGS...]``; ARGS go to the script (see its ``--help``)."""
    parser.add_argument("name", choices=sorted(SCRIPTS), help="which benchmark")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")


def run(args: argparse.Namespace) -> int:
    """Run ``bench/<script>`` from a source checkout with this interpreter."""
    root = Path(__file__).resolve().parents[1]
    script = root / "bench" / SCRIPTS[args.name]
    if not script.exists():
        print(
            f"ctvis bench: {script} not found (benchmarks need a source checkout)", file=sys.stderr
        )
        return 1
    return subprocess.call([sys.executable, str(script), *args.args], cwd=root)
