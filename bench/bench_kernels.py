"""Kernel-level A/B timings behind two CPU choices of the network (printed as markdown tables).

``linear``: the Swin-L trunk's larger float32 products at 480x864 (``qkv`` and MLP layers of
each stage; ``proj`` and patch merging are left out) through PyTorch's default ``F.linear``
(MKL's sgemm in the CPU wheels) and through oneDNN's ``torch.ops.mkldnn._linear_pointwise``;
the ratio is what ``onednn_linear.preferred()`` decides on (oneDNN on AMD CPUs with AVX-512
only).

``swin-plan``: the Swin-L segmenter's forward with its stages gathering windows through a
``WindowPlan`` (``qkv`` / ``proj`` on real tokens only) against the reference's pad / roll /
partition in every block, alternated in one process with the same weights and input; the
outputs are compared too.

Usage::

    python bench/bench_kernels.py linear --repeats 5
    python bench/bench_kernels.py swin-plan --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (rows, in, out) of the Swin-L trunk's qkv, fc1 and fc2 layers at 480x864, stage by stage
# (rows = the stage's real tokens: qkv skips the window padding of stages 3 / 4, see
# model.nn.backbone.swin_windows.WindowPlan; width C = 192 * 2**stage, MLP ratio 4)
SWIN_L_SHAPES = [
    shape
    for rows, dim in ((25920, 192), (6480, 384), (1620, 768), (405, 1536))
    for shape in ((rows, dim, 3 * dim), (rows, dim, 4 * dim), (rows, 4 * dim, dim))
]


def _best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def bench_linear(repeats: int) -> None:
    """Print F.linear against oneDNN per Swin-L product shape."""
    from model.nn.ops import onednn_linear

    print(f"CPU vendor {onednn_linear.cpu_vendor() or '?'}, ", end="")
    print(f"capability {torch.backends.cpu.get_cpu_capability()}, ", end="")
    print(f"preferred() = {onednn_linear.preferred()}, threads {torch.get_num_threads()}\n")
    print("| rows x in x out | F.linear ms | oneDNN ms | oneDNN / F.linear |")
    print("| --- | ---: | ---: | ---: |")
    ratios = []
    with torch.inference_mode():
        for rows, k, n in SWIN_L_SHAPES:
            x, w, b = torch.randn(rows, k), torch.randn(n, k), torch.randn(n)
            mkl = _best_ms(lambda: F.linear(x, w, b), repeats)  # noqa: B023
            dnn = _best_ms(
                lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""),  # noqa: B023
                repeats,
            )
            ratios.append(dnn / mkl)
            print(f"| {rows}x{k}x{n} | {mkl:.1f} | {dnn:.1f} | {dnn / mkl:.2f} |")
    print(f"\noneDNN / F.linear: {min(ratios):.2f}-{max(ratios):.2f}")


def bench_swin_plan(rounds: int, height: int, width: int) -> None:
    """Print the Swin-L forward with and without window plans, alternated."""
    from model.nn.build import PRESETS, build_segmenter
    from model.runtime.backend import TorchBackend

    torch.manual_seed(0)
    segmenter = build_segmenter(PRESETS["ytvis19_swinl"][0])
    backend = TorchBackend(segmenter)
    stages = segmenter.backbone.layers
    pixels = torch.randn(1, 3, height, width)

    def run(planned: bool) -> tuple[float, object]:
        for stage in stages:
            stage.planned = planned
        start = time.perf_counter()
        out = backend(pixels)
        return time.perf_counter() - start, out

    _, planned_out = run(True)
    _, padded_out = run(False)
    for name in ("pred_logits", "pred_masks", "pred_embeds"):
        diff = (getattr(planned_out, name) - getattr(padded_out, name)).abs().max().item()
        print(f"max |planned - padded| {name}: {diff:.3g}")
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(rounds):
        for planned in (True, False) if i % 2 == 0 else (False, True):
            times[planned].append(run(planned)[0])
    print(f"\nSwin-L forward {height}x{width}, {rounds} alternated rounds, ", end="")
    print(f"{torch.get_num_threads()} threads, linear layers: ", end="")
    print("oneDNN" if backend.onednn_linear_layers else "default")
    print("\n| stages | min s | median s |\n| --- | ---: | ---: |")
    for planned, label in ((True, "window plans"), (False, "pad / roll / partition")):
        print(f"| {label} | {min(times[planned]):.3f} | {statistics.median(times[planned]):.3f} |")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("linear", "swin-plan"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="linear: timed calls per kernel")
    parser.add_argument("--rounds", type=int, default=6, help="swin-plan: alternated rounds")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=864)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what == "linear":
        bench_linear(args.repeats)
    else:
        bench_swin_plan(args.rounds, args.height, args.width)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
