"""The MA-Net decoder (Fan et al., 2020), for any encoder and any spatial_dims.

A position-wise attention block (PAB) relates every position of the deepest feature to every
other; then each decoder level fuses the upsampled deeper map with its skip connection through
multi-scale fusion attention (MFAB): two squeeze-and-excitation branches, one per input, whose
summed channel weights rescale the deeper map before concatenation. Levels without a skip use a
plain U-Net block. Upsampling goes to the skip's actual size, so per-axis reductions work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ...layers import ConvNormAct, adaptive_avg_pool, conv, interpolation_mode
from ...layers.blocks import NormSpec
from ...layers.upsample import interpolate
from ..unet import UnetDecoderBlock

__all__ = ["MAnetDecoder", "MultiScaleFusionAttention", "PositionAttention", "squeeze_excitation"]


class PositionAttention(nn.Module):
    """Position-wise attention over all ``N = prod(spatial)`` positions of ``(B, C, *spatial)``.

    Scores are ``query^T key`` (``N x N``) from two 1x1 convs, normalized with one softmax over
    all ``N * N`` entries of a sample (as smp does), applied to a 3x3 conv of the input; the
    result is added to the input and passed through a 3x3 conv. Memory grows as ``N**2``, so it
    belongs on the deepest feature.
    """

    def __init__(self, in_channels: int, pab_channels: int = 64, spatial_dims: int = 3):
        super().__init__()
        conv_nd = conv(spatial_dims)
        self.top_conv = conv_nd(in_channels, pab_channels, kernel_size=1)  # keys
        self.center_conv = conv_nd(in_channels, pab_channels, kernel_size=1)  # queries
        self.bottom_conv = conv_nd(in_channels, in_channels, kernel_size=3, padding=1)  # values
        self.out_conv = conv_nd(in_channels, in_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = self.top_conv(x).flatten(2)  # (B, P, N)
        queries = self.center_conv(x).flatten(2).transpose(1, 2)  # (B, N, P)
        values = self.bottom_conv(x).flatten(2).transpose(1, 2)  # (B, N, C)
        scores = torch.bmm(queries, keys)  # (B, N, N)
        weights = scores.flatten(1).softmax(dim=1).view_as(scores)
        attended = torch.bmm(weights, values)  # (B, N, C)
        # smp reads the (B, N, C) product directly as (B, C, *spatial), without a transpose; kept
        # for checkpoint parity (the 3x3 out_conv learns whatever mixing this implies).
        return self.out_conv(x + attended.reshape(x.shape))


def squeeze_excitation(channels: int, hidden: int, spatial_dims: int) -> nn.Sequential:
    """Global average pool -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid: per-channel weights ``(B, C, 1, ...)``."""
    conv_nd = conv(spatial_dims)
    return nn.Sequential(
        adaptive_avg_pool(spatial_dims)(1),
        conv_nd(channels, hidden, 1),
        nn.ReLU(inplace=True),
        conv_nd(hidden, channels, 1),
        nn.Sigmoid(),
    )


class MultiScaleFusionAttention(nn.Module):
    """MFAB: deeper map -> 3x3 and 1x1 conv-norm-ReLU to the skip's channels -> upsample to the
    skip's size -> scale by ``SE_hl(x) + SE_ll(skip)`` -> concat skip -> 2 x conv-norm-ReLU."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        use_norm: NormSpec = "batchnorm",
        interpolation: str = "nearest",
        reduction: int = 16,
        spatial_dims: int = 3,
    ):
        super().__init__()
        self.interpolation_mode = interpolation_mode(interpolation, spatial_dims)
        self.hl_conv = nn.Sequential(
            ConvNormAct(in_channels, in_channels, 3, padding=1, use_norm=use_norm, spatial_dims=spatial_dims),
            ConvNormAct(in_channels, skip_channels, 1, padding=0, use_norm=use_norm, spatial_dims=spatial_dims),
        )
        hidden = max(1, skip_channels // reduction)
        self.SE_ll = squeeze_excitation(skip_channels, hidden, spatial_dims)
        self.SE_hl = squeeze_excitation(skip_channels, hidden, spatial_dims)
        self.conv1 = ConvNormAct(
            2 * skip_channels, out_channels, 3, padding=1, use_norm=use_norm, spatial_dims=spatial_dims
        )
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, padding=1, use_norm=use_norm, spatial_dims=spatial_dims)

    def forward(self, x: torch.Tensor, size: list[int], skip: torch.Tensor | None) -> torch.Tensor:
        if skip is None:  # (Optional for TorchScript: the decoder calls every block alike)
            raise ValueError("MultiScaleFusionAttention needs a skip connection, got None.")
        x = self.hl_conv(x)
        if list(x.shape[2:]) != list(size):
            x = interpolate(x, size, self.interpolation_mode)
        attention = self.SE_hl(x) + self.SE_ll(skip)
        return self.conv2(self.conv1(torch.cat([x * attention, skip], dim=1)))


