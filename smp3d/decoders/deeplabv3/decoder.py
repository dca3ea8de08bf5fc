"""DeepLabV3 and DeepLabV3+ decoders (Chen et al., 2017 and 2018), for any encoder and any spatial_dims.

Both decode the deepest feature of a (usually dilated) encoder with Atrous Spatial Pyramid
Pooling: parallel branches that look at the same map with different dilation rates, plus a
global-context branch, fused by a 1x1 projection. DeepLabV3+ then upsamples that result to the
size of a finer encoder feature (reduction 4 with the default strides), concatenates a 48-channel
projection of it, and refines the pair with a separable convolution.

Module and attribute names follow segmentation_models_pytorch 0.6 so that 2D state dicts match.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers import SingleCellBatchNorm, adaptive_avg_pool, batch_norm, conv, interpolation_mode

__all__ = [
    "ASPP",
    "ASPPConv",
    "ASPPPooling",
    "ASPPSeparableConv",
    "DeepLabV3Decoder",
    "DeepLabV3PlusDecoder",
    "SeparableConv",
    "highres_level",
    "resolve_atrous_rates",
]

Rate = int | tuple[int, ...]

#: Channels of the projected high-resolution feature in DeepLabV3+ (the paper's choice).
HIGHRES_CHANNELS = 48
#: DeepLabV3+ fuses the ASPP output with the encoder feature at this reduction (as in the paper).
HIGHRES_REDUCTION = 4


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_atrous_rates(atrous_rates: Any, spatial_dims: int) -> tuple[tuple[int, ...], ...]:
    """Three dilation rates, each an int (all axes) or a per-axis tuple -> three per-axis tuples."""
    hint = (
        f"decoder_atrous_rates must be 3 dilation rates, each a positive int or a tuple of {spatial_dims} "
        f"positive ints (one per axis), e.g. (12, 24, 36)"
        + (" or ((12, 12, 2), (24, 24, 4), (36, 36, 6))" if spatial_dims == 3 else "")
        + f"; got {atrous_rates!r}."
    )
    if isinstance(atrous_rates, (str, bytes)) or not isinstance(atrous_rates, Iterable):
        raise ValueError(hint)
    rates = list(atrous_rates)
    if len(rates) != 3:
        raise ValueError(hint)
    resolved = []
    for rate in rates:
        per_axis = (rate,) * spatial_dims if _is_int(rate) else rate
        if (
            not isinstance(per_axis, Sequence)
            or len(per_axis) != spatial_dims
            or not all(_is_int(r) and r >= 1 for r in per_axis)
        ):
            raise ValueError(hint)
        resolved.append(tuple(per_axis))
    return tuple(resolved)


def highres_level(encoder_channels: Sequence[int], reductions: Sequence[Sequence[int]]) -> int:
    """The encoder feature DeepLabV3+ takes as its high-resolution input.

    The shallowest intermediate feature (neither the input nor the deepest) with channels whose
    reduction reaches 4 along its most reduced axis; with the default strides that is feature 2,
    smp's choice. If none reaches 4 (stride-1 stages, a very low output stride), the coarsest
    intermediate feature with channels. 0-channel placeholder features are never chosen.
    """
    candidates = [i for i in range(1, len(encoder_channels) - 1) if encoder_channels[i] > 0]
    if not candidates:
        raise ValueError(
            f"DeepLabV3Plus needs an intermediate encoder feature with channels between the input and the "
            f"deepest feature for its high-resolution branch; the encoder's out_channels are "
            f"{tuple(encoder_channels)}."
        )
    for level in candidates:
        if max(reductions[level]) >= HIGHRES_REDUCTION:
            return level
    return candidates[-1]


def _norm_relu(channels: int, spatial_dims: int) -> list[nn.Module]:
    return [batch_norm(spatial_dims)(channels), nn.ReLU(inplace=True)]


class SeparableConv(nn.Sequential):
    """Depthwise convolution (one filter per input channel) -> pointwise 1x1 convolution.

    Children ``0`` (depthwise, no bias) and ``1`` (pointwise), as smp's ``SeparableConv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        bias: bool = True,
        spatial_dims: int = 3,
    ):
        conv_nd = conv(spatial_dims)
        depthwise = conv_nd(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            bias=False,
        )
        pointwise = conv_nd(in_channels, out_channels, kernel_size=1, bias=bias)
        super().__init__(depthwise, pointwise)


