"""Per-frame network latency on CPU: our PyTorch vs our ONNX Runtime vs Hugging Face Mask2Former.

Every measurement runs in a fresh process (so allocator state, caches and thread pools do not
carry over), and the backends are interleaved round by round so that a slow patch of time on a
shared machine hits all of them alike. Each process builds its model with random weights, runs
``--warmup`` forwards, then times ``--iters`` forwards of a batch of one and reports their mean;
the parent reports the min and median over ``--runs`` processes per backend, plus GFLOPs per
frame counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, 2
FLOPs per multiply-add; sampling, norms and elementwise ops are not counted).

Usage (the Hugging Face worker needs ``transformers`` importable, e.g. via PYTHONPATH)::

    python bench/bench_model.py --model r50 --runs 5 --out bench/results_model.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BACKENDS = ("torch", "onnx", "hf")
PRESET = {"r50": "ytvis19_r50", "swinl": "ytvis19_swinl"}
SEED = 0


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def _our_segmenter(model: str) -> Any:
    import torch

    from model.nn.build import PRESETS, build_segmenter

    torch.manual_seed(SEED)
    return build_segmenter(PRESETS[PRESET[model]][0]).eval()


def _hf_model(model: str) -> Any:
    """Mask2FormerForUniversalSegmentation with our shapes, randomly initialised, no download."""
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        ResNetConfig,
        SwinConfig,
    )

    if model == "r50":
        backbone = ResNetConfig(
            depths=[3, 4, 6, 3],
            hidden_sizes=[256, 512, 1024, 2048],
            embedding_size=64,
            layer_type="bottleneck",
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
        queries = 100
    else:
        backbone = SwinConfig(
            embed_dim=192,
            depths=[2, 2, 18, 2],
            num_heads=[6, 12, 24, 48],
            window_size=12,
            drop_path_rate=0.0,
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
        queries = 200
    cfg = Mask2FormerConfig(
        backbone_config=backbone,
        use_pretrained_backbone=False,
        num_queries=queries,
        num_labels=40,
        hidden_dim=256,
        mask_feature_size=256,
        feature_size=256,
        encoder_layers=6,
        encoder_feedforward_dim=1024,
        # HF counts the query-only prediction as a layer: 10 here means 9 transformer layers.
        decoder_layers=10,
        dim_feedforward=2048,
        num_attention_heads=8,
    )
    import torch

    torch.manual_seed(SEED)
    return Mask2FormerForUniversalSegmentation(cfg).eval()


def _make_runner(backend: str, model: str, onnx_path: str, threads: int) -> tuple[Any, Any]:
    """Return ``(call, module_or_None)`` where ``call(pixels)`` runs one forward."""
    if backend == "torch":
        from model.runtime.backend import TorchBackend

        segmenter = _our_segmenter(model)
        return TorchBackend(segmenter), segmenter
    if backend == "onnx":
        from model.runtime.backend import OnnxBackend

        onnx_backend = OnnxBackend(onnx_path, ["CPUExecutionProvider"], num_threads=threads)
        return onnx_backend, None
    import torch

    hf = _hf_model(model)

    def call(pixels: Any) -> Any:
        with torch.inference_mode():
            return hf(pixel_values=pixels)

    return call, hf


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Time one backend in this process; returns a JSON-serialisable record."""
    _set_threads(args.threads)
    import torch

    call, module = _make_runner(args.worker, args.model, args.onnx_path, args.threads)
    pixels = torch.randn(1, 3, args.height, args.width, generator=torch.Generator().manual_seed(1))
    for _ in range(args.warmup):
        call(pixels)
    times, cpu_times = [], []
    for _ in range(args.iters):
        start, cpu_start = time.perf_counter(), time.process_time()
        call(pixels)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    record: dict[str, Any] = {
        "backend": args.worker,
        "seconds": statistics.fmean(times),
        "cpu_seconds": statistics.fmean(cpu_times),
        "load1": os.getloadavg()[0],
    }
    if args.flops and module is not None:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            call(pixels)
        record["gflops"] = counter.get_total_flops() / 1e9
        record["params_m"] = sum(p.numel() for p in module.parameters()) / 1e6
    return record


