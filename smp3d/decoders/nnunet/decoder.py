"""nnU-Net's U-Net decoder (the ``UNetDecoder`` of dynamic-network-architectures), for any encoder.

Block ``i`` (deepest first) upsamples the deeper map with a transposed convolution whose kernel
and stride are the per-axis ratio of the two levels' reductions, to the skip connection's width;
concatenates the skip; then applies ``convs`` conv-InstanceNorm-LeakyReLU units
(:func:`~smp3d.layers.conv_norm_act`) with the skip level's kernel size, keeping that width. So the
decoder's widths mirror the encoder's, as in nnU-Net. The decoder stops at the encoder's first
feature (item 1; the first with channels, for encoders that report a 0-channel placeholder), not at
the input: with nnU-Net's encoders (first stage stride 1) that is full resolution, with others the
model's head upsamples the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ...layers import check_kernel_sizes, conv_norm_act, conv_transpose

__all__ = ["NNUNetDecoder", "NNUNetDecoderBlock"]


class NNUNetDecoderBlock(nn.Module):
    """``convs(cat(upsample(x), skip))``: a transposed convolution to ``skip_channels``, then conv units."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        scale: tuple[int, ...],
        kernel_size: tuple[int, ...],
        convs: int,
        spatial_dims: int = 3,
        conv_bias: bool = True,
    ):
        super().__init__()
        self.upsample = conv_transpose(spatial_dims)(
            in_channels, skip_channels, kernel_size=scale, stride=scale, bias=conv_bias
        )
        self.convs = nn.Sequential(
            *(
                conv_norm_act(
                    skip_channels * (2 if i == 0 else 1), skip_channels, kernel_size, 1, spatial_dims, conv_bias
                )
                for i in range(convs)
            )
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([self.upsample(x), skip], dim=1))


class NNUNetDecoder(nn.Module):
    """Transposed-conv + concat + conv-unit blocks from the deepest feature up to the encoder's first.

    Args:
        encoder_channels: the encoder's ``out_channels`` (item 0 is the input).
        reductions: the encoder's ``reductions``, one per-axis tuple per feature.
        kernel_sizes: the kernel of each encoder stage (``depth`` items, finest first, each an int or a
            per-axis tuple; ``None``: 3). Block ``i``'s units use the kernel of the level they output.
        convs_per_block: conv units per block, an int or one per block (deepest first); nnU-Net's plans
            use 2 with the plain encoder and 1 with the residual encoder.
        conv_bias: biases on the transposed and regular convolutions (nnU-Net's plans: True).

    Levels (deep supervision): level ``j`` is the output of the block that ends at encoder feature
    ``j + 1``; ``level_channels`` and ``level_reductions`` describe them, finest first, and
    :meth:`forward_levels` returns them.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[Sequence[int]],
        kernel_sizes: int | Sequence[int | Sequence[int]] | None = None,
        convs_per_block: int | Sequence[int] = 2,
        spatial_dims: int = 3,
        conv_bias: bool = True,
    ):
        super().__init__()
        depth = len(encoder_channels) - 1
        if depth < 1:
            raise ValueError(
                f"NNUNetDecoder needs an encoder with at least one stage, got channels {encoder_channels}."
            )
        kernels = check_kernel_sizes(kernel_sizes, depth, spatial_dims, "NNUNetDecoder")
        # The finest level is the first feature with channels (some pyramids start at reduction 4).
        first = next((i for i in range(1, depth + 1) if encoder_channels[i] > 0), depth)
        n_blocks = depth - first
        if isinstance(convs_per_block, int) and not isinstance(convs_per_block, bool):
            convs_per_block = (convs_per_block,) * n_blocks
        if (
            isinstance(convs_per_block, (str, bytes))
            or not isinstance(convs_per_block, Sequence)
            or len(convs_per_block) != n_blocks
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in convs_per_block)
        ):
            raise ValueError(
                f"decoder convs_per_block must be a positive int or {n_blocks} positive ints (one per decoder "
                f"block, deepest first), got {convs_per_block!r}."
            )
        self.blocks = nn.ModuleList()
        for i, convs in enumerate(convs_per_block):
            level = depth - i  # the block goes from feature `level` to feature `level - 1`
            scale = tuple(hi // lo for hi, lo in zip(reductions[level], reductions[level - 1], strict=True))
            self.blocks.append(
                NNUNetDecoderBlock(
                    encoder_channels[level],
                    encoder_channels[level - 1],
                    scale,
                    kernels[level - 2],
                    convs,
                    spatial_dims,
                    conv_bias,
                )
            )
        #: Channels and per-axis reductions of the levels :meth:`forward_levels` returns, finest first.
        stop = max(depth, first + 1)
        self.level_channels = tuple(int(c) for c in encoder_channels[first:stop])
        self.level_reductions = tuple(tuple(r) for r in reductions[first:stop])

    def forward_levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every block's output, finest first: ``(B, level_channels[j], *spatial / level_reductions[j])``."""
        x = features[-1]
        depth = len(features) - 1
        levels: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x = block(x, features[depth - i - 1])
            levels.insert(0, x)
        if len(levels) == 0:
            levels.append(x)
        return levels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        depth = len(features) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, features[depth - i - 1])
        return x
