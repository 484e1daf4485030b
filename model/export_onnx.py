"""ONNX export of the segmenter: a thin wrapper with fixed I/O names plus an export function.

The tracker stays in Python; only ``Segmenter.forward`` (pixels -> logits, masks, embeddings) is
exported. We use the TorchScript-based exporter (``dynamo=False``): it needs no extra packages
and keeps height and width symbolic because the network computes padding and shapes from the
traced input sizes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

INPUT_NAME = "pixels"
OUTPUT_NAMES = ("pred_logits", "pred_masks", "pred_embeds")
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "pixels": {0: "batch", 2: "height", 3: "width"},
    "pred_logits": {0: "batch"},
    "pred_masks": {0: "batch", 2: "mask_height", 3: "mask_width"},
    "pred_embeds": {0: "batch"},
}


def is_exporting() -> bool:
    """True while ``torch.onnx.export`` (or a TorchScript trace) runs the model.

    Modules switch to their export forms then: ``grid_sample`` deformable attention and
    spelled-out attention, which ONNX Runtime runs faster than what the exporter makes of
    the eager kernels.
    """
    return bool(torch.onnx.is_in_onnx_export() or torch.jit.is_tracing())


class OnnxExportWrapper(nn.Module):
    """Expose ``Segmenter.forward`` as a function of one tensor returning three tensors."""

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Run the segmenter.

        Args:
            pixels: Bx3xHxW float32, normalised RGB, zero-padded to a multiple of 32.

        Returns:
            ``pred_logits`` BxQx(K+1), ``pred_masks`` BxQx(H/4)x(W/4) mask logits and
            ``pred_embeds`` BxQxD, all float32.
        """
        out = self.segmenter(pixels)
        return out.pred_logits, out.pred_masks, out.pred_embeds


def export_onnx(
    segmenter: nn.Module,
    out_path: str | Path,
    height: int,
    width: int,
    opset: int = 17,
    batch_size: int = 1,
) -> Path:
    """Export ``segmenter`` to an ONNX file with dynamic batch, height and width.

    The model is traced in eval mode and float32 on its current device with a random
    ``batch_size x 3 x height x width`` input; its training flag is restored afterwards.
    The written file is checked with ``onnx.checker``.

    Args:
        segmenter: module whose ``forward(pixels)`` returns ``FrameOutputs``.
        out_path: destination ``.onnx`` file (parent folders are created).
        height: trace height (a multiple of 32; any multiple of 32 works at run time).
        width: trace width (a multiple of 32).
        opset: ONNX opset version.
        batch_size: trace batch size (any batch works at run time).

    Returns:
        The path written.
    """
    import onnx

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    was_training = segmenter.training
    wrapper = OnnxExportWrapper(segmenter).eval()
    param = next(segmenter.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    pixels = torch.randn(batch_size, 3, height, width, device=device)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated and warns about traced shape arithmetic,
            # which is exactly what keeps H and W dynamic here; the test suite turns warnings
            # into errors, so silence them for the duration of the trace.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (pixels,),
                str(out_path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=DYNAMIC_AXES,
                opset_version=opset,
                do_constant_folding=True,
            )
    finally:
        segmenter.train(was_training)
    onnx.checker.check_model(str(out_path))
    return out_path
