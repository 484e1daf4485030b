"""The masked cross-attention layer against ``nn.MultiheadAttention`` with a per-head mask."""

from __future__ import annotations

import copy

import pytest
import torch

from model.nn.transformer_decoder import CrossAttentionLayer, mask_product
from model.runtime.export_forms import use_export_forms


@pytest.mark.parametrize("exporting", [False, True])
def test_cross_attention_matches_multihead_attention_with_repeated_mask(exporting):
    """Eager (fused kernel) and export (spelled-out, additive mask) forms alike."""
    torch.manual_seed(0)
    batch, queries, pixels, channels, heads = 2, 5, 12, 16, 4
    layer = CrossAttentionLayer(channels, heads).double()
    with torch.no_grad():
        layer.multihead_attn.in_proj_bias.normal_()
        layer.multihead_attn.out_proj.bias.normal_()
    tgt = torch.randn(queries, batch, channels, dtype=torch.float64)
    query_pos = torch.randn_like(tgt)
    memory = torch.randn(pixels, batch, channels, dtype=torch.float64)
    pos = torch.randn_like(memory)
    blocked = torch.rand(batch, queries, pixels) < 0.6
    blocked[0, 0] = False  # an unblocked row
    blocked[1, 1, :-1] = True  # a row with one open pixel
    blocked[1, 1, -1] = False

    form = copy.deepcopy(layer) if exporting else layer
    if exporting:
        assert use_export_forms(form) == 1
    out = form(tgt, memory, blocked, pos, query_pos)

    reference = layer.multihead_attn(
        query=tgt + query_pos,
        key=memory + pos,
        value=memory,
        attn_mask=blocked.repeat_interleave(heads, 0),  # (B*heads)xQxHW, batch-major
        need_weights=False,
    )[0]
    torch.testing.assert_close(out, layer.norm(tgt + reference), atol=1e-12, rtol=1e-12)


def test_mask_product_is_the_einsum():
    embed = torch.randn(2, 3, 8, dtype=torch.float64)
    features = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(
        mask_product(embed, features), torch.einsum("bqc,bchw->bqhw", embed, features)
    )
