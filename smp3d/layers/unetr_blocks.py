"""The convolutional blocks of UNETR and Swin UNETR (Hatamizadeh et al., 2021/2022), for any spatial_dims.

Layouts are those of MONAI's ``UnetResBlock``/``UnetBasicBlock``, ``UnetrUpBlock`` and ``UnetrPrUpBlock``
(children ``conv1``, ``norm1``, ``conv2``, ``norm2``, ``conv3``, ``norm3``; ``transp_conv``, ``conv_block``;
``transp_conv_init``, ``blocks``), except that every convolution is held directly where MONAI wraps it in a
``Convolution`` module (its key ``conv1.conv.weight`` is our ``conv1.weight``). The key maps of
:mod:`smp3d.decoders.monai_keys` translate between the two.

Convolutions have no bias (MONAI's ``get_conv_layer`` default); the activation is LeakyReLU(0.01).
Transposed convolutions have kernel = stride (a "patch" upsampling) and run as one matrix product plus a
reshuffle of the voxels (:class:`PatchConvTranspose`): the same result as ``nn.ConvTransposeNd``, faster on
CPU where the transposed-convolution kernels are slow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from .blocks import NormSpec, create_norm
from .factories import as_tuple, conv

__all__ = [
    "BasicConvBlock",
    "PatchConvTranspose",
    "ProjectionUpsample",
    "ResidualConvBlock",
    "UpBlock",
    "conv_block",
    "patch_conv_transpose",
]


def _activation() -> nn.Module:
    return nn.LeakyReLU(0.01, inplace=True)


def _same_padding(kernel: tuple[int, ...]) -> tuple[int, ...]:
    return tuple((k - 1) // 2 for k in kernel)


class ResidualConvBlock(nn.Module):
    """conv-norm-act -> conv-norm, plus the input (through a 1x1 conv + norm when the channels or the stride
    change), then the activation: MONAI's ``UnetResBlock``.

    Args:
        in_channels, out_channels: channels of the input and the output.
        kernel_size: kernel of ``conv1``/``conv2`` (int or per axis; odd).
        stride: stride of ``conv1`` (and of the 1x1 ``conv3``).
        use_norm: normalization (``"instancenorm"`` = MONAI's ``"instance"``: no affine parameters).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        use_norm: NormSpec = "instancenorm",
        spatial_dims: int = 3,
    ):
        super().__init__()
        kernel = as_tuple(kernel_size, spatial_dims, "kernel_size")
        stride = as_tuple(stride, spatial_dims, "stride")
        conv_nd = conv(spatial_dims)
        pad = _same_padding(kernel)
        self.conv1 = conv_nd(in_channels, out_channels, kernel, stride=stride, padding=pad, bias=False)
        self.conv2 = conv_nd(out_channels, out_channels, kernel, padding=pad, bias=False)
        self.lrelu = _activation()
        self.norm1 = create_norm(use_norm, out_channels, spatial_dims)
        self.norm2 = create_norm(use_norm, out_channels, spatial_dims)
        if in_channels != out_channels or any(s != 1 for s in stride):
            self.conv3 = conv_nd(in_channels, out_channels, 1, stride=stride, bias=False)
            self.norm3 = create_norm(use_norm, out_channels, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.lrelu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        if hasattr(self, "conv3"):
            residual = self.norm3(self.conv3(residual))
        out += residual  # in place: `out` is the norm's fresh output, which its backward does not read
        return self.lrelu(out)


class BasicConvBlock(nn.Module):
    """conv-norm-act -> conv-norm-act: MONAI's ``UnetBasicBlock`` (``res_block=False``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        use_norm: NormSpec = "instancenorm",
        spatial_dims: int = 3,
    ):
        super().__init__()
        kernel = as_tuple(kernel_size, spatial_dims, "kernel_size")
        conv_nd = conv(spatial_dims)
        pad = _same_padding(kernel)
        self.conv1 = conv_nd(in_channels, out_channels, kernel, stride=stride, padding=pad, bias=False)
        self.conv2 = conv_nd(out_channels, out_channels, kernel, padding=pad, bias=False)
        self.lrelu = _activation()
        self.norm1 = create_norm(use_norm, out_channels, spatial_dims)
        self.norm2 = create_norm(use_norm, out_channels, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lrelu(self.norm1(self.conv1(x)))
        return self.lrelu(self.norm2(self.conv2(x)))


def conv_block(
    in_channels: int,
    out_channels: int,
    residual: bool = True,
    use_norm: NormSpec = "instancenorm",
    spatial_dims: int = 3,
    kernel_size: int | Sequence[int] = 3,
) -> nn.Module:
    """A :class:`ResidualConvBlock` (``residual=True``, MONAI's ``res_block=True``) or a :class:`BasicConvBlock`."""
    cls = ResidualConvBlock if residual else BasicConvBlock
    return cls(in_channels, out_channels, kernel_size, 1, use_norm, spatial_dims)


def channels_to_last(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, *S, C)`` as a view (positive axes: ONNX's TorchScript exporter mistranslates
    ``movedim`` with negative ones)."""
    return x.permute(0, *range(2, x.dim()), 1)


def channels_to_first(x: torch.Tensor) -> torch.Tensor:
    """``(B, *S, C)`` -> ``(B, C, *S)`` as a view."""
    return x.permute(0, x.dim() - 1, *range(1, x.dim() - 1))


def _patch_conv_transpose_forward(x: torch.Tensor, weight: torch.Tensor, scale: tuple[int, ...]) -> torch.Tensor:
    """``conv_transpose(x, weight, stride=scale)`` for a kernel equal to its stride, without bias.

    Each input voxel writes its own ``scale`` block of output voxels, so the whole operation is
    ``(B * voxels, C_in) @ (C_in, C_out * prod(scale))`` followed by interleaving the blocks.
    """
    batch, in_channels, *sizes = x.shape
    out_channels = weight.shape[1]
    nd = len(sizes)
    # (B, C_in, *S) -> (B * S, C_in): a view when x is channels-last, one copy otherwise
    tokens = channels_to_last(x).reshape(-1, in_channels)
    # weight (C_in, C_out, *k) -> (C_in, *k, C_out): each token writes its block with channels last
    y = tokens @ channels_to_last(weight).reshape(in_channels, -1)
    y = y.view(batch, *sizes, *scale, out_channels)
    # (B, S1..Sn, k1..kn, C) -> (B, S1, k1, ..., Sn, kn, C) -> (B, S1*k1, ..., C), returned as a channels-last view
    order = [0]
    for axis in range(nd):
        order += [1 + axis, 1 + nd + axis]
    order.append(2 * nd + 1)
    y = y.permute(order).reshape(batch, *(s * k for s, k in zip(sizes, scale, strict=True)), out_channels)
    return channels_to_first(y)


class PatchConvTranspose(nn.Module):
    """A transposed convolution whose kernel equals its stride (no bias), keys and weight shape of
    ``nn.ConvTransposeNd``: ``weight`` of shape ``(in_channels, out_channels, *scale)``.

    ``forward`` is one matrix product and a reshuffle (see module docs); a scale of all ones is a 1x1
    projection.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: Sequence[int], spatial_dims: int = 3):
        super().__init__()
        self.scale = tuple(int(s) for s in scale)
        if len(self.scale) != spatial_dims or any(s < 1 for s in self.scale):
            raise ValueError(f"scale must be {spatial_dims} positive ints (one per axis), got {tuple(scale)!r}.")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels, *self.scale))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.ConvTransposeNd's default: kaiming-uniform, a = sqrt(5), fan-in from weight.size(1) * prod(scale)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _patch_conv_transpose_forward(x, self.weight, self.scale)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, scale={self.scale}"


