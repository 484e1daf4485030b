"""Prediction heads on the decoder's query features: MLP, class, mask and re-id embedding heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "build_reid_head", "c2_xavier_linear"]


def c2_xavier_linear(linear: nn.Linear) -> nn.Linear:
    """Apply detectron2 ``c2_xavier_fill`` (Kaiming uniform a=1, bias 0) and return the layer."""
    nn.init.kaiming_uniform_(linear.weight, a=1)
    if linear.bias is not None:
        nn.init.constant_(linear.bias, 0)
    return linear


class MLP(nn.Module):
    """Plain MLP with ReLU between layers and none after the last (``layers.{i}`` names).

    Args:
        input_dim: input features.
        hidden_dim: width of the hidden layers.
        output_dim: output features.
        num_layers: number of Linear layers (>= 1).
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims_in, dims_out, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ...xinput_dim. Returns: ...xoutput_dim."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


def build_reid_head(hidden_dim: int, reid_hidden_dim: int, num_layers: int) -> nn.Module:
    """CTVIS re-id embedding head: ``MLP(hidden, reid_hidden, hidden, num_layers)``.

    Applied to the ``decoder_norm`` output; the embeddings are not normalised. ``num_layers`` 0
    gives the identity. Linears use ``c2_xavier_fill``.

    Args:
        hidden_dim: query feature width (also the embedding width).
        reid_hidden_dim: width of the hidden layers.
        num_layers: number of Linear layers.

    Returns:
        Module mapping ...xhidden_dim -> ...xhidden_dim.
    """
    if num_layers == 0:
        return nn.Identity()
    head = MLP(hidden_dim, reid_hidden_dim, hidden_dim, num_layers)
    for layer in head.layers:
        if isinstance(layer, nn.Linear):
            c2_xavier_linear(layer)
    return head
