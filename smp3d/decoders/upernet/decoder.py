"""The UPerNet decoder (Xiao et al., 2018), for any encoder and any spatial_dims.

It uses the encoder features from level 2 on (reduction 4 and deeper with the default strides):
each is layer-normalized over its channels; a pyramid pooling module (adaptive average pools to
1, 2, 3 and 6 cells per axis) summarizes the deepest one; a top-down FPN adds 1x1 projections
of the finer features to the coarser state interpolated to their size, and a 3x3 conv refines
every FPN level; finally all levels are interpolated to the size of level 2, concatenated
(finest first) and fused by a 3x3 conv.

Every resize goes to the actual size of its target tensor, so per-axis and non-power-of-2
strides work; the state-dict layout depends only on the number of levels (smp's in 2D).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.instancenorm import _InstanceNorm

from ...layers import (
    ChannelLayerNorm,
    ConvNormAct,
    SingleCellBatchNorm,
    adaptive_avg_pool,
    interpolation_mode,
    single_cell_safe,
)
from ...layers.blocks import NormSpec

__all__ = ["FIRST_LEVEL", "FPNLateralBlock", "PSPModule", "SingleCellBatchNorm", "UPerNetDecoder"]

#: The finest encoder feature UPerNet uses; the decoder's output has its size.
FIRST_LEVEL = 2
POOL_SIZES = (1, 2, 3, 6)
NORM_EPS = 1e-6


def _resize(x: torch.Tensor, size: list[int], mode: str) -> torch.Tensor:
    """(Multi)linear resize without aligned corners; a no-op (exactly) when the size already matches."""
    if list(x.shape[2:]) == list(size):
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


class PSPModule(nn.Module):
    """Pyramid pooling: the feature, concatenated with its pooled-convolved-resized versions, fused by a 3x3 conv.

    The fusing conv always uses batch norm (smp's layout); ``use_norm`` applies to the 1x1 convs.
    A batch norm after the 1-cell pool is a :class:`SingleCellBatchNorm`, so that training with a
    batch of one works (smp raises there).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        sizes: Sequence[int] = POOL_SIZES,
        use_norm: NormSpec = "batchnorm",
        spatial_dims: int = 3,
    ):
        super().__init__()
        self.mode = interpolation_mode("linear", spatial_dims)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                adaptive_avg_pool(spatial_dims)(size),
                ConvNormAct(in_channels, out_channels, 1, padding=0, use_norm=use_norm, spatial_dims=spatial_dims),
            )
            for size in sizes
        )
        for size, block in zip(sizes, self.blocks, strict=True):
            if size != 1:
                continue
            block[1][1] = single_cell_safe(block[1][1], spatial_dims)
            if isinstance(block[1][1], _InstanceNorm):
                raise ValueError(
                    "UPerNet's pyramid pooling has a branch pooled to 1 cell per axis, and instance norm "
                    "normalizes over the spatial axes, which is undefined for a single value (torch refuses it). "
                    f"Use 'batchnorm', 'layernorm' or 'identity' as decoder_use_norm; got {use_norm!r}."
                )
        self.out_conv = ConvNormAct(
            in_channels + len(sizes) * out_channels,
            out_channels,
            3,
            padding=1,
            use_norm="batchnorm",
            spatial_dims=spatial_dims,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pyramid = [x]
        for block in self.blocks:
            pyramid.append(_resize(block(x), size, self.mode))
        return self.out_conv(torch.cat(pyramid, dim=1))


class FPNLateralBlock(nn.Module):
    """Top-down step: 1x1 conv-norm-ReLU of the encoder feature plus the coarser state resized to its size."""

    def __init__(
        self, lateral_channels: int, out_channels: int, use_norm: NormSpec = "batchnorm", spatial_dims: int = 3
    ):
        super().__init__()
        self.mode = interpolation_mode("linear", spatial_dims)
        self.conv_norm_relu = ConvNormAct(
            lateral_channels, out_channels, 1, padding=0, use_norm=use_norm, spatial_dims=spatial_dims
        )

    def forward(self, state: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        lateral = self.conv_norm_relu(lateral)
        return _resize(state, lateral.shape[2:], self.mode) + lateral


class UPerNetDecoder(nn.Module):
    """PSP on the deepest feature + FPN over the features from level 2 on, fused at level 2's size.

    Args:
        encoder_channels: the encoder's ``out_channels`` (item 0 is the input); at least 4 items
            (``encoder_depth >= 3``), as the decoder needs two levels from level 2 on.
        reductions: the encoder's ``reductions`` (read for the levels' metadata only).
        decoder_channels: channels of every PSP/FPN map and of the output.
        use_norm: normalization of the decoder's convs (the PSP fusing conv always uses batch norm).
        spatial_dims: 2 or 3.

    Levels (for deep supervision), finest first: the fused output (level 2's size), then the refined
    FPN maps of levels 3 .. depth - 1 and the PSP map of the deepest level.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[Sequence[int]],
        decoder_channels: int = 256,
        use_norm: NormSpec = "batchnorm",
        spatial_dims: int = 3,
    ):
        super().__init__()
        depth = len(encoder_channels) - 1
        if depth < FIRST_LEVEL + 1:
            raise ValueError(
                f"UPerNetDecoder needs an encoder of depth >= {FIRST_LEVEL + 1} (features from level "
                f"{FIRST_LEVEL} on, at least two), got encoder_channels={tuple(encoder_channels)} (depth {depth})."
            )
        if isinstance(decoder_channels, bool) or not isinstance(decoder_channels, int) or decoder_channels < 1:
            raise ValueError(f"decoder_channels must be a positive int, got {decoder_channels!r}.")
        self.mode = interpolation_mode("linear", spatial_dims)
        self.out_channels = decoder_channels
        self.first_level = FIRST_LEVEL  # (TorchScript reads attributes, not module globals)
        used = list(encoder_channels[FIRST_LEVEL:])
        self.feature_norms = nn.ModuleList(ChannelLayerNorm(channels, eps=NORM_EPS) for channels in used)
        self.psp = PSPModule(used[-1], decoder_channels, POOL_SIZES, use_norm, spatial_dims)
        # Top-down: from the second deepest used level to level FIRST_LEVEL.
        self.fpn_lateral_blocks = nn.ModuleList(
            FPNLateralBlock(channels, decoder_channels, use_norm, spatial_dims) for channels in used[-2::-1]
        )
        self.fpn_conv_blocks = nn.ModuleList(
            ConvNormAct(decoder_channels, decoder_channels, 3, padding=1, use_norm=use_norm, spatial_dims=spatial_dims)
            for _ in used[:-1]
        )
        self.fusion_block = ConvNormAct(
            len(used) * decoder_channels,
            decoder_channels,
            3,
            padding=1,
            use_norm=use_norm,
            spatial_dims=spatial_dims,
        )
        self.level_channels = (decoder_channels,) * len(used)
        self.level_reductions = tuple(tuple(r) for r in reductions[FIRST_LEVEL:])

    def _top_down(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The PSP map of the deepest used level, then the refined FPN maps, coarsest first."""
        used: list[torch.Tensor] = []
        for i, norm in enumerate(self.feature_norms):  # (TorchScript iterates ModuleLists, not zips with them)
            used.append(norm(features[self.first_level + i]))
        state = self.psp(used[-1])
        levels = [state]
        states: list[torch.Tensor] = []
        for i, block in enumerate(self.fpn_lateral_blocks):  # from the second deepest used level down
            state = block(state, used[len(used) - 2 - i])
            states.append(state)
        for i, conv_block in enumerate(self.fpn_conv_blocks):
            levels.append(conv_block(states[i]))
        return levels

    def _fused(self, levels: list[torch.Tensor]) -> torch.Tensor:
        size = levels[-1].shape[2:]
        resized = [_resize(level, size, self.mode) for level in levels]
        resized.reverse()  # finest first, as in smp's concatenation order
        return self.fusion_block(torch.cat(resized, dim=1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """``features``: the encoder's output list; returns ``(B, decoder_channels, *size of level 2)``."""
        return self._fused(self._top_down(features))

    def forward_levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[forward's output, FPN maps of levels 3 .., PSP map]``, finest first; no extra compute."""
        levels = self._top_down(features)
        out = [self._fused(levels)]
        # The finest FPN map has the output's size: the fused output stands for that level.
        for i in range(len(levels) - 2, -1, -1):
            out.append(levels[i])
        return out
