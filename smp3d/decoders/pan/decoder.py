"""The PAN decoder (Li et al., 2018): Feature Pyramid Attention + Global Attention Upsample, N-D.

- **FPA** on the deepest feature: a U-shaped pyramid of three max-pool halvings with 7/5/3
  convolutions to one channel gives a per-voxel attention map that multiplies a 1x1 projection
  of the feature; a global-pooling branch is added.
- **GAU** for each finer level down to level 2 (reduction 4 in 2D): the coarser map, resized to
  the level's size, plus the level's 3x3 projection weighted by a channel attention computed from
  the coarser map.

The batch norms of the global-pooling branches and of the FPA's halved pyramid train on a batch of
one sample even where they see one value per channel (smp raises there): they then normalize
with their running statistics (:class:`~smp3d.layers.SingleCellBatchNorm`).

Every resize goes to the size of an actual tensor, never by an assumed factor. The FPA halves an
axis only while it has at least 2 voxels; shorter axes (thick-slice volumes, anisotropic strides)
stay at 1 instead of vanishing, so the decoder works for any feature size, down to 1 voxel per
axis. Where smp's FPA works (every axis of the deepest feature at least 8) the result is the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers import adaptive_avg_pool, batch_norm, conv, interpolation_mode, single_cell_safe

__all__ = ["ConvBNAct", "FPABlock", "GAUBlock", "HalvingMaxPool", "PANDecoder"]

_LINEAR = ("linear", "bilinear", "trilinear")
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
#: GAU blocks the TorchScript forward of :class:`PANDecoder` spells out (``gau1`` .. ``gau8``).
MAX_SCRIPTED_GAUS = 8


def _resize(x: torch.Tensor, size: list[int], mode: str, align_corners: bool | None) -> torch.Tensor:
    if list(x.shape[2:]) == list(size):
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=align_corners)


class ConvBNAct(nn.Module):
    """conv (with bias, as in smp's PAN) -> BatchNorm -> optional ReLU; children ``conv``, ``bn``, ``activation``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        add_relu: bool = True,
        spatial_dims: int = 3,
    ):
        super().__init__()
        self.conv = conv(spatial_dims)(in_channels, out_channels, kernel_size, padding=padding, bias=True)
        self.bn = batch_norm(spatial_dims)(out_channels)
        self.activation = nn.ReLU(inplace=True) if add_relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv.in_channels == 1:  # FPA's single-channel pyramid: see _one_channel_conv
            if torch.jit.is_scripting():  # (TorchScript takes no nn.Module argument: the same, inline)
                weight = self.conv.weight.clone(memory_format=torch.contiguous_format)
                return self.activation(self.bn(self.conv._conv_forward(x, weight, self.conv.bias)))
            return self.activation(self.bn(_one_channel_conv(self.conv, x)))
        return self.activation(self.bn(self.conv(x)))


def _one_channel_conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """FPA's 1-channel convolutions, with the kernel in the default layout.

    On the CPU, oneDNN's bf16 convolution reads uninitialised memory, or crashes, when a 1-input-channel
    kernel is in channels_last_3d layout and the input is a single voxel. That is what
    ``model.to(memory_format=torch.channels_last_3d)`` gives for a 32^3 input, whose deepest feature is 1^3
    (measured with torch 2.15). A 1-channel kernel holds the same values in either layout, so re-laying it
    out costs one tiny copy and changes nothing else.
    """
    weight = conv.weight.clone(memory_format=torch.contiguous_format)
    return conv._conv_forward(x, weight, conv.bias)


def _single_cell_safe_norms(part: nn.Module, spatial_dims: int) -> None:
    """Make the batch norms of a pooled or halved branch train on one value per channel (batch 1);
    see :class:`~smp3d.layers.SingleCellBatchNorm`."""
    for block in part.modules():
        if isinstance(block, ConvBNAct):
            block.bn = single_cell_safe(block.bn, spatial_dims)


