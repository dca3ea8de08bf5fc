"""The U-Net decoder (Ronneberger et al., 2015), for any encoder and any spatial_dims.

It reads only the encoder's ``out_channels`` and ``reductions``: block ``i`` brings the deeper
map to the size of the next skip connection (interpolation to that size, or a transposed
convolution by the per-axis ratio of reductions), concatenates the skip, then applies two
conv-norm-ReLU layers.

With nearest upsampling by 2 (or 1) per axis and no attention before the first conv, the block
computes upsample -> concat -> conv in one step on the small map (:func:`~smp3d.layers.upsample_conv`):
the same function, without writing the upsampled map or the concatenation, and with 8/27 of
the multiply-adds of its upsampled part in 3D. ``block.fuse_upsample = False`` (or
:func:`~smp3d.layers.set_fused_upsample` on a whole model) turns it off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers import Attention, ConvNormAct, conv_transpose, interpolation_mode
from ...layers.blocks import NormSpec
from ...layers.capture import capturing_graph
from ...layers.upsample import FUSED_MIN_VOXELS, can_fuse_upsample, interpolate, upsample_conv

__all__ = ["UnetCenterBlock", "UnetDecoder", "UnetDecoderBlock"]

TRANSPOSED = "transposed"


class UnetDecoderBlock(nn.Module):
    """Upsample to the skip's size -> concat skip -> [attention] -> 2 x conv-norm-ReLU -> [attention]."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        scale: tuple[int, ...],
        use_norm: NormSpec = "batchnorm",
        attention_type: str | None = None,
        interpolation: str = "nearest",
        spatial_dims: int = 3,
    ):
        super().__init__()
        self.transposed = interpolation == TRANSPOSED
        if self.transposed:
            # Learned upsampling by exactly the per-axis ratio between the two levels.
            self.upsample: nn.Module = (
                conv_transpose(spatial_dims)(in_channels, in_channels, kernel_size=scale, stride=scale)
                if any(s > 1 for s in scale)
                else nn.Identity()
            )
            self.interpolation_mode = TRANSPOSED
        else:
            self.interpolation_mode = interpolation_mode(interpolation, spatial_dims)
        cat_channels = in_channels + skip_channels
        self.conv1 = ConvNormAct(cat_channels, out_channels, 3, padding=1, use_norm=use_norm, spatial_dims=spatial_dims)
        self.attention1 = Attention(attention_type, cat_channels, spatial_dims=spatial_dims)
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, padding=1, use_norm=use_norm, spatial_dims=spatial_dims)
        self.attention2 = Attention(attention_type, out_channels, spatial_dims=spatial_dims)
        self.scale = tuple(scale)
        #: Whether nearest upsample -> concat -> conv1 can run as one :func:`upsample_conv` ...
        self.fusable_upsample = (
            not self.transposed
            and self.interpolation_mode in ("nearest", "nearest-exact")  # identical for a factor of 2
            and isinstance(self.attention1.attention, nn.Identity)
            and can_fuse_upsample(self.conv1[0], self.scale)
        )
        #: ... and whether it does (on maps of at least ``FUSED_MIN_VOXELS`` voxels).
        self.fuse_upsample = self.fusable_upsample

    def forward(self, x: torch.Tensor, size: list[int], skip: torch.Tensor | None = None) -> torch.Tensor:
        # the fused path is eager-only (and compiled); scripts run the plain one. A lone is_scripting() test
        # is what TorchScript resolves at compile time, so the Python-only branch is never compiled.
        if not torch.jit.is_scripting():  # noqa: SIM102
            if (
                self.fuse_upsample
                and not capturing_graph(compiling=False)
                and all(n * s == m for n, s, m in zip(x.shape[2:], self.scale, size, strict=True))
                and math.prod(x.shape[2:]) >= FUSED_MIN_VOXELS
            ):
                conv, norm, activation = self.conv1
                x = activation(norm(upsample_conv(x, conv.weight, conv.bias, self.scale, skip)))
                return self.attention2(self.conv2(x))
        if hasattr(self, "upsample"):  # transposed convolution (TorchScript resolves hasattr statically)
            x = self.upsample(x)
        elif list(x.shape[2:]) != list(size):
            if torch.jit.is_scripting():
                x = F.interpolate(x, size=size, mode=self.interpolation_mode)
            else:
                x = interpolate(x, size, self.interpolation_mode)
        if skip is not None:
            x = self.attention1(torch.cat([x, skip], dim=1))
        return self.attention2(self.conv2(self.conv1(x)))


class UnetCenterBlock(nn.Sequential):
    """Two conv-norm-ReLU layers on the deepest feature, for encoders whose deepest feature is a
    bare pooling output (``encoder.last_feature_pooled``)."""

    def __init__(self, channels: int, use_norm: NormSpec = "batchnorm", spatial_dims: int = 3):
        super().__init__(
            ConvNormAct(channels, channels, 3, padding=1, use_norm=use_norm, spatial_dims=spatial_dims),
            ConvNormAct(channels, channels, 3, padding=1, use_norm=use_norm, spatial_dims=spatial_dims),
        )


class UnetDecoder(nn.Module):
    """Decoder blocks from the deepest feature up to the input resolution.

    Args:
        encoder_channels: the encoder's ``out_channels`` (item 0 is the input).
        reductions: the encoder's ``reductions``, one per-axis tuple per feature.
        decoder_channels: output channels of each block, deepest first; one per encoder stage.
        add_center_block: apply a :class:`UnetCenterBlock` to the deepest feature first.

    Levels (for deep supervision): the output of every block, finest first; level ``k`` has the
    size of encoder feature ``k`` (``level_channels``, ``level_reductions``, :meth:`forward_levels`).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[Sequence[int]],
        decoder_channels: Sequence[int],
        use_norm: NormSpec = "batchnorm",
        attention_type: str | None = None,
        interpolation: str = "nearest",
        spatial_dims: int = 3,
        add_center_block: bool = False,
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
        # Deepest first: block i goes from level depth-i to level depth-i-1.
        skips = list(encoder_channels[1:-1])[::-1] + [0]
        inputs = [encoder_channels[-1], *decoder_channels[:-1]]
        self.center = (
            UnetCenterBlock(encoder_channels[-1], use_norm, spatial_dims) if add_center_block else nn.Identity()
        )
        self.blocks = nn.ModuleList()
        for i, (cin, cskip, cout) in enumerate(zip(inputs, skips, decoder_channels, strict=True)):
            level = depth - i
            scale = tuple(hi // lo for hi, lo in zip(reductions[level], reductions[level - 1], strict=True))
            self.blocks.append(
                UnetDecoderBlock(cin, cskip, cout, scale, use_norm, attention_type, interpolation, spatial_dims)
            )
        self.level_channels = tuple(decoder_channels[::-1])
        self.level_reductions = tuple(tuple(r) for r in reductions[:depth])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.center(features[-1])
        depth = len(features) - 1
        for i, block in enumerate(self.blocks):
            level = depth - i - 1  # the level this block outputs
            skip: torch.Tensor | None = features[level] if level > 0 else None
            x = block(x, features[level].shape[2:], skip)
        return x

    def forward_levels(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Every block's output, finest first (item 0 is ``forward``'s output); no extra compute."""
        x = self.center(features[-1])
        depth = len(features) - 1
        levels: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            level = depth - i - 1
            skip = features[level] if level > 0 else None
            x = block(x, features[level].shape[2:], skip)
            levels.append(x)
        levels.reverse()
        return levels