def _spawn(args: argparse.Namespace, backend: str, onnx_path: str, flops: bool) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        backend,
        "--model",
        args.model,
        "--onnx-path",
        onnx_path,
        "--threads",
        str(args.threads),
        "--height",
        str(args.height),
        "--width",
        str(args.width),
        "--warmup",
        str(args.warmup),
        "--iters",
        str(args.iters),
    ] + (["--flops"] if flops else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{backend} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _export(args: argparse.Namespace, path: Path) -> float:
    import torch

    from model.runtime.export_onnx import export_onnx

    _set_threads(args.threads)
    start = time.perf_counter()
    with torch.no_grad():
        export_onnx(_our_segmenter(args.model), path, args.height, args.width)
    return time.perf_counter() - start


def _versions() -> str:
    import onnxruntime
    import torch

    parts = [f"torch {torch.__version__}", f"onnxruntime {onnxruntime.__version__}"]
    try:
        import transformers

        parts.append(f"transformers {transformers.__version__}")
    except ImportError:
        parts.append("transformers missing")
    return ", ".join(parts)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _table(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> str:
    names = {
        "torch": "ours, PyTorch eager (`TorchBackend`, float32)",
        "onnx": "ours, ONNX Runtime CPU (`OnnxBackend`, opset 17)",
        "hf": "HF `Mask2FormerForUniversalSegmentation`",
    }
    lines = [
        "| backend | min s/frame | median s/frame | min CPU s/frame | runs | GFLOPs/frame "
        "| params (M) | load |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for backend, records in results.items():
        secs = [r["seconds"] for r in records]
        flops = next((r["gflops"] for r in records if "gflops" in r), None)
        params = next((r["params_m"] for r in records if "params_m" in r), None)
        if backend == "onnx":
            torch_records = results.get("torch", [])
            flops = next((r["gflops"] for r in torch_records if "gflops" in r), None)
            params = next((r["params_m"] for r in torch_records if "params_m" in r), None)
        flops_s = f"{flops:.1f}" if flops is not None else "-"
        params_s = f"{params:.2f}" if params is not None else "-"
        lines.append(
            f"| {names[backend]} | {min(secs):.3f} | {statistics.median(secs):.3f} | "
            f"{min(r['cpu_seconds'] for r in records):.2f} | "
            f"{len(secs)} | {flops_s} | {params_s} | "
            f"{statistics.median(r['load1'] for r in records):.1f} |"
        )
    return "\n".join(lines)


def _ratios(results: dict[str, list[dict[str, Any]]]) -> str:
    """Ratios of the row minima and medians, and the median of the per-run ratios.

    Runs of the same index follow each other within seconds, so their ratio cancels most
    of the slow drift in the shared host's speed that separates the rows' minima.
    """
    pairs = [("torch", "hf", "ours / HF"), ("onnx", "torch", "ONNX Runtime / ours")]
    lines = []
    for num, den, label in pairs:
        if num not in results or den not in results:
            continue
        a = [r["seconds"] for r in results[num]]
        b = [r["seconds"] for r in results[den]]
        per_run = [x / y for x, y in zip(a, b, strict=True)]
        lines.append(
            f"- {label}: {min(a) / min(b):.3f} (min), "
            f"{statistics.median(a) / statistics.median(b):.3f} (median), "
            f"{statistics.median(per_run):.3f} (median of the {len(per_run)} per-run ratios)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse flags; run as the orchestrator or, with ``--worker``, as one measurement."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(PRESET), default="r50")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=864)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5, help="processes per backend")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3, help="timed forwards per process")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--out", help="write the markdown section here (appends)")
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--onnx-path", default="", help=argparse.SUPPRESS)
    parser.add_argument("--flops", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    backends = [b for b in args.backends.split(",") if b]
    results: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / f"{args.model}.onnx"
        export_s = _export(args, onnx_path) if "onnx" in backends else 0.0
        print(f"exported {onnx_path} in {export_s:.1f}s", flush=True)
        for run in range(args.runs):
            for backend in backends:
                record = _spawn(args, backend, str(onnx_path), flops=run == 0)
                results[backend].append(record)
                print(f"run {run} {backend}: {json.dumps(record)}", flush=True)
    command = "python bench/bench_model.py " + " ".join(sys.argv[1:])
    section = "\n".join(
        [
            f"## Network latency, {args.model.upper()} preset, {args.height}x{args.width}, "
            f"batch 1, {args.threads} CPU threads",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {_cpu_name()}, {os.cpu_count()} visible cores; {_versions()}. "
            f"Random weights; each row is {args.runs} fresh processes (interleaved), each "
            f"timing the mean of {args.iters} forwards after {args.warmup} warm-up forwards. "
            "GFLOPs from `FlopCounterMode` (matmul/conv only; 2 FLOPs per MAC); the ONNX row "
            "runs the same graph as the PyTorch row. `load` is the median 1-minute load "
            "average at the end of each measurement: the cores are shared with other work, so "
            "the min is the more reliable figure. `CPU s` is the process CPU time per forward "
            "(all threads; includes thread-pool spinning).",
            "",
            _table(args, results),
            "",
            _ratios(results),
            "",
        ]
    )
    print(section)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(section + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
