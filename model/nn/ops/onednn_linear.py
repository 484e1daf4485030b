"""Linear layers through oneDNN on the CPU at inference (an option of ``TorchBackend``).

PyTorch's CPU wheels run ``F.linear`` in float32 through MKL's sgemm. On AMD CPUs with
AVX-512, MKL takes a slower code path than oneDNN, which the same wheels also ship: on two
cores of an AVX-512 AMD EPYC the Swin-L trunk's linear layers run 1.5-2.3x faster through
``torch.ops.mkldnn._linear_pointwise`` (the kernel Inductor uses for CPU linear layers), with
results equal to MKL's up to float32 rounding (relative difference ~1e-6). For a handful of
rows x features (under ~2M multiply-adds: the decoder's queries, a tiny model's layers) MKL's
lower call overhead wins, so small products stay on it.

Where MKL has its fast path the opposite holds: on two cores of an AVX2-only AMD EPYC the
same Swin-L products take 1.04-1.37x longer through oneDNN. ``preferred()`` is therefore true
only on AMD CPUs whose PyTorch kernels run at the AVX-512 level; Intel CPUs (MKL's home
ground, not measured here) and everything else keep MKL unless asked otherwise.

``use_onednn_linear(module)`` turns every ``nn.Linear`` of a module into ``OneDnnLinear``, a
subclass with the same parameters and state-dict keys that takes the oneDNN path only where
it is valid: float32 CPU tensors without autograd (``inference_mode`` / ``no_grad``), outside
ONNX export, tracing, ``torch.compile`` and dispatch modes such as ``FlopCounterMode``
(which would not see the kernel); everything else goes through ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

# Below this many multiply-adds per call MKL's sgemm is faster (call overhead; break-even
# measured at 0.8-3M on two cores of an AVX-512 AMD EPYC).
MIN_MACS = 1 << 21


def available() -> bool:
    """Whether this PyTorch build has the oneDNN linear kernel."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(
        torch.ops.mkldnn, "_linear_pointwise"
    )


def cpu_vendor() -> str:
    """The CPU's vendor string (``AuthenticAMD``, ``GenuineIntel``, ...); "" where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def preferred(vendor: str | None = None, capability: str | None = None) -> bool:
    """Whether oneDNN beats MKL for float32 linear layers on this CPU (module doc).

    True for AMD CPUs at PyTorch's AVX-512 kernel level when the build has the kernel;
    False elsewhere (AMD CPUs without AVX-512, Intel, ARM).

    Args:
        vendor: CPU vendor string; default: read from ``/proc/cpuinfo``.
        capability: ``torch.backends.cpu.get_cpu_capability()`` (``"AVX512"``, ``"AVX2"``,
            ...); default: this process's.
    """
    vendor = cpu_vendor() if vendor is None else vendor
    if capability is None:
        capability = torch.backends.cpu.get_cpu_capability()
    return available() and vendor == "AuthenticAMD" and capability.startswith("AVX512")


def _exporting() -> bool:
    """Tracing, export, compilation, or a dispatch mode (e.g. ``FlopCounterMode``) is active."""
    return (
        _get_current_dispatch_mode() is not None
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


class OneDnnLinear(nn.Linear):
    """``nn.Linear`` whose inference forward on float32 CPU tensors runs oneDNN (module doc)."""

    def forward(self, input: Tensor) -> Tensor:
        """``...xin_features -> ...xout_features``, as ``nn.Linear``."""
        if (
            not torch.is_grad_enabled()
            and input.device.type == "cpu"
            and input.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and input.dim() >= 2
            and input.numel() * self.out_features >= MIN_MACS
            and not _exporting()
        ):
            return torch.ops.mkldnn._linear_pointwise(
                input.contiguous(), self.weight, self.bias, "none", [], ""
            )
        return F.linear(input, self.weight, self.bias)


def use_onednn_linear(module: nn.Module) -> int:
    """Turn every plain ``nn.Linear`` of ``module`` into ``OneDnnLinear``, in place.

    Parameters, buffers and state-dict keys are unchanged (only the class changes), so a
    model converted here still loads and saves the same checkpoints. Subclasses of
    ``nn.Linear`` are left alone.

    Returns:
        The number of layers converted (0 when ``available()`` is False).
    """
    if not available():
        return 0
    count = 0
    for layer in module.modules():
        if type(layer) is nn.Linear:
            layer.__class__ = OneDnnLinear
            count += 1
    return count
