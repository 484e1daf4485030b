"""oneDNN linear layers (``model.nn.ops.onednn_linear``) and their use in ``TorchBackend``."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model.nn.build import PRESETS, build_segmenter
from model.nn.ops import onednn_linear
from model.nn.ops.onednn_linear import MIN_MACS, available, use_onednn_linear
from model.runtime.backend import TorchBackend


def _ran_onednn(fn) -> bool:
    """Whether ``fn()`` dispatched oneDNN's linear kernel (from the profiler's op names)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return any("_linear_pointwise" in e.name for e in prof.events())


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(48, 400),
        nn.GELU(),
        nn.Linear(400, 240, bias=False),
        nn.MultiheadAttention(240, 2),
    )


# rows for which both layers of ``_model()[:3]`` take the oneDNN path
ROWS = -(-MIN_MACS // (400 * 240))


def test_the_build_has_the_kernel() -> None:
    assert available()


def test_conversion_keeps_parameters_and_skips_subclasses() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_onednn_linear(model) == 2
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)

    # inputs just large enough for the oneDNN path of a converted (in, out) layer
    def big(in_features: int, out_features: int) -> torch.Tensor:
        return torch.randn(-(-MIN_MACS // (in_features * out_features)), in_features)

    with torch.inference_mode():
        # the two plain Linear layers now run oneDNN's kernel ...
        assert _ran_onednn(lambda: model[0](big(48, 400)))
        assert _ran_onednn(lambda: model[2](big(400, 240)))
        # ... MultiheadAttention's out_proj (a Linear subclass) is left alone
        assert not _ran_onednn(lambda: model[3].out_proj(big(240, 240)))


@pytest.mark.parametrize(
    "shape", [(ROWS, 48), (3, ROWS, 48), (2, 3, ROWS, 48)], ids=["2d", "3d", "4d"]
)
def test_inference_values_equal_f_linear(shape: tuple[int, ...]) -> None:
    plain = _model()[:3]
    fast = copy.deepcopy(plain)
    use_onednn_linear(fast)
    x = torch.randn(shape)
    with torch.inference_mode():
        assert _ran_onednn(lambda: fast(x))
        expected, got = plain(x), fast(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_non_contiguous_input_and_no_bias() -> None:
    layer = nn.Linear(320, 160, bias=False)
    use_onednn_linear(layer)
    x = torch.randn(320, 200).t()  # 200x320, not contiguous
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)


def test_small_inputs_autograd_and_flop_counting_use_the_plain_path() -> None:
    plain = _model()[:3]
    fast = copy.deepcopy(plain)
    use_onednn_linear(fast)
    small = torch.randn(MIN_MACS // (400 * 240) - 1, 48)  # below the threshold for both layers
    with torch.inference_mode():
        assert not _ran_onednn(lambda: fast(small))
    # with autograd: the plain kernel, the same gradients as an unconverted module
    x = torch.randn(4, 100, 48)
    assert not _ran_onednn(lambda: fast(x))
    plain(x).square().sum().backward()
    fast(x).square().sum().backward()
    for p, q in zip(plain.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fast(x)
    assert counter.get_total_flops() == 2 * 400 * (48 * 400 + 400 * 240)


@pytest.mark.parametrize(
    ("vendor", "capability", "expected"),
    [
        ("AuthenticAMD", "AVX512", True),  # Zen 4 / Zen 5: MKL's slow path
        ("AuthenticAMD", "AVX2", False),  # Zen 3: MKL 1.04-1.37x faster
        ("GenuineIntel", "AVX512", False),  # MKL's home ground
        ("", "DEFAULT", False),  # e.g. ARM
    ],
)
def test_preferred_only_on_amd_with_avx512(vendor: str, capability: str, expected: bool) -> None:
    assert onednn_linear.preferred(vendor, capability) is expected


def test_cpu_vendor_reads_this_machine() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    vendors = [line.split(":", 1)[1].strip() for line in lines if line.startswith("vendor_id")]
    assert onednn_linear.cpu_vendor() == (vendors[0] if vendors else "")


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n", "GenuineIntel"),
        ("processor\t: 0\nCPU implementer\t: 0x41\n", ""),  # ARM: no vendor_id line
        (None, ""),  # no /proc/cpuinfo
    ],
    ids=["intel", "arm", "unreadable"],
)
def test_cpu_vendor_parses_cpuinfo(
    cpuinfo: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_open(path: str, *args: object, **kwargs: object) -> io.StringIO:
        assert path == "/proc/cpuinfo"
        if cpuinfo is None:
            raise FileNotFoundError(path)
        return io.StringIO(cpuinfo)

    monkeypatch.setattr(onednn_linear, "open", fake_open, raising=False)
    assert onednn_linear.cpu_vendor() == expected


def test_torch_backend_uses_onednn_for_float32_on_cpu_only() -> None:
    cfg = PRESETS["tiny"][0]
    torch.manual_seed(0)
    segmenter = build_segmenter(cfg)
    reference = TorchBackend(copy.deepcopy(segmenter), onednn_linear=False)
    fast = TorchBackend(copy.deepcopy(segmenter), onednn_linear=True)
    assert reference.onednn_linear_layers == 0
    assert fast.onednn_linear_layers > 0
    half = TorchBackend(copy.deepcopy(segmenter), dtype="bfloat16", onednn_linear=None)
    assert half.onednn_linear_layers == 0
    pixels = torch.randn(1, 3, 256, 320)  # large enough for the tiny model's bigger layers
    assert _ran_onednn(lambda: fast(pixels))
    expected, got = reference(pixels), fast(pixels)
    for name in ("pred_logits", "pred_masks", "pred_embeds"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=0, atol=1e-4)


@pytest.mark.parametrize("preferred", [True, False])
def test_torch_backend_default_follows_the_cpu_rule(
    preferred: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onednn_linear, "preferred", lambda: preferred)
    torch.manual_seed(0)
    backend = TorchBackend(build_segmenter(PRESETS["tiny"][0]))
    assert (backend.onednn_linear_layers > 0) is preferred
