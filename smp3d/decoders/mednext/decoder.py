"""The MedNeXt decoder (Roy et al., MICCAI 2023), for any encoder and any spatial_dims.

From the deepest feature up, decoder stage ``k`` upsamples with a MedNeXt up block (transposed
depthwise conv by the per-axis ratio of the two levels' reductions, to the skip's channels), adds
the skip feature, and applies a row of MedNeXt blocks. It reads only the encoder's
``out_channels`` and ``reductions``; a 0-channel skip (a placeholder feature) is not added and the
width is kept.

Levels (for deep supervision), finest first: the output of each decoder stage, then the encoder's
deepest feature itself (MedNeXt's bottleneck, which has its own deep-supervision output).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from ...layers.mednext import MedNeXtUpBlock, mednext_stage

__all__ = ["MedNeXtDecoder", "MedNeXtDecoderStage"]


def _per_stage(value: Any, count: int, what: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * count
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or len(value) != count
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise ValueError(
            f"MedNeXt decoder: {what} must be a positive int or {count} positive ints (one per decoder stage, "
            f"deepest first; the encoder has {count + 1} stages), got {value!r}."
        )
    return tuple(value)


class MedNeXtDecoderStage(nn.Module):
    """``up`` (a MedNeXt up block) -> add the skip (unless it has 0 channels) -> ``blocks``."""

    def __init__(self, up: nn.Module, blocks: nn.Module, has_skip: bool):
        super().__init__()
        self.up, self.blocks, self.has_skip = up, blocks, has_skip

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.has_skip:
            x = x + skip
        return self.blocks(x)


class MedNeXtDecoder(nn.Module):
    """MedNeXt up blocks and block rows from the deepest feature to the encoder's first feature.

    Args:
        encoder_channels: the encoder's ``out_channels`` (item 0 is the input, not used).
        reductions: the encoder's ``reductions``.
        expansion_ratios: per decoder stage (deepest first) or one int: expansion of its up block and blocks.
        blocks: per decoder stage (deepest first) or one int: MedNeXt blocks after the up block.
        kernel_size: depthwise kernel size (odd).
        residual: residual paths in the blocks and up blocks (MedNeXt's ``do_res`` / ``do_res_up_down``).

    ``stages[k]`` holds ``up`` and ``blocks``; stage 0 is the deepest. ``forward`` returns the finest
    level ``(B, level_channels[0], *size / level_reductions[0])``.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[Sequence[int]],
        expansion_ratios: int | Sequence[int] = 2,
        blocks: int | Sequence[int] = 2,
        kernel_size: int = 3,
        residual: bool = True,
        spatial_dims: int = 3,
    ):
        super().__init__()
        depth = len(encoder_channels) - 1
        if depth < 1:
            raise ValueError(
                f"MedNeXt decoder needs an encoder with at least 1 stage, got channels {encoder_channels}."
            )
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"MedNeXt decoder: kernel_size must be an odd positive int, got {kernel_size!r}.")
        if not isinstance(residual, bool):
            raise ValueError(f"MedNeXt decoder: residual must be True or False, got {residual!r}.")
        ratios = _per_stage(expansion_ratios, depth - 1, "expansion_ratios")
        counts = _per_stage(blocks, depth - 1, "blocks")

        # Channels of each level, finest (level 1) to deepest: a 0-channel skip keeps the deeper width.
        channels = [int(encoder_channels[depth])]
        for level in range(depth - 1, 0, -1):
            channels.append(int(encoder_channels[level]) or channels[-1])
        channels.reverse()
        self.level_channels: tuple[int, ...] = tuple(channels)
        self.level_reductions: tuple[tuple[int, ...], ...] = tuple(tuple(int(v) for v in r) for r in reductions[1:])
        self.out_channels = self.level_channels[0]

        self.stages = nn.ModuleList()
        for k in range(depth - 1):
            level = depth - 1 - k  # the encoder level this stage outputs (1 = finest)
            scale = tuple(hi // lo for hi, lo in zip(reductions[level + 1], reductions[level], strict=True))
            cin, cout = channels[level], channels[level - 1]
            up = MedNeXtUpBlock(cin, cout, ratios[k], kernel_size, spatial_dims, residual, stride=scale)
            blocks = mednext_stage(cout, counts[k], ratios[k], kernel_size, spatial_dims, residual)
            self.stages.append(MedNeXtDecoderStage(up, blocks, has_skip=int(encoder_channels[level]) > 0))

    def forward_levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every level's output, finest first; the last is the encoder's deepest feature."""
        x = features[-1]
        levels = [x]
        depth = len(features) - 1
        for k, stage in enumerate(self.stages):
            x = stage(x, features[depth - 1 - k])
            levels.append(x)
        levels.reverse()
        return levels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        depth = len(features) - 1
        for k, stage in enumerate(self.stages):
            x = stage(x, features[depth - 1 - k])
        return x