class HalvingMaxPool(nn.Module):
    """Max pool of kernel and stride 2 along every axis with at least 2 voxels; axes of size 1 are kept."""

    def __init__(self, spatial_dims: int = 3):
        super().__init__()
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # (TorchScript reads no module-level dict of functions)
            kernel_list = [2 if size >= 2 else 1 for size in x.shape[2:]]
            if self.spatial_dims == 3:
                return F.max_pool3d(x, kernel_list, kernel_list)
            if self.spatial_dims == 2:
                return F.max_pool2d(x, kernel_list, kernel_list)
            return F.max_pool1d(x, kernel_list, kernel_list)
        kernel = tuple(2 if size >= 2 else 1 for size in x.shape[2:])
        return _MAX_POOL[self.spatial_dims](x, kernel, kernel)


class FPABlock(nn.Module):
    """Feature Pyramid Attention on the deepest feature; output ``out_channels`` at the input's size."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3):
        super().__init__()
        self.mode = interpolation_mode("linear", spatial_dims)
        self.branch1 = nn.Sequential(
            adaptive_avg_pool(spatial_dims)(1), ConvBNAct(in_channels, out_channels, 1, spatial_dims=spatial_dims)
        )
        self.mid = nn.Sequential(ConvBNAct(in_channels, out_channels, 1, spatial_dims=spatial_dims))
        self.down1 = nn.Sequential(
            HalvingMaxPool(spatial_dims), ConvBNAct(in_channels, 1, 7, padding=3, spatial_dims=spatial_dims)
        )
        self.down2 = nn.Sequential(
            HalvingMaxPool(spatial_dims), ConvBNAct(1, 1, 5, padding=2, spatial_dims=spatial_dims)
        )
        self.down3 = nn.Sequential(
            HalvingMaxPool(spatial_dims),
            ConvBNAct(1, 1, 3, padding=1, spatial_dims=spatial_dims),
            ConvBNAct(1, 1, 3, padding=1, spatial_dims=spatial_dims),
        )
        self.conv2 = ConvBNAct(1, 1, 5, padding=2, spatial_dims=spatial_dims)
        self.conv1 = ConvBNAct(1, 1, 7, padding=3, spatial_dims=spatial_dims)
        for part in (self.branch1, self.down1, self.down2, self.down3, self.conv2, self.conv1):
            _single_cell_safe_norms(part, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        # (B, C, 1, ...): linear resizing of a single voxel with aligned corners is a plain copy,
        # so broadcasting it in the final sum gives the same values without materializing it.
        global_context = self.branch1(x)
        middle = self.mid(x)
        x1 = self.down1(x)
        x2 = self.down2(x1)
        x3 = self.down3(x2)
        attention = self.conv2(x2) + _resize(x3, x2.shape[2:], self.mode, True)
        attention = self.conv1(x1) + _resize(attention, x1.shape[2:], self.mode, True)
        attention = _resize(attention, size, self.mode, True)
        return attention * middle + global_context


class GAUBlock(nn.Module):
    """Global Attention Upsample: ``resize(y) + conv3x3(x) * sigmoid(bn(conv1x1(avgpool(y))))``."""

    def __init__(self, in_channels: int, out_channels: int, interpolation: str = "bilinear", spatial_dims: int = 3):
        super().__init__()
        self.interpolation_mode = interpolation_mode(interpolation, spatial_dims)
        self.align_corners = True if self.interpolation_mode in _LINEAR else None
        self.conv1 = nn.Sequential(
            adaptive_avg_pool(spatial_dims)(1),
            ConvBNAct(out_channels, out_channels, 1, add_relu=False, spatial_dims=spatial_dims),
            nn.Sigmoid(),
        )
        self.conv2 = ConvBNAct(in_channels, out_channels, 3, padding=1, spatial_dims=spatial_dims)
        _single_cell_safe_norms(self.conv1, spatial_dims)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x``: the finer (low-level) feature; ``y``: the coarser decoded map."""
        y_up = _resize(y, x.shape[2:], self.interpolation_mode, self.align_corners)
        return y_up + self.conv2(x) * self.conv1(y)