class ASPPConv(nn.Sequential):
    """3x3 convolution dilated by ``rate`` (per axis; padding keeps the size) -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, rate: Rate, spatial_dims: int = 3):
        layer = conv(spatial_dims)(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False)
        super().__init__(layer, *_norm_relu(out_channels, spatial_dims))


class ASPPSeparableConv(nn.Sequential):
    """Like :class:`ASPPConv` with a :class:`SeparableConv` (fewer parameters and FLOPs)."""

    def __init__(self, in_channels: int, out_channels: int, rate: Rate, spatial_dims: int = 3):
        layer = SeparableConv(
            in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False, spatial_dims=spatial_dims
        )
        super().__init__(layer, *_norm_relu(out_channels, spatial_dims))


class ASPPPooling(nn.Sequential):
    """Image-level context: global average pool -> 1x1 conv -> BN -> ReLU, broadcast back to the input size.

    The BN is a :class:`~smp3d.layers.SingleCellBatchNorm`: with a batch of one in training (one
    value per channel, where torch and smp raise) it normalizes with its running statistics; any
    other batch is plain batch norm.

    Interpolating a single voxel to any size gives that value everywhere, so the broadcast is an
    ``expand`` (no copy), identical to smp's bilinear interpolation.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3):
        super().__init__(
            adaptive_avg_pool(spatial_dims)(1),
            conv(spatial_dims)(in_channels, out_channels, kernel_size=1, bias=False),
            SingleCellBatchNorm(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self:  # nn.Sequential's forward (TorchScript cannot call super().forward)
            y = layer(y)
        return y.expand([-1, -1] + list(x.shape[2:]))


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling: a 1x1 branch, three dilated 3x3 branches and a pooling branch,
    concatenated and projected to ``out_channels`` (1x1 conv -> BN -> ReLU -> dropout).

    Args:
        in_channels: channels of the input map.
        out_channels: channels of every branch and of the output.
        atrous_rates: three dilation rates, each an int or a per-axis tuple.
        separable: use depthwise-separable convolutions in the dilated branches.
        dropout: dropout probability after the projection.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        atrous_rates: Iterable[Rate],
        separable: bool = False,
        dropout: float = 0.5,
        spatial_dims: int = 3,
    ):
        super().__init__()
        rates = resolve_atrous_rates(atrous_rates, spatial_dims)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"decoder_aspp_dropout must be a probability in [0, 1], got {dropout!r}.")
        branch = ASPPSeparableConv if separable else ASPPConv
        conv_nd = conv(spatial_dims)
        self.convs = nn.ModuleList(
            [
                nn.Sequential(
                    conv_nd(in_channels, out_channels, kernel_size=1, bias=False),
                    *_norm_relu(out_channels, spatial_dims),
                ),
                *(branch(in_channels, out_channels, rate, spatial_dims) for rate in rates),
                ASPPPooling(in_channels, out_channels, spatial_dims),
            ]
        )
        self.project = nn.Sequential(
            conv_nd(len(self.convs) * out_channels, out_channels, kernel_size=1, bias=False),
            *_norm_relu(out_channels, spatial_dims),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


def _check_channels(value: Any, name: str = "decoder_channels") -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int (channels of the ASPP module), got {value!r}.")
    return value


class DeepLabV3Decoder(nn.Module):
    """ASPP on the deepest feature -> 3x3 conv -> BN -> ReLU. Output at the encoder's output stride.

    Args:
        in_channels: channels of the deepest encoder feature.
        out_channels: channels of the ASPP branches and of the output.
        atrous_rates: three dilation rates, each an int or a per-axis tuple.
        aspp_separable: depthwise-separable dilated branches.
        aspp_dropout: dropout after the ASPP projection.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        atrous_rates: Iterable[Rate] = (12, 24, 36),
        aspp_separable: bool = False,
        aspp_dropout: float = 0.5,
        spatial_dims: int = 3,
    ):
        super().__init__()
        _check_channels(out_channels)
        self.aspp = ASPP(in_channels, out_channels, atrous_rates, aspp_separable, aspp_dropout, spatial_dims)
        self.conv = conv(spatial_dims)(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn = batch_norm(spatial_dims)(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.relu(self.bn(self.conv(self.aspp(features[-1]))))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the deepest feature, upsampled to a finer feature's size and fused with it.

    The finer feature is chosen by :func:`highres_level` from the encoder's metadata (feature 2,
    at reduction 4, with the default strides); the ASPP output is interpolated (multilinear,
    corner-aligned, as smp) to that feature's actual size, so per-axis ratios of any value work.
    The output has the finer feature's size and reduction.

    Args:
        encoder_channels: the encoder's ``out_channels`` (item 0 is the input).
        reductions: the encoder's ``reductions`` (after any dilation).
        out_channels: channels of the ASPP branches and of the output.
        atrous_rates: three dilation rates, each an int or a per-axis tuple.
        aspp_separable: depthwise-separable dilated ASPP branches.
        aspp_dropout: dropout after the ASPP projection.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[Sequence[int]],
        out_channels: int = 256,
        atrous_rates: Iterable[Rate] = (12, 24, 36),
        aspp_separable: bool = True,
        aspp_dropout: float = 0.5,
        spatial_dims: int = 3,
    ):
        super().__init__()
        _check_channels(out_channels)
        self.highres_level = highres_level(encoder_channels, reductions)
        self.interpolation_mode = interpolation_mode("bilinear", spatial_dims)
        self.aspp = nn.Sequential(
            ASPP(encoder_channels[-1], out_channels, atrous_rates, aspp_separable, aspp_dropout, spatial_dims),
            SeparableConv(out_channels, out_channels, 3, padding=1, bias=False, spatial_dims=spatial_dims),
            *_norm_relu(out_channels, spatial_dims),
        )
        self.block1 = nn.Sequential(
            conv(spatial_dims)(encoder_channels[self.highres_level], HIGHRES_CHANNELS, kernel_size=1, bias=False),
            *_norm_relu(HIGHRES_CHANNELS, spatial_dims),
        )
        self.block2 = nn.Sequential(
            SeparableConv(
                HIGHRES_CHANNELS + out_channels, out_channels, 3, padding=1, bias=False, spatial_dims=spatial_dims
            ),
            *_norm_relu(out_channels, spatial_dims),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        highres = features[self.highres_level]
        x = self.aspp(features[-1])
        if x.shape[2:] != highres.shape[2:]:
            x = F.interpolate(x, size=highres.shape[2:], mode=self.interpolation_mode, align_corners=True)
        return self.block2(torch.cat([x, self.block1(highres)], dim=1))
