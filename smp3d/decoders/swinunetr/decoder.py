"""The Swin UNETR decoder (Hatamizadeh et al., 2022), for any encoder and any spatial_dims.

Level ``k`` of a depth-``d`` encoder has ``D_k`` channels: ``feature_size`` at levels 0 and 1, then doubling
(``fs, fs, 2fs, 4fs, 8fs`` for depth 5, MONAI's). Each level's skip goes through a residual conv block
(``skips``: MONAI's ``encoder1`` on the input, ``encoder2..4`` on features 1..3) except the deepest skip
(feature ``d - 1``), used as it is when it already has ``D_{d-1}`` channels (MONAI's), projected otherwise.
The deepest feature goes through a residual conv block (``bottleneck``, MONAI's ``encoder10``); then one
:class:`~smp3d.layers.unetr_blocks.UpBlock` per level, deepest first (``blocks``, MONAI's ``decoder5`` ..
``decoder1``), upsamples by the per-axis ratio of the encoder's reductions and merges the skip.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ...layers.blocks import NormSpec
from ...layers.unetr_blocks import ResidualConvBlock, UpBlock

__all__ = ["SwinUNETRDecoder", "level_channels"]


def level_channels(feature_size: int, depth: int) -> tuple[int, ...]:
    """``D_0 .. D_{depth-1}``: ``feature_size`` at levels 0 and 1, doubling after."""
    return tuple(feature_size * 2 ** max(0, k - 1) for k in range(depth))


class SwinUNETRDecoder(nn.Module):
    """Args:
    encoder_channels: the encoder's ``out_channels`` (item 0 is the input).
    reductions: the encoder's ``reductions``.
    feature_size: channels of the two finest levels (MONAI's ``feature_size``).
    use_norm: normalization of the conv blocks (MONAI's ``norm_name``; ``"instancenorm"`` = its ``"instance"``).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[Sequence[int]],
        feature_size: int,
        use_norm: NormSpec = "instancenorm",
        spatial_dims: int = 3,
    ):
        super().__init__()
        depth = len(encoder_channels) - 1
        channels = level_channels(feature_size, depth)
        self.skips = nn.ModuleList()
        for k in range(depth):
            source = encoder_channels[k]
            if 0 < k == depth - 1 and source == channels[k]:
                self.skips.append(nn.Identity())  # MONAI's deepest skip (hidden_states_out[3]) enters as it is
            else:
                self.skips.append(ResidualConvBlock(source, channels[k], 3, 1, use_norm, spatial_dims))
        self.bottleneck = ResidualConvBlock(encoder_channels[-1], encoder_channels[-1], 3, 1, use_norm, spatial_dims)
        self.blocks = nn.ModuleList()
        for k in reversed(range(depth)):
            cin = encoder_channels[-1] if k == depth - 1 else channels[k + 1]
            scale = tuple(hi // lo for hi, lo in zip(reductions[k + 1], reductions[k], strict=True))
            self.blocks.append(UpBlock(cin, channels[k], scale, True, use_norm, spatial_dims))
        self.out_channels = channels[0]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        depth = len(self.skips)
        x = self.bottleneck(features[depth])
        for i, block in enumerate(self.blocks):
            level = depth - 1 - i
            x = block(x, self.skips[level](features[level]))
        return x