class MAnetDecoder(nn.Module):
    """PAB on the deepest feature, then one block per encoder stage up to the input resolution.

    Args:
        encoder_channels: the encoder's ``out_channels`` (item 0 is the input).
        reductions: the encoder's ``reductions``, one per-axis tuple per feature.
        decoder_channels: output channels of each block, deepest first; one per encoder stage.
        reduction: channel reduction of the squeeze-and-excitation branches of MFAB.
        use_norm: normalization of the convolutions (see :func:`smp3d.layers.create_norm`).
        pab_channels: channels of the PAB's queries and keys.
        interpolation: upsampling mode (see :func:`smp3d.layers.interpolation_mode`).
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[Sequence[int]],
        decoder_channels: Sequence[int],
        reduction: int = 16,
        use_norm: NormSpec = "batchnorm",
        pab_channels: int = 64,
        interpolation: str = "nearest",
        spatial_dims: int = 3,
    ):
        super().__init__()
        depth = len(encoder_channels) - 1
        if len(decoder_channels) != depth:
            suggestion = tuple((256, 128, 64, 32, 16)[-depth:]) if depth <= 5 else None
            raise ValueError(
                f"decoder_channels has {len(decoder_channels)} items but the encoder has {depth} stages "
                f"(encoder_depth={depth}); give one channel count per decoder block"
                + (f", e.g. decoder_channels={suggestion}." if suggestion else ".")
            )
        if interpolation == "transposed":
            raise ValueError(
                "MAnet does not support decoder_interpolation='transposed' (smp's does not either); use 'nearest', "
                "'nearest-exact', 'area', 'linear' ('bilinear'/'trilinear') or 'bicubic' (2D)."
            )
        interpolation_mode(interpolation, spatial_dims)  # fail now, not at the first forward
        if isinstance(pab_channels, bool) or not isinstance(pab_channels, int) or pab_channels < 1:
            raise ValueError(f"decoder_pab_channels must be a positive int, got {pab_channels!r}.")

        self.center = PositionAttention(encoder_channels[-1], pab_channels, spatial_dims)
        inputs = [encoder_channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList()
        self.fused: list[bool] = []  # whether block i fuses a skip connection (MFAB)
        for i, (cin, cout) in enumerate(zip(inputs, decoder_channels, strict=True)):
            level = depth - i - 1  # the level block i outputs
            cskip = encoder_channels[level] if level > 0 else 0
            scale = tuple(hi // lo for hi, lo in zip(reductions[level + 1], reductions[level], strict=True))
            if cskip > 0:
                block: nn.Module = MultiScaleFusionAttention(
                    cin, cskip, cout, use_norm, interpolation, reduction, spatial_dims
                )
            else:  # no skip (input level or a 0-channel placeholder feature): a plain U-Net block
                block = UnetDecoderBlock(cin, 0, cout, scale, use_norm, None, interpolation, spatial_dims)
            self.blocks.append(block)
            self.fused.append(cskip > 0)
        # Levels for deep supervision: block outputs, finest first (level k at encoder feature k's size).
        self.level_channels = tuple(decoder_channels[::-1])
        self.level_reductions = tuple(tuple(r) for r in reductions[:depth])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        depth = len(features) - 1
        x = self.center(features[-1])
        for i, block in enumerate(self.blocks):  # (TorchScript iterates a ModuleList, not a zip with it)
            target = features[depth - i - 1]
            x = block(x, target.shape[2:], target if self.fused[i] else None)
        return x

    def forward_levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every block's output, finest first (item 0 is ``forward``'s output); no extra compute."""
        depth = len(features) - 1
        x = self.center(features[-1])
        levels: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            target = features[depth - i - 1]
            x = block(x, target.shape[2:], target if self.fused[i] else None)
            levels.append(x)
        levels.reverse()
        return levels
