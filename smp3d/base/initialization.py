"""Weight initialization of decoders and heads, for every spatial_dims."""

from __future__ import annotations

import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

__all__ = ["initialize_decoder", "initialize_head"]


def initialize_decoder(module: nn.Module) -> None:
    """Kaiming-uniform convolutions (ReLU gain), unit/zero norms, Xavier linears; zero biases."""
    for m in module.modules():
        if isinstance(m, _ConvNd):
            nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (_NormBase, nn.LayerNorm, nn.GroupNorm)):
            if getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def initialize_head(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for the convolutions and linears of a head."""
    for m in module.modules():
        if isinstance(m, (_ConvNd, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
