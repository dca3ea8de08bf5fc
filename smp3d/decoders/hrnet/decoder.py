"""The HRNetV2 segmentation head (Sun et al., 2019, https://arxiv.org/abs/1904.04514), for any encoder, N-D.

The features from the *first level* on (the first encoder level, counting from 1, reduced at least 4
times along its most reduced axis: level 2 with the default strides; the deepest level if none is) up
to the deepest are resized (multilinear) to the first level's actual size, concatenated and fused by a
1x1 conv-norm-ReLU to ``decoder_channels``. With an HRNet encoder these are its four parallel branches.

Optionally the fused map is brought back to the input resolution by learned upsampling: transposed
convolutions (conv-transpose-norm-ReLU), each x2 along the axes that still need it and x1 along the
others, each halving the channels. The decoder reads only ``out_channels`` and ``reductions``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers import ConvNormAct, interpolation_mode
from ...layers.blocks import NormSpec
from ..linknet.decoder import TransposedUpsample

__all__ = ["HRNetDecoder", "first_level", "transposed_steps"]

#: The first level used is the first one reduced at least this much along its most reduced axis.
MIN_REDUCTION = 4


def first_level(encoder_channels: Sequence[int], reductions: Sequence[Sequence[int]]) -> int:
    """Index of the finest encoder feature the head uses (see the module docs); 0-channel features are skipped."""
    levels = [i for i in range(1, len(encoder_channels)) if encoder_channels[i] > 0]
    if not levels:
        raise ValueError(f"HRNetDecoder needs at least one encoder feature besides the input, got {encoder_channels}.")
    return next((i for i in levels if max(reductions[i]) >= MIN_REDUCTION), levels[-1])


def transposed_steps(reduction: Sequence[int]) -> list[tuple[int, ...]]:
    """Per-axis scales (2 or 1) of the x2 steps that undo ``reduction``; each axis must be a power of 2."""
    if any(r & (r - 1) for r in reduction):
        raise ValueError(
            f"Learned (transposed) upsampling goes x2 per step, so the reduction of the first level used must be "
            f"a power of 2 on every axis, got {tuple(reduction)}. Use upsampling='bilinear' or other strides."
        )
    exponents = [int(math.log2(r)) for r in reduction]
    return [tuple(2 if e > step else 1 for e in exponents) for step in range(max(exponents))]


class HRNetDecoder(nn.Module):
    """Concatenate the features from the first level on at its resolution, fuse, optionally upsample.

    Args:
        encoder_channels: the encoder's ``out_channels`` (item 0 is the input).
        reductions: the encoder's per-axis ``reductions``.
        decoder_channels: channels of the fused map.
        use_norm: normalization of the fusion (and upsampling) blocks, as in the other decoders.
        learned_upsampling: add the transposed-convolution steps back to the input resolution.
        spatial_dims: 2 or 3.

    Output: ``(B, out_channels, *size)`` where ``size`` is the first level's size, times
    ``reductions[first_level]`` with learned upsampling. ``output_reduction`` is the per-axis
    reduction left for the segmentation head to undo (all ones with learned upsampling).

    Levels (for deep supervision), finest first: the output, then the coarser features the head
    fuses (with an HRNet encoder: its lower-resolution branches), each at its own size.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[Sequence[int]],
        decoder_channels: int = 256,
        use_norm: NormSpec = "batchnorm",
        learned_upsampling: bool = False,
        spatial_dims: int = 3,
    ):
        super().__init__()
        if isinstance(decoder_channels, bool) or not isinstance(decoder_channels, int) or decoder_channels < 1:
            raise ValueError(f"decoder_channels must be a positive int, got {decoder_channels!r}.")
        if len(encoder_channels) != len(reductions):
            raise ValueError(f"{len(encoder_channels)} encoder channels for {len(reductions)} reductions.")
        self.first_level = first_level(encoder_channels, reductions)
        self.levels = tuple(i for i in range(self.first_level, len(encoder_channels)) if encoder_channels[i] > 0)
        self.mode = interpolation_mode("linear", spatial_dims)
        concatenated = sum(encoder_channels[i] for i in self.levels)
        self.fuse = ConvNormAct(
            concatenated, decoder_channels, 1, padding=0, use_norm=use_norm, spatial_dims=spatial_dims
        )
        reduction = tuple(reductions[self.first_level])
        channels = decoder_channels
        steps: list[nn.Module] = []
        if learned_upsampling:
            for scale in transposed_steps(reduction):
                steps.append(TransposedUpsample(channels, max(channels // 2, 1), scale, use_norm, spatial_dims))
                channels = max(channels // 2, 1)
            reduction = (1,) * spatial_dims
        self.upsampling = nn.Sequential(*steps)
        self.out_channels = channels
        self.output_reduction = reduction
        self.level_channels = (channels, *(encoder_channels[i] for i in self.levels[1:]))
        self.level_reductions = (reduction, *(tuple(reductions[i]) for i in self.levels[1:]))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """``features``: the encoder's output list."""
        size = list(features[self.first_level].shape[2:])
        maps: list[torch.Tensor] = []
        for level in self.levels:
            x = features[level]
            if list(x.shape[2:]) != size:
                x = F.interpolate(x, size=size, mode=self.mode, align_corners=False)
            maps.append(x)
        x = self.fuse(torch.cat(maps, dim=1) if len(maps) > 1 else maps[0])
        return self.upsampling(x)

    def forward_levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[forward's output, coarser fused features ...]``, finest first; no extra compute."""
        levels = [self.forward(features)]
        for level in self.levels[1:]:
            levels.append(features[level])
        return levels