class PANDecoder(nn.Module):
    """FPA on the deepest feature, then one GAU per level from ``depth - 1`` down to 2.

    Args:
        encoder_channels: the encoder's ``out_channels`` (item 0 is the input); at least 4 items.
        reductions: the encoder's ``reductions`` (read for the levels' metadata only).
        decoder_channels: channels of every decoder map.
        interpolation: resize mode of the GAU blocks (the FPA always resizes linearly).

    The GAU of level ``i`` is the attribute ``gau{i - 1}`` (smp's names); the output has the size of
    encoder feature 2.

    Levels (for deep supervision), finest first: the output of every GAU (levels 2 .. depth - 1),
    then the FPA's map of the deepest feature.
    """

    OUTPUT_LEVEL = 2

    def __init__(
        self,
        encoder_channels: Sequence[int],
        reductions: Sequence[Sequence[int]],
        decoder_channels: int = 32,
        interpolation: str = "bilinear",
        spatial_dims: int = 3,
    ):
        super().__init__()
        depth = len(encoder_channels) - 1
        if depth < self.OUTPUT_LEVEL + 1:
            raise ValueError(
                f"PANDecoder needs encoder_depth >= {self.OUTPUT_LEVEL + 1} (an FPA level above the output "
                f"level {self.OUTPUT_LEVEL}), got {len(encoder_channels)} channels {tuple(encoder_channels)}."
            )
        self.fpa = FPABlock(encoder_channels[-1], decoder_channels, spatial_dims)
        self.gau_levels = tuple(range(depth - 1, self.OUTPUT_LEVEL - 1, -1))
        for level in self.gau_levels:
            block = GAUBlock(encoder_channels[level], decoder_channels, interpolation, spatial_dims)
            self.add_module(f"gau{level - 1}", block)
        if len(self.gau_levels) > MAX_SCRIPTED_GAUS:
            self._is_torch_scriptable = False
            self._torch_script_refusal = (
                f"its scripted forward spells out at most {MAX_SCRIPTED_GAUS} GAU blocks (encoder_depth <= "
                f"{MAX_SCRIPTED_GAUS + self.OUTPUT_LEVEL}), this one has {len(self.gau_levels)}"
            )
        self.level_channels = (decoder_channels,) * (depth + 1 - self.OUTPUT_LEVEL)
        self.level_reductions = tuple(tuple(r) for r in reductions[self.OUTPUT_LEVEL :])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.fpa(features[-1])
        if torch.jit.is_scripting():
            return self._scripted_gaus(features, out)
        for level in self.gau_levels:
            out = getattr(self, f"gau{level - 1}")(features[level], out)
        return out

    def _scripted_gaus(self, features: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        # The GAUs spelled out, deepest first (TorchScript resolves hasattr at compile time, and takes no
        # getattr by a computed name); gau{k} reads level k + 1. MAX_SCRIPTED_GAUS bounds the depth.
        if hasattr(self, "gau8"):
            out = self.gau8(features[9], out)
        if hasattr(self, "gau7"):
            out = self.gau7(features[8], out)
        if hasattr(self, "gau6"):
            out = self.gau6(features[7], out)
        if hasattr(self, "gau5"):
            out = self.gau5(features[6], out)
        if hasattr(self, "gau4"):
            out = self.gau4(features[5], out)
        if hasattr(self, "gau3"):
            out = self.gau3(features[4], out)
        if hasattr(self, "gau2"):
            out = self.gau2(features[3], out)
        if hasattr(self, "gau1"):
            out = self.gau1(features[2], out)
        return out

    def forward_levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The output of every GAU and the FPA's map, finest first (item 0 is ``forward``'s output)."""
        out = self.fpa(features[-1])
        levels = [out]
        for level in self.gau_levels:
            out = getattr(self, f"gau{level - 1}")(features[level], out)
            levels.append(out)
        levels.reverse()
        return levels
