"""A plain VGG-style encoder for 2D and 3D, written against smp3d's encoder protocol.

Stage ``i`` (1-based) is ``conv3x3(stride_i) -> BN -> ReLU -> conv3x3 -> BN -> ReLU``: the first
convolution carries the stage's per-axis stride (1 or 2) and maps a size ``n`` to ``ceil(n / s)``,
so feature ``i`` of an input ``(B, C, *spatial)`` has shape
``(B, widths[i - 1], *ceil(spatial / reductions[i]))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from smp3d.encoders import Encoder, check_depth, resolve_strides
from smp3d.layers import batch_norm, check_spatial_dims, conv

__all__ = ["ExampleVGGEncoder"]


def _conv_bn_relu(in_channels: int, out_channels: int, stride: tuple[int, ...], spatial_dims: int) -> list[nn.Module]:
    """A 3x3 (3x3x3 in 3D) convolution, batch norm and ReLU; the conv has no bias (BN has one)."""
    return [
        conv(spatial_dims)(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        batch_norm(spatial_dims)(out_channels),
        nn.ReLU(inplace=True),
    ]


class ExampleVGGEncoder(Encoder):
    """VGG-style feature pyramid: ``depth + 1`` features, item 0 the input itself.

    Args:
        widths: output channels of the five stages; only the first ``depth`` are built.
        in_channels: channels of the input ``(B, in_channels, *spatial)``.
        depth: number of stages, 1..5.
        spatial_dims: 2 for images ``(B, C, H, W)``, 3 for volumes ``(B, C, H, W, D)``.
        strides: ``None`` (2 on every axis of every stage) or ``depth`` items, each an int or a
            tuple with one int per axis; this encoder supports 1 or 2 per axis.

    ``out_channels`` is ``(in_channels, *widths[:depth])``; ``reductions`` are derived from the
    strides by :class:`smp3d.encoders.Encoder`.
    """

    def __init__(
        self,
        widths: Sequence[int],
        in_channels: int = 3,
        depth: int = 5,
        spatial_dims: int = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
    ):
        spatial_dims = check_spatial_dims(spatial_dims)
        depth = check_depth(depth, max_depth=len(widths), name=type(self).__name__)
        # max_stride=2: a 3x3 kernel with stride 3 or more would skip input voxels, so refuse it clearly.
        stage_strides = resolve_strides(strides, depth, spatial_dims, max_stride=2)
        super().__init__((in_channels, *widths[:depth]), stage_strides, spatial_dims)
        channels = self.out_channels
        ones = (1,) * spatial_dims
        # Only the stages that `depth` uses exist, so a shallow encoder has no unused parameters.
        self.stages = nn.ModuleList(
            nn.Sequential(
                *_conv_bn_relu(channels[i], channels[i + 1], stage_strides[i], spatial_dims),
                *_conv_bn_relu(channels[i + 1], channels[i + 1], ones, spatial_dims),
            )
            for i in range(depth)
        )

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """Stage ``stage`` (1-based) for the dilation hook: implementing this one method lets
        DeepLabV3/V3+ and PAN trade this encoder's deepest strides for dilation."""
        return [self.stages[stage - 1]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x`` of shape ``(B, C, *spatial)`` -> ``[x, feature_1, ..., feature_depth]``."""
        features = [x]
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
