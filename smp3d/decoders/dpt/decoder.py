"""The DPT decoder (Ranftl et al., 2021): reassemble features at a pyramid of reductions, fuse them
deepest first with residual conv units and upsampling. N-D, per-axis, with any encoder.

Layout and state-dict keys are those of segmentation_models_pytorch 0.6's DPT (``projection_blocks``,
``reassemble_blocks``, ``fusion_blocks``). Levels and targets:

- the decoder uses every encoder feature from level 1 on that has channels (0-channel placeholders are
  skipped); feature ``l`` is reassembled to the target reduction ``2 ** (l + 1)`` (4, 8, 16, 32 for
  ``encoder_depth=4``, as smp), scaled per axis by ``r / P``, where ``r`` is the encoder's deepest
  reduction along that axis and ``P`` the power of 2 nearest to its largest one, and never below 1
  (:func:`dpt_level_reductions`). So a ViT with patches 16x16x4 gets targets (4, 4, 1), (8, 8, 2),
  (16, 16, 4), (32, 32, 8), and one with patches 14 (DINOv2) gets 3.5, 7, 14, 28: its features are
  upsampled x4 and x2, kept, and downsampled /2 (smp 0.6 truncates these factors and fails to fuse);
- reassembling multiplies the feature's reduction by a per-axis factor: a transposed convolution
  (kernel = stride) where the target is finer, a 3x3 strided convolution where it is coarser, nothing
  where it is equal (an axis may not need both);
- fusion runs deepest first; each block upsamples (multilinear, ``align_corners=True``) to the next
  level's target, the last one to half the shallowest target (unless that is below 1): the decoder's
  output reduction. The head resizes the mask to the input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers import Activation
from ...layers.factories import batch_norm, conv, conv_transpose, interpolation_mode

__all__ = [
    "DPTDecoder",
    "DPTSegmentationHead",
    "FusionBlock",
    "ReadoutAddBlock",
    "ReadoutConcatBlock",
    "ReadoutIgnoreBlock",
    "ReassembleBlock",
    "ResidualConvBlock",
    "dpt_level_reductions",
]

READOUTS = ("cat", "add", "ignore")


def dpt_level_reductions(
    reductions: Sequence[Sequence[int]], levels: Sequence[int]
) -> tuple[tuple[Fraction, ...], ...]:
    """Per-axis target reduction of each used encoder level (exact fractions; see the module docs).

    Args:
        reductions: the encoder's ``reductions`` (item 0 is the input).
        levels: the encoder levels the decoder uses (1-based, increasing).
    """
    deepest = reductions[-1]
    nearest = 2 ** round(math.log2(max(deepest)))
    return tuple(tuple(max(Fraction(1), Fraction(2 ** (level + 1) * r, nearest)) for r in deepest) for level in levels)


class ReadoutConcatBlock(nn.Module):
    """Concatenate the first prefix (class) token to every patch token and project back: Linear + GELU.

    Without prefix tokens the projection takes the patch tokens alone (smp's layout).
    """

    def __init__(self, embed_dim: int, has_prefix_tokens: bool):
        super().__init__()
        self.has_prefix_tokens = has_prefix_tokens
        self.project = nn.Sequential(nn.Linear(embed_dim * (2 if has_prefix_tokens else 1), embed_dim), nn.GELU())

    def forward(self, features: torch.Tensor, prefix_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """``features (B, C, *spatial)``, ``prefix_tokens (B, P, C)`` or ``None`` -> ``(B, C, *spatial)``."""
        shape = features.shape
        tokens = features.flatten(2).transpose(1, 2)
        if self.has_prefix_tokens and prefix_tokens is not None:
            tokens = torch.cat([tokens, prefix_tokens[:, :1].expand_as(tokens)], dim=2)
        return self.project(tokens).transpose(1, 2).reshape(shape)


class ReadoutAddBlock(nn.Module):
    """Add the mean of the prefix tokens to every patch token (nothing without prefix tokens)."""

    def forward(self, features: torch.Tensor, prefix_tokens: torch.Tensor | None = None) -> torch.Tensor:
        if prefix_tokens is None:
            return features
        mean = prefix_tokens.mean(dim=1)
        for _ in range(features.dim() - 2):
            mean = mean.unsqueeze(-1)
        return features + mean


class ReadoutIgnoreBlock(nn.Module):
    """Leave the features as they are."""

    def forward(self, features: torch.Tensor, prefix_tokens: torch.Tensor | None = None) -> torch.Tensor:
        return features


class ReassembleBlock(nn.Module):
    """1x1 conv to ``mid_channels``, resample by a per-axis factor, 3x3 conv to ``out_channels``.

    ``factor`` per axis: ``("up", f)`` transposed conv with kernel = stride = f, ``("down", f)`` a 3x3
    conv of stride f; axes with factor 1 are left alone.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        up: Sequence[int],
        down: Sequence[int],
        spatial_dims: int,
    ):
        super().__init__()
        self.project_to_out_channel = conv(spatial_dims)(in_channels, mid_channels, kernel_size=1)
        if any(f > 1 for f in up):
            self.upsample: nn.Module = conv_transpose(spatial_dims)(
                mid_channels, mid_channels, kernel_size=tuple(up), stride=tuple(up)
            )
        elif any(f > 1 for f in down):
            self.upsample = conv(spatial_dims)(mid_channels, mid_channels, kernel_size=3, stride=tuple(down), padding=1)
        else:
            self.upsample = nn.Identity()
        self.project_to_feature_dim = conv(spatial_dims)(mid_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project_to_feature_dim(self.upsample(self.project_to_out_channel(x)))


class ResidualConvBlock(nn.Module):
    """ReLU-conv3x3-BN twice, plus the input."""

    def __init__(self, feature_dim: int, spatial_dims: int):
        super().__init__()
        self.conv_1 = conv(spatial_dims)(feature_dim, feature_dim, 3, padding=1, bias=False)
        self.batch_norm_1 = batch_norm(spatial_dims)(feature_dim)
        self.conv_2 = conv(spatial_dims)(feature_dim, feature_dim, 3, padding=1, bias=False)
        self.batch_norm_2 = batch_norm(spatial_dims)(feature_dim)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.batch_norm_1(self.conv_1(self.activation(x)))
        y = self.batch_norm_2(self.conv_2(self.activation(y)))
        return y + x


class FusionBlock(nn.Module):
    """Residual unit, add the deeper level's fused map, residual unit, upsample by ``scale``, 1x1 conv."""

    def __init__(self, feature_dim: int, scale: Sequence[int], spatial_dims: int):
        super().__init__()
        self.residual_conv_block1 = ResidualConvBlock(feature_dim, spatial_dims)
        self.residual_conv_block2 = ResidualConvBlock(feature_dim, spatial_dims)
        self.project = conv(spatial_dims)(feature_dim, feature_dim, kernel_size=1)
        self.activation = nn.ReLU()  # unused in forward; kept for smp's module layout
        self.scale = [float(s) for s in scale]
        self.resize = any(s != 1 for s in scale)
        self.mode = interpolation_mode("linear", spatial_dims)

    def forward(self, feature: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        feature = self.residual_conv_block1(feature)
        if previous is not None:
            feature = feature + previous
        feature = self.residual_conv_block2(feature)
        if self.resize:
            feature = F.interpolate(feature, scale_factor=self.scale, mode=self.mode, align_corners=True)
        return self.project(feature)


class DPTDecoder(nn.Module):
    """Readout, reassemble and fuse the features of the used encoder levels; output at ``output_reduction``.

    Args:
        encoder_channels: the encoder's ``out_channels`` (item 0 is the input).
        encoder_reductions: the encoder's ``reductions``.
        has_prefix_tokens: whether the encoder returns prefix tokens (``num_prefix_tokens > 0``).
        readout: ``"cat"``, ``"add"`` or ``"ignore"``: how prefix tokens enter the features.
        intermediate_channels: channels after the 1x1 projection, one per used level.
        fusion_channels: channels of the reassembled and fused maps (and of the output).
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        encoder_reductions: Sequence[Sequence[int]],
        has_prefix_tokens: bool,
        readout: str = "cat",
        intermediate_channels: Sequence[int] = (256, 512, 1024, 1024),
        fusion_channels: int = 256,
        spatial_dims: int = 3,
    ):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"DPT: decoder_readout must be one of {READOUTS}, got {readout!r}.")
        self.levels = tuple(i for i in range(1, len(encoder_channels)) if encoder_channels[i] > 0)
        if len(intermediate_channels) != len(self.levels):
            raise ValueError(
                f"DPT: decoder_intermediate_channels has {len(intermediate_channels)} items but the encoder has "
                f"{len(self.levels)} features (levels {self.levels} with channels {tuple(encoder_channels)}): give one "
                f"per feature, e.g. {(256, 512, 1024, 1024, 1024)[: len(self.levels)]}."
            )
        targets = dpt_level_reductions(encoder_reductions, self.levels)
        self.level_reductions = targets
        self.output_reduction = tuple(t / 2 if t >= 2 else t for t in targets[0])
        blocks: list[nn.Module] = []
        reassemble: list[nn.Module] = []
        #: per axis, the multiple every input size must be so that each level's resampling is exact
        self.input_multiple = tuple(int(r) for r in encoder_reductions[-1])
        for level, mid, target in zip(self.levels, intermediate_channels, targets, strict=True):
            channels, have = encoder_channels[level], encoder_reductions[level]
            factors = [Fraction(h) / t for h, t in zip(have, target, strict=True)]
            up = [int(f) if f >= 1 else 1 for f in factors]
            down = [int(1 / f) if f < 1 else 1 for f in factors]
            exact = all(f == Fraction(u, d) for f, u, d in zip(factors, up, down, strict=True))
            if not exact or (any(u > 1 for u in up) and any(d > 1 for d in down)):
                raise ValueError(
                    f"DPT: encoder level {level} is at reduction {tuple(have)} and must be reassembled to "
                    f"{tuple(str(t) for t in target)}; only per-axis factors that are all upsampling or all "
                    f"downsampling by integers are supported."
                )
            self.input_multiple = tuple(
                math.lcm(m, h * d) for m, h, d in zip(self.input_multiple, have, down, strict=True)
            )
            blocks.append(
                ReadoutConcatBlock(channels, has_prefix_tokens)
                if readout == "cat"
                else ReadoutAddBlock()
                if readout == "add"
                else ReadoutIgnoreBlock()
            )
            reassemble.append(ReassembleBlock(channels, mid, fusion_channels, up, down, spatial_dims))
        self.projection_blocks = nn.ModuleList(blocks)
        self.reassemble_blocks = nn.ModuleList(reassemble)
        # fusion runs deepest first: block i upsamples to the next shallower target (the last to the output)
        chain = [*targets[::-1], self.output_reduction]
        scales = [[a / b for a, b in zip(chain[i], chain[i + 1], strict=True)] for i in range(len(targets))]
        if any(f.denominator != 1 for scale in scales for f in scale):
            raise ValueError(
                f"DPT: the targets {[tuple(str(t) for t in level) for level in chain]} of encoder levels {self.levels} "
                f"(and the output) are not integer multiples of each other."
            )
        self.fusion_blocks = nn.ModuleList(
            FusionBlock(fusion_channels, [int(f) for f in scale], spatial_dims) for scale in scales
        )
        self.out_channels = fusion_channels

    def forward(self, features: list[torch.Tensor], prefix_tokens: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``features``: the encoder's list (item 0 the input); ``prefix_tokens``: ``None`` or one ``(B, P, C)``
        per used level. Returns ``(B, fusion_channels, *spatial / output_reduction)``."""
        processed: list[torch.Tensor] = []
        for i, (projection, reassemble) in enumerate(zip(self.projection_blocks, self.reassemble_blocks, strict=True)):
            prefix = None if prefix_tokens is None else prefix_tokens[i]
            processed.append(reassemble(projection(features[self.levels[i]], prefix)))
        fused: torch.Tensor | None = None
        for i, block in enumerate(self.fusion_blocks):
            fused = block(processed[len(processed) - 1 - i], fused)
        assert fused is not None  # at least one level (checked at construction)
        return fused


class DPTSegmentationHead(nn.Module):
    """conv3x3-BN-ReLU-dropout-conv1x1 (``head``), multilinear resizing to the input size
    (``align_corners=True``: for a factor of 2 the same as smp's ``scale_factor=2``), activation: smp's DPT
    head, N-D."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        activation: object = None,
        kernel_size: int = 3,
        spatial_dims: int = 3,
    ):
        super().__init__()
        self.head = nn.Sequential(
            conv(spatial_dims)(in_channels, in_channels, kernel_size, padding=kernel_size // 2, bias=False),
            batch_norm(spatial_dims)(in_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.1, inplace=False),
            conv(spatial_dims)(in_channels, out_channels, kernel_size=1),
        )
        self.activation = Activation(activation)
        self.mode = interpolation_mode("linear", spatial_dims)

    def forward(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        """``x (B, C, *decoder size)`` -> masks ``(B, out_channels, *size)`` (``size``: the input's spatial size)."""
        x = self.head(x)
        if x.shape[2:] != size:
            x = F.interpolate(x, size=size, mode=self.mode, align_corners=True)
        return self.activation(x)
