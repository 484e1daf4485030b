"""Export forms of the network's modules: what ``export_onnx`` traces in place of the eager ones.

The eager modules of ``model.nn`` pick kernels for PyTorch (fused attention, the deformable
attention's ``embedding_bag`` gather, window plans cached per size, no zero-width padding).
Traced to ONNX those choices either bake the trace's sizes into the graph (Python branches on
sizes) or export to graphs ONNX Runtime runs slowly. Each class here subclasses one eager module
and overrides only the methods whose export form differs; ``use_export_forms`` changes the
class of every such module of a network in place (parameters, buffers and state-dict keys stay
as they are), and ``export_onnx`` applies it to a deep copy of the segmenter before tracing.
Every form equals its eager counterpart up to float rounding (``tests/model/test_swin.py``,
``tests/model/ops/test_ms_deform_attn.py``, ``tests/model/test_transformer_decoder.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.nn.backbone.swin import PatchMerging, SwinStage
from model.nn.backbone.swin_blocks import SwinBlock, WindowAttention
from model.nn.backbone.swin_windows import (
    WindowPlan,
    pad_amount,
    window_partition,
    window_plan,
    window_reverse,
)
from model.nn.ops.ms_deform_attn import MSDeformAttn
from model.nn.ops.onednn_linear import OneDnnLinear
from model.nn.transformer_decoder import CrossAttentionLayer

__all__ = ["EXPORT_FORMS", "use_export_forms"]


class ExportWindowAttention(WindowAttention):
    """Window attention spelled out, which ONNX Runtime runs faster than the exporter's form
    of ``scaled_dot_product_attention``, plus the head-major planned form of the blocks."""

    def attend(self, qkv: Tensor, mask: Tensor | None = None) -> Tensor:
        """``softmax(q k^T * scale + bias (+ mask)) v``; shapes as ``WindowAttention.attend``
        ((B*nW)xNx3C -> (B*nW)xNxC), except that ``mask`` is the full nWxNxN mask."""
        bw, n, c3 = qkv.shape
        c = c3 // 3
        qkv = qkv.view(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*nW) x heads x N x hd
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(-1, num_windows, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        return (attn @ v).transpose(1, 2).reshape(bw, n, c)

    def attend_heads(
        self, x: Tensor, to_windows: Tensor, from_windows: Tensor, mask: Tensor | None
    ) -> Tensor:
        """Planned window attention with head-major batches, ``proj`` included.

        ``qkv`` is applied as one ``C x d`` product per head and part, so q, k and v come out
        as B x heads x tokens x d and are gathered into windows along the tokens: no split
        of a 3C-wide product and no heads-to-front copies. Two biases are moved, exactly
        in real arithmetic: k's adds ``q . b_k`` to every logit of a query, which softmax
        ignores, and v's passes through the attention unchanged (its rows sum to 1), so it
        is folded into ``proj``'s bias. In ONNX Runtime at 480x864 this takes the attention
        of Swin-L's blocks (all but the MLP and norms) from 0.80x to 0.74x the time of their
        MLP products, about 140 ms less per frame.

        Args:
            x: B x T x C normalised tokens (row-major, unpadded).
            to_windows: (nW*N,) index into ``[pad; tokens]`` of every window slot (0: pad,
                a zero token, whose qkv is the layer's bias).
            from_windows: (T,) window slot of every token.
            mask: nWxNxN additive mask for shifted windows, or None.

        Returns:
            B x T x C tokens after ``proj``.
        """
        b = x.shape[0]
        c = self.proj.in_features  # a Python int: the weights below fold into constants
        heads = self.num_heads
        d = c // heads
        n = self.window_size * self.window_size
        weight = self.qkv.weight.view(3, heads, d, c).transpose(-1, -2)  # 3 x heads x C x d
        bias = self.qkv.bias.view(3, heads, 1, d)
        tokens = torch.cat([x.new_zeros(b, 1, c), x], 1).unsqueeze(1)  # B x 1 x (1+T) x C
        q = tokens @ weight[0] + bias[0]  # B x heads x (1+T) x d
        k = tokens @ weight[1]
        v = tokens @ weight[2]
        q, k, v = (t.index_select(2, to_windows).view(-1, n, d) for t in (q, k, v))
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B*heads*nW) x N x N
        attn = attn.view(b, heads, -1, n, n) + self.relative_position_bias()[None, :, None]
        if mask is not None:
            attn = attn + mask[None, None]
        out = attn.view(-1, n, n).softmax(dim=-1) @ v  # (B*heads*nW) x N x d
        out = out.view(b, heads, -1, d).transpose(1, 2).reshape(b, -1, c)
        proj_bias = self.proj.weight @ self.qkv.bias[2 * c :]
        if self.proj.bias is not None:
            proj_bias = proj_bias + self.proj.bias
        return F.linear(out.index_select(1, from_windows), self.proj.weight, proj_bias)


class ExportSwinBlock(SwinBlock):
    """Swin block whose window attention takes one call with the full region mask."""

    attn: ExportWindowAttention

    def _attend_planned(self, x: Tensor, plan: WindowPlan, mask: Tensor | None) -> Tensor:
        """``ExportWindowAttention.attend_heads`` through the plan (Bx(H*W)xC -> same)."""
        return self.attn.attend_heads(x, plan.to_windows, plan.from_windows, mask)

    def _attend_padded(self, x: Tensor, height: int, width: int, mask: Tensor | None) -> Tensor:
        """Pad (always: the amount follows traced sizes), roll, partition, attend all windows
        in one call (Bx(H*W)xC -> same)."""
        b, _, c = x.shape
        ws = self.window_size
        x = x.view(b, height, width, c)
        x = F.pad(x, (0, 0, 0, pad_amount(width, ws), 0, pad_amount(height, ws)))
        hp, wp = x.shape[1], x.shape[2]
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(x, ws), mask if self.shift > 0 else None)
        x = window_reverse(windows, ws, b, hp, wp)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return x[:, :height, :width, :].reshape(b, -1, c)


class ExportPatchMerging(PatchMerging):
    """Patch merging that always pads to even sizes (the amount follows traced sizes)."""

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """Map Bx(H*W)xC to Bx(ceil(H/2)*ceil(W/2))x2C."""
        b, _, c = x.shape
        x = F.pad(x.view(b, height, width, c), (0, 0, 0, width % 2, 0, height % 2))
        phases = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        x = torch.cat(phases, dim=-1).view(b, -1, 4 * c)
        return self.reduction(self.norm(x))


class ExportSwinStage(SwinStage):
    """Swin stage whose window plans are built in the graph, for every map size."""

    def _plans(self, height: int, width: int, device: torch.device) -> list[WindowPlan | None]:
        """Ungrouped plans of the unshifted and the shifted blocks (traced sizes), or None
        when ``planned`` is off."""
        if not self.planned:
            return [None, None]
        return [
            window_plan(height, width, self.window_size, shift, False, device)
            for shift in (0, self.shift)[: len(self.blocks)]
        ]


class ExportMSDeformAttn(MSDeformAttn):
    """Deformable attention that always samples with ``grid_sample`` (``GridSample`` in ONNX;
    ``embedding_bag`` has no efficient ONNX form)."""

    def _gathers(self, device: torch.device, head_dim: int, needs_grad: bool) -> bool:
        """Never: the export samples with ``grid_sample``."""
        return False


class ExportCrossAttentionLayer(CrossAttentionLayer):
    """Masked cross-attention spelled out: the exporter's ``scaled_dot_product_attention``
    adds a per-head ``Where``; spelled out, the additive mask stays Bx1xQxHW."""

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor) -> Tensor:
        """``softmax(q k^T / sqrt(d) + bias) v``; shapes as ``CrossAttentionLayer._attend``.

        No row of the bias is all -inf: ``_blocked`` unblocks rows that would block every
        pixel.
        """
        bias = attn_mask.to(q.dtype).masked_fill(attn_mask, float("-inf"))  # 0 where open
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
        return torch.matmul(torch.softmax(scores + bias[:, None], -1), v)


EXPORT_FORMS: dict[type[nn.Module], type[nn.Module]] = {
    WindowAttention: ExportWindowAttention,
    SwinBlock: ExportSwinBlock,
    PatchMerging: ExportPatchMerging,
    SwinStage: ExportSwinStage,
    MSDeformAttn: ExportMSDeformAttn,
    CrossAttentionLayer: ExportCrossAttentionLayer,
    OneDnnLinear: nn.Linear,
}
"""Eager module class -> the class ``use_export_forms`` gives its instances."""


def use_export_forms(module: nn.Module) -> int:
    """Give every module of ``module`` (itself included) its export form, in place.

    Only the class changes (instances of exactly the classes in ``EXPORT_FORMS``, not of
    their subclasses), so parameters, buffers and state-dict keys stay as they are. Apply it
    to a copy: the eager forms are the faster ones in PyTorch.

    Returns:
        The number of modules changed.
    """
    count = 0
    for child in module.modules():
        form = EXPORT_FORMS.get(type(child))
        if form is not None:
            child.__class__ = form
            count += 1
    return count
