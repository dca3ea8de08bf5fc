"""The PSPNet decoder (Zhao et al., 2017): a pyramid pooling module on the deepest feature, N-D.

The deepest feature is average-pooled to grids of ``b`` cells per axis for each bin ``b`` in
(1, 2, 3, 6), projected by 1x1 conv-norm-ReLU to a quarter of its channels, resized back
(multilinear, aligned corners), concatenated with the feature itself and fused by a 1x1 conv.

Axes shorter than a bin (common along the slice axis of anisotropic volumes) are not an error:
torch's adaptive average pooling to more cells than voxels repeats voxels (cell ``i`` of ``b``
averages voxels ``floor(i n / b)`` to ``ceil((i + 1) n / b) - 1``), and resizing back with
aligned corners samples cells that cover each voxel. Along such an axis the branch therefore sees
the feature itself, voxel by voxel (exactly so for 1 to 3 voxels, nearly so for more), instead of
a pooled context. This is also what smp does in 2D, so results stay equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers import ConvNormAct, adaptive_avg_pool, interpolation_mode
from ...layers import dropout as dropout_layer
from ...layers.blocks import NormSpec

__all__ = ["PSPBlock", "PSPDecoder", "PSPModule"]

BINS = (1, 2, 3, 6)


class PSPBlock(nn.Module):
    """Adaptive average pool to ``pool_size`` cells per axis -> 1x1 conv-norm-ReLU -> resize back.

    A 1-cell pool has no normalization (one value per channel and sample cannot be batch-normalized).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        pool_size: int,
        use_norm: NormSpec = "batchnorm",
        spatial_dims: int = 3,
    ):
        super().__init__()
        self.pool_size = pool_size
        self.mode = interpolation_mode("linear", spatial_dims)
        self.pool = nn.Sequential(
            adaptive_avg_pool(spatial_dims)(pool_size),
            ConvNormAct(
                in_channels,
                out_channels,
                kernel_size=1,
                padding=0,
                use_norm="identity" if pool_size == 1 else use_norm,
                spatial_dims=spatial_dims,
            ),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.pool(x), size=x.shape[2:], mode=self.mode, align_corners=True)


class PSPModule(nn.Module):
    """One :class:`PSPBlock` per bin, each to ``in_channels // len(sizes)`` channels; concat with the input."""

    def __init__(
        self,
        in_channels: int,
        sizes: Sequence[int] = BINS,
        use_norm: NormSpec = "batchnorm",
        spatial_dims: int = 3,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            PSPBlock(in_channels, in_channels // len(sizes), size, use_norm, spatial_dims) for size in sizes
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([block(x) for block in self.blocks] + [x], dim=1)


class PSPDecoder(nn.Module):
    """Pyramid pooling on the deepest feature -> 1x1 conv-norm-ReLU to ``out_channels`` -> dropout.

    Args:
        encoder_channels: the encoder's ``out_channels``; only the last is used.
        use_norm: normalization of the convolutions (smp's ``use_norm`` convention).
        out_channels: channels of the output.
        dropout: spatial (channel-wise) dropout rate.

    The output has the size of the deepest feature.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        use_norm: NormSpec = "batchnorm",
        out_channels: int = 512,
        dropout: float = 0.2,
        spatial_dims: int = 3,
    ):
        super().__init__()
        deepest = encoder_channels[-1]
        if deepest < len(BINS):
            raise ValueError(
                f"PSPNet splits the deepest feature's channels among its {len(BINS)} pooling branches, so it "
                f"needs at least {len(BINS)} channels; the encoder's deepest feature has {deepest}."
            )
        self.psp = PSPModule(deepest, BINS, use_norm, spatial_dims)
        self.conv = ConvNormAct(
            deepest * 2, out_channels, kernel_size=1, padding=0, use_norm=use_norm, spatial_dims=spatial_dims
        )
        self.dropout = dropout_layer(spatial_dims)(p=dropout)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.dropout(self.conv(self.psp(features[-1])))