def patch_conv_transpose(in_channels: int, out_channels: int, scale: Sequence[int], spatial_dims: int) -> nn.Module:
    """A :class:`PatchConvTranspose` upsampling by ``scale`` per axis (a 1x1 projection for all ones)."""
    return PatchConvTranspose(in_channels, out_channels, scale, spatial_dims)


class UpBlock(nn.Module):
    """Transposed conv (kernel = stride = ``scale``) -> concat skip -> conv block: MONAI's ``UnetrUpBlock``.

    ``conv_block`` takes ``2 * out_channels`` (the upsampled map and the skip, which must have ``out_channels``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: Sequence[int],
        residual: bool = True,
        use_norm: NormSpec = "instancenorm",
        spatial_dims: int = 3,
    ):
        super().__init__()
        self.transp_conv = patch_conv_transpose(in_channels, out_channels, scale, spatial_dims)
        self.conv_block = conv_block(2 * out_channels, out_channels, residual, use_norm, spatial_dims)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.transp_conv(x)
        return self.conv_block(torch.cat([x, skip], dim=1))


def upsampling_steps(factor: Sequence[int]) -> list[tuple[int, ...]]:
    """Split a per-axis upsampling ``factor`` into steps of 2 (MONAI's UNETR upsamples by 2 per step).

    An axis whose remaining factor is odd takes it whole in one step; an axis already done stays at 1.
    ``(8, 8, 8)`` -> three steps of ``(2, 2, 2)``; ``(8, 8, 2)`` -> ``(2, 2, 2), (2, 2, 1), (2, 2, 1)``;
    all ones -> no step.
    """
    remaining = [int(f) for f in factor]
    steps: list[tuple[int, ...]] = []
    while any(r > 1 for r in remaining):
        step = tuple(1 if r == 1 else 2 if r % 2 == 0 else r for r in remaining)
        remaining = [r // s for r, s in zip(remaining, step, strict=True)]
        steps.append(step)
    return steps


class ProjectionUpsample(nn.Module):
    """A feature brought to a finer level: MONAI's ``UnetrPrUpBlock``.

    ``transp_conv_init`` projects ``in_channels`` to ``out_channels`` with the first upsampling step (a 1x1
    projection when ``factor`` is all ones); each further step is a ``blocks`` item: a transposed conv, then
    (``with_conv=True``, MONAI's ``conv_block=True``) a conv block, as an ``nn.Sequential`` (children 0, 1).

    Args:
        factor: per-axis upsampling from the feature to the level (e.g. 8 for a UNETR skip at 1/2 resolution
            from a ViT at 1/16); split in steps of 2 by :func:`upsampling_steps`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        factor: Sequence[int],
        with_conv: bool = True,
        residual: bool = True,
        use_norm: NormSpec = "instancenorm",
        spatial_dims: int = 3,
    ):
        super().__init__()
        steps = upsampling_steps(factor) or [(1,) * spatial_dims]
        self.transp_conv_init = patch_conv_transpose(in_channels, out_channels, steps[0], spatial_dims)
        self.blocks = nn.ModuleList()
        for step in steps[1:]:
            up = patch_conv_transpose(out_channels, out_channels, step, spatial_dims)
            if with_conv:
                block = conv_block(out_channels, out_channels, residual, use_norm, spatial_dims)
                self.blocks.append(nn.Sequential(up, block))
            else:
                self.blocks.append(up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transp_conv_init(x)
        for block in self.blocks:
            x = block(x)
        return x
