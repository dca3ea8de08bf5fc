"""The LinkNet decoder (Chaurasia and Culurciello, 2017), for any encoder and any spatial_dims.

Each block shrinks the channels by 4 with a 1x1 conv, upsamples with a transposed convolution
by the per-axis ratio of the encoder's reductions between two levels, expands with a 1x1 conv
and adds the skip connection (sum, not concatenation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ...layers import ConvNormAct, conv_transpose, create_norm
from ...layers.blocks import NormSpec

__all__ = ["LinknetDecoder", "LinknetDecoderBlock", "TransposedUpsample", "transposed_geometry"]


def transposed_geometry(scale: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Kernel and padding of a transposed conv with stride ``scale`` that maps ``n`` to ``n * scale``.

    Per axis, for a ratio ``r``: kernel ``r + 2 * (r // 2)`` and padding ``r // 2``, i.e. kernel
    ``2r`` for even ``r`` (4, stride 2, padding 1 for ``r = 2``: smp's layer) and ``2r - 1`` for
    odd ``r``; ``r = 1`` gives kernel 1, no upsampling along that axis.
    """
    kernel = tuple(r + 2 * (r // 2) for r in scale)
    padding = tuple(r // 2 for r in scale)
    return kernel, padding


class TransposedUpsample(nn.Sequential):
    """Transposed conv by ``scale`` (per axis) -> norm -> ReLU (children 0, 1, 2, as smp's ``TransposeX2``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: Sequence[int],
        use_norm: NormSpec = "batchnorm",
        spatial_dims: int = 3,
    ):
        kernel, padding = transposed_geometry(scale)
        layer = conv_transpose(spatial_dims)(
            in_channels, out_channels, kernel_size=kernel, stride=tuple(scale), padding=padding
        )
        super().__init__(layer, create_norm(use_norm, out_channels, spatial_dims), nn.ReLU(inplace=True))


class LinknetDecoderBlock(nn.Module):
    """1x1 conv to ``in/4`` -> transposed upsampling by ``scale`` -> 1x1 conv to ``out`` [-> + skip]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: Sequence[int],
        use_norm: NormSpec = "batchnorm",
        spatial_dims: int = 3,
    ):
        super().__init__()
        mid = in_channels // 4
        if mid < 1:
            raise ValueError(
                f"A Linknet decoder block reduces its input channels by 4 and needs at least 4, got {in_channels}."
            )
        self.block = nn.Sequential(
            ConvNormAct(in_channels, mid, 1, padding=0, use_norm=use_norm, spatial_dims=spatial_dims),
            TransposedUpsample(mid, mid, scale, use_norm, spatial_dims),
            ConvNormAct(mid, out_channels, 1, padding=0, use_norm=use_norm, spatial_dims=spatial_dims),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.block(x)
        return x if skip is None else x + skip


class LinknetDecoder(nn.Module):
    """One block per encoder stage, from the deepest feature to the input resolution.

    Args:
        encoder_channels: the encoder's ``out_channels`` (item 0 is the input).
        reductions: the encoder's ``reductions``, one per-axis tuple per feature.
        prefinal_channels: output channels of the last block (smp: 32).
        use_norm: normalization of the convolutions (see :func:`smp3d.layers.create_norm`).
        spatial_dims: 2 or 3.

    A 0-channel placeholder feature is not added; the block that outputs at its level keeps the
    channels of the level below instead (as smp does).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[Sequence[int]],
        prefinal_channels: int = 32,
        use_norm: NormSpec = "batchnorm",
        spatial_dims: int = 3,
    ):
        super().__init__()
        depth = len(encoder_channels) - 1
        # Deepest first; the last block outputs prefinal_channels at the input resolution.
        channels = [*list(encoder_channels[1:])[::-1], prefinal_channels]
        for i in range(1, depth):
            if channels[i] == 0:
                channels[i] = channels[i - 1]
        self.blocks = nn.ModuleList()
        self.fused: list[bool] = []  # whether block i adds a skip connection
        for i in range(depth):
            level = depth - i - 1  # the level block i outputs
            scale = tuple(hi // lo for hi, lo in zip(reductions[level + 1], reductions[level], strict=True))
            self.blocks.append(LinknetDecoderBlock(channels[i], channels[i + 1], scale, use_norm, spatial_dims))
            self.fused.append(level > 0 and encoder_channels[level] > 0)
        # Levels for deep supervision: block outputs, finest first (level k at encoder feature k's size).
        self.level_channels = tuple(channels[:0:-1])
        self.level_reductions = tuple(tuple(r) for r in reductions[:depth])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        depth = len(features) - 1
        x = features[-1]
        for i, block in enumerate(self.blocks):  # (TorchScript iterates a ModuleList, not a zip with it)
            x = block(x, features[depth - i - 1] if self.fused[i] else None)
        return x

    def forward_levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every block's output, finest first (item 0 is ``forward``'s output); no extra compute."""
        depth = len(features) - 1
        x = features[-1]
        levels: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x = block(x, features[depth - i - 1] if self.fused[i] else None)
            levels.append(x)
        levels.reverse()
        return levels
