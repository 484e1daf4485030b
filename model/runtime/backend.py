"""Inference backends: one call signature for the PyTorch segmenter and an ONNX Runtime session.

Both take a preprocessed ``Bx3xHxW`` float32 batch and return float32 ``FrameOutputs``, so the
engine, the CLI and the benchmarks can swap them without knowing which runs underneath.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from model.nn.ops import onednn_linear as onednn_linear_module
from model.runtime.export_onnx import INPUT_NAME, OUTPUT_NAMES
from model.structures import FrameOutputs

Precision = Literal["float32", "float16", "bfloat16"]

_AUTOCAST_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# Most capable first; ONNX Runtime falls through the list per node.
_PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


class InferenceBackend(Protocol):
    """Runs the segmenter network on a batch of preprocessed frames."""

    def __call__(self, pixels: Tensor) -> FrameOutputs:
        """Predict per-frame outputs.

        Args:
            pixels: Bx3xHxW float32, normalised RGB, zero-padded to a multiple of 32.

        Returns:
            Float32 ``FrameOutputs`` with ``pred_logits`` BxQx(K+1), ``pred_masks``
            BxQx(H/4)x(W/4) and ``pred_embeds`` BxQxD, on the backend's output device.
        """
        ...


class TorchBackend:
    """Runs a PyTorch segmenter under ``inference_mode``, optionally with half-precision autocast.

    Attributes:
        segmenter: the wrapped module, in eval mode on ``device``.
        device: where inputs are moved and outputs are returned.
        dtype: compute precision; ``float16`` / ``bfloat16`` use ``torch.autocast``.
    """

    def __init__(
        self,
        segmenter: nn.Module,
        device: str | torch.device = "cpu",
        dtype: Precision = "float32",
        channels_last: bool = False,
        compile: bool = False,
        onednn_linear: bool | None = None,
    ) -> None:
        """Prepare the module for inference.

        Args:
            segmenter: module whose ``forward(pixels)`` returns ``FrameOutputs``; it is moved
                to ``device`` and put in eval mode (in place).
            device: torch device, e.g. ``"cpu"`` or ``"cuda:0"``.
            dtype: ``"float32"``, or a half type run through autocast (weights stay float32).
            channels_last: convert weights and inputs to the NHWC memory format (helps convs
                on GPUs with tensor cores).
            compile: wrap the forward in ``torch.compile`` (first calls are slow).
            onednn_linear: run the linear layers through oneDNN instead of MKL
                (``model.nn.ops.onednn_linear``: the same values up to float32 rounding, up to
                2x faster on AMD CPUs with AVX-512, 1.04-1.37x slower on AVX2-only ones).
                ``None`` (default): on for float32 on the CPU where
                ``onednn_linear.preferred()`` says oneDNN is the faster one. It changes the
                class of the module's ``nn.Linear`` layers in place (parameters untouched;
                autograd, ONNX export and other devices keep the plain path).
        """
        if dtype not in ("float32", *_AUTOCAST_DTYPES):
            raise ValueError(f"unsupported dtype {dtype!r}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.channels_last = channels_last
        self.segmenter = segmenter.eval().to(self.device)
        if onednn_linear is None:
            onednn_linear = (
                self.device.type == "cpu"
                and dtype == "float32"
                and onednn_linear_module.preferred()
            )
        # number of layers switched to oneDNN (0 when off or the build lacks the kernel)
        self.onednn_linear_layers = (
            onednn_linear_module.use_onednn_linear(self.segmenter) if onednn_linear else 0
        )
        if channels_last:  # (Module.to's memory_format keyword is missing from torch's stubs)
            self.segmenter = self.segmenter.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._forward = torch.compile(self.segmenter) if compile else self.segmenter

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_AUTOCAST_DTYPES[self.dtype])

    def __call__(self, pixels: Tensor) -> FrameOutputs:
        """See :class:`InferenceBackend`; outputs live on ``self.device``."""
        with torch.inference_mode(), self._autocast():
            x = pixels.to(self.device, dtype=torch.float32, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self._forward(x)
        return FrameOutputs(
            pred_logits=out.pred_logits.float(),
            pred_masks=out.pred_masks.float(),
            pred_embeds=out.pred_embeds.float(),
            pred_queries=None if out.pred_queries is None else out.pred_queries.float(),
        )


def default_providers() -> list[str]:
    """ONNX Runtime providers to try, most capable first, among those installed."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [p for p in _PREFERRED_PROVIDERS if p in available]


class OnnxBackend:
    """Runs a model written by ``model.runtime.export_onnx.export_onnx`` with ONNX Runtime.

    Attributes:
        session: the ``onnxruntime.InferenceSession``.
        providers: execution providers the session actually uses.
    """

    def __init__(
        self,
        model_path: str | Path,
        providers: list[str] | None = None,
        num_threads: int | None = None,
    ) -> None:
        """Create the session.

        Args:
            model_path: ``.onnx`` file with input ``pixels`` and outputs ``pred_logits``,
                ``pred_masks``, ``pred_embeds``.
            providers: execution providers in priority order; default: TensorRT and CUDA when
                installed, then CPU. If the requested list fails to initialise (e.g. the
                TensorRT libraries are missing), the session is retried on CPU.
            num_threads: intra-op threads for the CPU provider; default: ONNX Runtime's choice.
        """
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        requested = providers if providers is not None else default_providers()
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=requested)
        except Exception:  # a broken GPU provider must not stop CPU serving
            if requested == ["CPUExecutionProvider"]:
                raise
            cpu = ["CPUExecutionProvider"]
            self.session = ort.InferenceSession(str(model_path), options, providers=cpu)
        self.providers: list[str] = list(self.session.get_providers())

    def __call__(self, pixels: Tensor) -> FrameOutputs:
        """See :class:`InferenceBackend`; outputs are CPU tensors."""
        array = np.ascontiguousarray(pixels.detach().to("cpu", torch.float32).numpy())
        logits, masks, embeds = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: array})
        return FrameOutputs(
            pred_logits=torch.from_numpy(logits),
            pred_masks=torch.from_numpy(masks),
            pred_embeds=torch.from_numpy(embeds),
        )
