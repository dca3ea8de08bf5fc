"""MedNeXt blocks (Roy et al., MICCAI 2023): ConvNeXt-style residual blocks for 2D and 3D.

A block is depthwise conv (kernel ``k`` per axis) -> GroupNorm (one group per channel) -> 1x1 conv
expanding the channels ``expansion`` times -> GELU -> 1x1 conv to the output channels, plus an
identity residual. A down block strides its depthwise conv and carries a strided 1x1 conv as its
residual; an up block does the same with transposed convolutions, then pads one row (``stride - 1``
in general) at the start of each upsampled axis so that ``n`` becomes ``n * stride`` exactly.

Attribute names (``conv1``, ``norm``, ``conv2``, ``conv3``, ``res_conv``) are MedNeXt's, so its
checkpoints map onto ours key by key (see :mod:`smp3d.decoders.mednext.weights`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .factories import as_tuple, conv, conv_transpose

__all__ = ["MedNeXtBlock", "MedNeXtDownBlock", "MedNeXtUpBlock", "mednext_stage"]


class MedNeXtBlock(nn.Module):
    """Depthwise conv -> GroupNorm -> 1x1 expand -> GELU -> 1x1 compress [+ x]: ``(B, C, *s) -> (B, C', *s)``.

    ``residual`` adds the input (it needs ``in_channels == out_channels``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expansion: int = 4,
        kernel_size: int = 3,
        spatial_dims: int = 3,
        residual: bool = True,
    ):
        super().__init__()
        if residual and in_channels != out_channels:
            raise ValueError(
                f"A residual MedNeXt block needs in_channels == out_channels, got {in_channels} -> {out_channels}."
            )
        self.residual = residual
        self.conv1 = self._depthwise(in_channels, kernel_size, spatial_dims)
        self.norm = nn.GroupNorm(num_groups=in_channels, num_channels=in_channels)
        self.conv2 = conv(spatial_dims)(in_channels, expansion * in_channels, 1)
        self.act = nn.GELU()
        self.conv3 = conv(spatial_dims)(expansion * in_channels, out_channels, 1)

    def _depthwise(self, channels: int, kernel_size: int, spatial_dims: int) -> nn.Module:
        return conv(spatial_dims)(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The block without its residual."""
        return self.conv3(self.act(self.conv2(self.norm(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.transform(x)
        return x + y if self.residual else y


class MedNeXtDownBlock(MedNeXtBlock):
    """A MedNeXt block whose depthwise conv has stride ``stride`` (per axis); ``residual`` adds a 1x1
    conv of the same stride. An axis of size ``n`` becomes ``ceil(n / stride)``."""

    transposed = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expansion: int = 4,
        kernel_size: int = 3,
        spatial_dims: int = 3,
        residual: bool = True,
        stride: int | Sequence[int] = 2,
    ):
        self.stride = as_tuple(stride, spatial_dims, "stride")
        super().__init__(in_channels, out_channels, expansion, kernel_size, spatial_dims, residual=False)
        self.residual = residual
        if residual:
            self.res_conv = self._conv_type(spatial_dims)(in_channels, out_channels, 1, stride=self.stride)

    def _conv_type(self, spatial_dims: int) -> type[nn.Module]:
        return conv_transpose(spatial_dims) if self.transposed else conv(spatial_dims)

    def _depthwise(self, channels: int, kernel_size: int, spatial_dims: int) -> nn.Module:
        return self._conv_type(spatial_dims)(
            channels, channels, kernel_size, stride=self.stride, padding=kernel_size // 2, groups=channels
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.transform(x)
        if hasattr(self, "res_conv"):  # built iff residual (TorchScript resolves hasattr at compile time)
            y = y + self.res_conv(x)
        return y


class MedNeXtUpBlock(MedNeXtDownBlock):
    """The transposed counterpart of :class:`MedNeXtDownBlock`: an axis of size ``n`` becomes ``n * stride``
    (the transposed convs give ``(n - 1) * stride + 1``; ``stride - 1`` zeros are padded at the start)."""

    transposed = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expansion: int = 4,
        kernel_size: int = 3,
        spatial_dims: int = 3,
        residual: bool = True,
        stride: int | Sequence[int] = 2,
    ):
        super().__init__(in_channels, out_channels, expansion, kernel_size, spatial_dims, residual, stride)
        # F.pad lists the last axis first: (before, after) per axis.
        self.padding = [p for s in reversed(self.stride) for p in (s - 1, 0)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Padding is linear, so one pad of the sum equals MedNeXt's pad of each term.
        y = self.transform(x)
        if hasattr(self, "res_conv"):  # MedNeXtDownBlock.forward, inline (TorchScript cannot call super().forward)
            y = y + self.res_conv(x)
        return F.pad(y, self.padding)


def mednext_stage(
    channels: int, blocks: int, expansion: int, kernel_size: int, spatial_dims: int, residual: bool = True
) -> nn.Sequential:
    """``blocks`` MedNeXt blocks of ``channels`` channels in a row."""
    return nn.Sequential(
        *(MedNeXtBlock(channels, channels, expansion, kernel_size, spatial_dims, residual) for _ in range(blocks))
    )
