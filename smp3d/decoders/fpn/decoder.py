"""The FPN decoder (Lin et al., 2017; the segmentation variant of Kirillov et al., 2019), N-D.

A top-down pyramid is built from the four deepest encoder features: the deepest is projected to
``pyramid_channels`` by a 1x1 convolution, and every finer level adds a 1x1 projection of its
encoder feature to the coarser level interpolated to its size. Each pyramid level then goes
through a segmentation block (conv-GroupNorm-ReLU, upsampled after each conv to the size of the
next finer pyramid level, until the finest), and the four maps are merged (sum or concat).

Nothing assumes a factor of 2: every upsampling goes to the actual size of the next pyramid
level, so anisotropic, stride-1 or larger strides work. A segmentation block starting ``n``
levels above the finest has ``n`` conv blocks (one when ``n = 0``), whatever the strides: the
state-dict layout depends only on the encoder's depth, as in smp (3, 2, 1, 0 upsamplings).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers import conv, interpolation_mode
from ...layers import dropout as dropout_layer
from ...layers.upsample import interpolate

__all__ = ["FPNBlock", "FPNDecoder", "MergeBlock", "SegmentationBlock", "ConvGroupNormReLU"]

MERGE_POLICIES = ("add", "cat")
PYRAMID_LEVELS = 4
GROUPS = 32


def _resize_linear(x: torch.Tensor, size: list[int], mode: str) -> torch.Tensor:
    """(Multi)linear resize (``mode``: ``"bilinear"``/``"trilinear"``) with aligned corners; a no-op when
    the size already matches."""
    if list(x.shape[2:]) == list(size):
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=True)


class ConvGroupNormReLU(nn.Module):
    """3x3 conv (no bias) -> GroupNorm(32) -> ReLU, under the child name ``block``."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3):
        super().__init__()
        self.block = nn.Sequential(
            conv(spatial_dims)(in_channels, out_channels, 3, stride=1, padding=1, bias=False),
            nn.GroupNorm(GROUPS, out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class SegmentationBlock(nn.Module):
    """``max(1, n_upsamples)`` conv blocks; after the ``i``-th, resize to ``sizes[i]`` (if given)."""

    def __init__(self, in_channels: int, out_channels: int, n_upsamples: int = 0, spatial_dims: int = 3):
        super().__init__()
        self.n_upsamples = n_upsamples
        self.linear_mode = interpolation_mode("linear", spatial_dims)
        channels = [in_channels] + [out_channels] * max(1, n_upsamples)
        self.block = nn.Sequential(
            *(ConvGroupNormReLU(cin, cout, spatial_dims) for cin, cout in zip(channels[:-1], channels[1:], strict=True))
        )

    def forward(self, x: torch.Tensor, sizes: list[list[int]] | None = None) -> torch.Tensor:
        """``sizes``: the sizes of the ``n_upsamples`` finer pyramid levels, coarsest first."""
        count = 0 if sizes is None else len(sizes)
        for i, layer in enumerate(self.block):
            x = layer(x)
            if sizes is not None and i < count:
                x = _resize_linear(x, sizes[i], self.linear_mode)
        return x


class FPNBlock(nn.Module):
    """Top-down step: the coarser level, interpolated to the skip's size, plus a 1x1 projection of the skip."""

    def __init__(self, pyramid_channels: int, skip_channels: int, mode: str = "nearest", spatial_dims: int = 3):
        super().__init__()
        self.skip_conv = conv(spatial_dims)(skip_channels, pyramid_channels, kernel_size=1)
        self.interpolation_mode = interpolation_mode(mode, spatial_dims)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = interpolate(x, skip.shape[2:], self.interpolation_mode)
        return x + self.skip_conv(skip)


class MergeBlock(nn.Module):
    """Merge same-size maps by sum (``"add"``) or channel concatenation (``"cat"``)."""

    def __init__(self, policy: str):
        super().__init__()
        if policy not in MERGE_POLICIES:
            raise ValueError(f"decoder_merge_policy must be one of {MERGE_POLICIES}, got {policy!r}.")
        self.policy = policy

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        if self.policy == "cat":
            return torch.cat(maps, dim=1)
        out = maps[0]
        for m in maps[1:]:
            out = out + m
        return out


class FPNDecoder(nn.Module):
    """Feature pyramid on the four deepest encoder features, merged at the finest of them.

    Args:
        encoder_channels: the encoder's ``out_channels`` (item 0 is the input); at least 4 items.
        reductions: the encoder's ``reductions`` (read for the levels' metadata only).
        pyramid_channels: channels of every pyramid level.
        segmentation_channels: channels of the segmentation blocks; a multiple of 32 (GroupNorm).
        dropout: channel-wise (spatial) dropout rate after the merge.
        merge_policy: ``"add"`` (output ``segmentation_channels``) or ``"cat"`` (4x that).
        interpolation: mode of the top-down interpolation (``"nearest"``, ``"bilinear"``, ...).

    The output has the size of encoder feature ``len(encoder_channels) - 4``.

    Levels (for deep supervision), finest first: the merged output, then the pyramid levels ``p3``,
    ``p4``, ``p5`` (``pyramid_channels`` each) at their encoder features' sizes.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[Sequence[int]],
        pyramid_channels: int = 256,
        segmentation_channels: int = 128,
        dropout: float = 0.2,
        merge_policy: str = "add",
        interpolation: str = "nearest",
        spatial_dims: int = 3,
    ):
        super().__init__()
        if len(encoder_channels) < PYRAMID_LEVELS:
            raise ValueError(
                f"FPNDecoder needs at least {PYRAMID_LEVELS} features (encoder_depth >= 3), got "
                f"{len(encoder_channels)} channels {tuple(encoder_channels)}."
            )
        if segmentation_channels % GROUPS:
            raise ValueError(
                f"decoder_segmentation_channels must be a multiple of {GROUPS} (GroupNorm with {GROUPS} groups), "
                f"got {segmentation_channels}."
            )
        self.merge = MergeBlock(merge_policy)
        self.out_channels = segmentation_channels * (PYRAMID_LEVELS if merge_policy == "cat" else 1)
        deepest, *skips = list(encoder_channels)[::-1][:PYRAMID_LEVELS]
        self.p5 = conv(spatial_dims)(deepest, pyramid_channels, kernel_size=1)
        self.p4 = FPNBlock(pyramid_channels, skips[0], interpolation, spatial_dims)
        self.p3 = FPNBlock(pyramid_channels, skips[1], interpolation, spatial_dims)
        self.p2 = FPNBlock(pyramid_channels, skips[2], interpolation, spatial_dims)
        self.seg_blocks = nn.ModuleList(
            SegmentationBlock(pyramid_channels, segmentation_channels, n, spatial_dims)
            for n in range(PYRAMID_LEVELS - 1, -1, -1)
        )
        self.dropout = dropout_layer(spatial_dims)(p=dropout, inplace=True)
        self.level_channels = (self.out_channels, *(pyramid_channels,) * (PYRAMID_LEVELS - 1))
        self.level_reductions = tuple(tuple(r) for r in reductions[-PYRAMID_LEVELS:])

    def _pyramid(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[p5, p4, p3, p2]``, coarsest first."""
        p5 = self.p5(features[-1])
        p4 = self.p4(p5, features[-2])
        p3 = self.p3(p4, features[-3])
        p2 = self.p2(p3, features[-4])
        return [p5, p4, p3, p2]

    def _merged(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        sizes = [list(p.shape[2:]) for p in pyramid]
        maps: list[torch.Tensor] = []
        for i, block in enumerate(self.seg_blocks):  # (TorchScript iterates a ModuleList, not a zip with it)
            maps.append(block(pyramid[i], sizes[i + 1 :]))
        return self.dropout(self.merge(maps))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self._merged(self._pyramid(features))

    def forward_levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[forward's output, p3, p4, p5]``, finest first; no extra compute."""
        pyramid = self._pyramid(features)
        return [self._merged(pyramid), pyramid[2], pyramid[1], pyramid[0]]
