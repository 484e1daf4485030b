"""ONNX export of the segmenter: a thin wrapper with fixed I/O names plus an export function.

The tracker stays in Python; only ``Segmenter.forward`` (pixels -> logits, masks, embeddings) is
exported. We use the TorchScript-based exporter (``dynamo=False``): it needs no extra packages
and keeps height and width symbolic because the network computes padding and shapes from the
traced input sizes. The traced network is a copy of the segmenter with the export forms of
``model.runtime.export_forms`` swapped in.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from model.runtime.export_forms import use_export_forms

INPUT_NAME = "pixels"
OUTPUT_NAMES = ("pred_logits", "pred_masks", "pred_embeds")
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "pixels": {0: "batch", 2: "height", 3: "width"},
    "pred_logits": {0: "batch"},
    "pred_masks": {0: "batch", 2: "mask_height", 3: "mask_width"},
    "pred_embeds": {0: "batch"},
}


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

    A deep copy of ``segmenter`` in eval mode, with its modules' export forms swapped in
    (``use_export_forms``), is traced in float32 on the segmenter's device with a random
    ``batch_size x 3 x height x width`` input; ``segmenter`` itself is left as it is. The
    written file is checked with ``onnx.checker``.

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
    traced = copy.deepcopy(segmenter).eval()
    use_export_forms(traced)
    wrapper = OnnxExportWrapper(traced)
    param = next(traced.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    pixels = torch.randn(batch_size, 3, height, width, device=device)
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
    onnx.checker.check_model(str(out_path))
    return out_path
