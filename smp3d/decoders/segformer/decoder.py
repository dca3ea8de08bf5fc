"""The SegFormer all-MLP decoder (Xie et al., 2021), for any encoder and any spatial_dims.

Every encoder feature from level 1 on is projected to ``segmentation_channels`` by a per-voxel
linear layer, resized (multilinear) to the size of encoder level 2 (reduction 4 with the
default strides, as in the paper and smp), concatenated deepest first, and fused by a 1x1
conv-BN-ReLU. Features with 0 channels (placeholders of encoders whose pyramid starts at
reduction 4) are skipped; the level-2 feature still gives the target size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers import ConvNormAct, interpolation_mode
from ...layers.capture import channels_first, channels_last

__all__ = ["MLP", "SegformerDecoder", "TARGET_LEVEL"]

#: The encoder level whose size the decoder resizes every projection to (and outputs).
TARGET_LEVEL = 2


class MLP(nn.Module):
    """A linear layer over the channels of each voxel of a ``(B, C, *spatial)`` tensor.

    Same result as a 1x1 convolution; kept as ``nn.Linear`` (child ``linear``) for smp's state-dict
    layout. The channel axis is moved last and back, so a channels-last input stays channels-last.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channels_first(self.linear(channels_last(x)))


class SegformerDecoder(nn.Module):
    """Linear projections of the features from level 1 on, resized to level 2's size, concatenated and fused.

    Args:
        encoder_channels: the encoder's ``out_channels`` (item 0 is the input); at least 4 items
            (``encoder_depth >= 3``).
        segmentation_channels: channels of every projection and of the output.
        spatial_dims: 2 or 3.
    """

    def __init__(self, encoder_channels: Sequence[int], segmentation_channels: int = 256, spatial_dims: int = 3):
        super().__init__()
        depth = len(encoder_channels) - 1
        if depth < TARGET_LEVEL + 1:
            raise ValueError(
                f"SegformerDecoder needs an encoder of depth >= {TARGET_LEVEL + 1}, got "
                f"encoder_channels={tuple(encoder_channels)} (depth {depth})."
            )
        if (
            isinstance(segmentation_channels, bool)
            or not isinstance(segmentation_channels, int)
            or segmentation_channels < 1
        ):
            raise ValueError(f"segmentation_channels must be a positive int, got {segmentation_channels!r}.")
        self.mode = interpolation_mode("linear", spatial_dims)
        self.target_level = TARGET_LEVEL  # (TorchScript reads attributes, not module globals)
        self.out_channels = segmentation_channels
        # Deepest first; 0-channel placeholder features carry nothing to project.
        self.levels = tuple(level for level in range(depth, 0, -1) if encoder_channels[level] > 0)
        self.mlp_stage = nn.ModuleList(MLP(encoder_channels[level], segmentation_channels) for level in self.levels)
        self.fuse_stage = ConvNormAct(
            len(self.levels) * segmentation_channels,
            segmentation_channels,
            1,
            padding=0,
            use_norm="batchnorm",
            spatial_dims=spatial_dims,
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """``features``: the encoder's output list; returns ``(B, segmentation_channels, *size of level 2)``."""
        size = list(features[self.target_level].shape[2:])
        projected: list[torch.Tensor] = []
        for i, mlp in enumerate(self.mlp_stage):  # (TorchScript iterates a ModuleList, not a zip with it)
            x = mlp(features[self.levels[i]])
            if list(x.shape[2:]) != size:
                x = F.interpolate(x, size=size, mode=self.mode, align_corners=False)
            projected.append(x)
        return self.fuse_stage(torch.cat(projected, dim=1))
