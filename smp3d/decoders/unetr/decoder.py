"""The UNETR decoder (Hatamizadeh et al., 2021), for any encoder and any spatial_dims.

Level ``k`` (0 = the input) of a depth-``d`` encoder has ``feature_size * 2**k`` channels and a target
reduction ``r_k``. With a single-scale encoder (a ViT: every feature at the patch size ``P``) the targets
halve from the deepest: ``r_d = P``, ``r_k = r_{k+1} // 2`` (UNETR's 16, 8, 4, 2 for ``P = 16``) and ``r_0 = 1``;
with a hierarchical encoder they are its own reductions. ``skips[0]`` is a conv block on the input (MONAI's
``encoder1``); ``skips[k]`` brings feature ``k`` from its reduction to ``r_k`` (a
:class:`~smp3d.layers.unetr_blocks.ProjectionUpsample`: MONAI's ``encoder2..4``, steps of 2); then one
:class:`~smp3d.layers.unetr_blocks.UpBlock` per level, deepest first (``blocks``: MONAI's ``decoder5`` ..
``decoder2``), starting from the deepest feature itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ...layers.blocks import NormSpec
from ...layers.unetr_blocks import ProjectionUpsample, UpBlock
from ...layers.unetr_blocks import conv_block as make_conv_block

__all__ = ["UNETRDecoder", "level_reductions"]


def level_reductions(reductions: Sequence[Sequence[int]], single_scale: bool) -> tuple[tuple[int, ...], ...]:
    """Target reduction of each level (see module docs); raises a ValueError when a ratio is not integral."""
    depth = len(reductions) - 1
    if not single_scale:
        return tuple(tuple(r) for r in reductions)
    targets = [tuple(reductions[-1])]
    for _ in range(depth - 1):
        targets.append(tuple(max(1, r // 2) for r in targets[-1]))
    targets.append((1,) * len(reductions[0]))
    targets.reverse()
    for k in range(1, depth + 1):
        finer, coarser = targets[k - 1], targets[k]
        if any(c % f for c, f in zip(coarser, finer, strict=True)):
            raise ValueError(
                f"UNETR: the encoder's patch size {tuple(reductions[-1])} halves to the levels {targets}, and level "
                f"{k} ({coarser}) is not a multiple of level {k - 1} ({finer}) on every axis; use a patch size that "
                f"halves evenly, such as 16 or (16, 16, 4)."
            )
    return tuple(targets)


class UNETRDecoder(nn.Module):
    """Args:
    encoder_channels, reductions: the encoder's ``out_channels`` and ``reductions``.
    feature_size: channels of level 0 (level ``k`` has ``feature_size * 2**k``).
    single_scale: the encoder's features all have the same reduction (a ViT).
    conv_block: conv blocks after each upsampling of a skip (MONAI's ``conv_block``).
    res_block: residual conv blocks (MONAI's ``res_block``) rather than plain ones.
    use_norm: normalization of the conv blocks (``"instancenorm"``: MONAI's ``"instance"``).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[Sequence[int]],
        feature_size: int,
        single_scale: bool,
        conv_block: bool = True,
        res_block: bool = True,
        use_norm: NormSpec = "instancenorm",
        spatial_dims: int = 3,
    ):
        super().__init__()
        depth = len(encoder_channels) - 1
        targets = level_reductions(reductions, single_scale)
        channels = [feature_size * 2**k for k in range(depth)]
        self.skips = nn.ModuleList(
            [make_conv_block(encoder_channels[0], channels[0], res_block, use_norm, spatial_dims)]
        )
        for k in range(1, depth):
            factor = tuple(r // t for r, t in zip(reductions[k], targets[k], strict=True))
            self.skips.append(
                ProjectionUpsample(
                    encoder_channels[k], channels[k], factor, conv_block, res_block, use_norm, spatial_dims
                )
            )
        self.blocks = nn.ModuleList()
        for k in reversed(range(depth)):
            cin = encoder_channels[-1] if k == depth - 1 else channels[k + 1]
            scale = tuple(hi // lo for hi, lo in zip(targets[k + 1], targets[k], strict=True))
            self.blocks.append(UpBlock(cin, channels[k], scale, res_block, use_norm, spatial_dims))
        self.level_reductions = targets
        self.out_channels = channels[0]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        depth = len(self.skips)
        x = features[depth]
        for i, up in enumerate(self.blocks):
            level = depth - 1 - i
            x = up(x, self.skips[level](features[level]))
        return x
