"""nnU-Net's convolution unit, for 2D and 3D: conv -> InstanceNorm(affine) -> LeakyReLU(0.01).

The residual encoder, the plain encoder's nnU-Net layout and the nnU-Net-style decoder all use
it, so the three agree on key names (``conv``, ``norm``, ``act``) and on "same" padding per axis.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch.nn as nn

from .factories import as_tuple, conv, instance_norm

__all__ = ["check_kernel_sizes", "conv_norm_act"]


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int] = 3,
    stride: int | Sequence[int] = 1,
    spatial_dims: int = 3,
    bias: bool = True,
    activation: bool = True,
) -> nn.Sequential:
    """``conv`` (odd kernel per axis, padding ``(k - 1) // 2``) -> ``norm`` -> ``act`` (when ``activation``).

    nnU-Net's plans keep the convolution bias even before the norm (``conv_bias: true``).
    """
    kernel = as_tuple(kernel_size, spatial_dims, "kernel_size")
    layers: dict[str, nn.Module] = {
        "conv": conv(spatial_dims)(
            in_channels,
            out_channels,
            kernel,
            stride=as_tuple(stride, spatial_dims, "stride"),
            padding=tuple((k - 1) // 2 for k in kernel),
            bias=bias,
        ),
        "norm": instance_norm(spatial_dims)(out_channels, eps=1e-5, affine=True),
    }
    if activation:
        layers["act"] = nn.LeakyReLU(0.01, inplace=True)
    return nn.Sequential(OrderedDict(layers))


def check_kernel_sizes(
    kernel_sizes: int | Sequence[int | Sequence[int]] | None, depth: int, spatial_dims: int, name: str
) -> tuple[tuple[int, ...], ...]:
    """One odd kernel size per stage and axis: ``None`` (3 everywhere), an int, or ``depth`` items
    (each an int or a per-axis tuple, e.g. ``((1, 3, 3), (1, 3, 3), 3, 3)`` for thick slices)."""
    if kernel_sizes is None:
        kernel_sizes = 3
    if isinstance(kernel_sizes, int) and not isinstance(kernel_sizes, bool):
        kernel_sizes = [kernel_sizes] * depth
    if isinstance(kernel_sizes, (str, bytes)) or not isinstance(kernel_sizes, Sequence) or len(kernel_sizes) != depth:
        raise ValueError(
            f"{name}: kernel_sizes must be an int or {depth} items (one per stage, each an int or a tuple of "
            f"{spatial_dims} ints), got {kernel_sizes!r}."
        )
    resolved = []
    for stage, item in enumerate(kernel_sizes, start=1):
        kernel = as_tuple(item, spatial_dims, f"{name}: kernel_sizes item {stage}")
        if not all(k >= 1 and k % 2 == 1 for k in kernel):
            raise ValueError(
                f"{name}: kernel_sizes item {stage} is {item!r}; kernels must be odd positive ints (1, 3, 5, ...) "
                f"so that 'same' padding keeps the size."
            )
        resolved.append(kernel)
    return tuple(resolved)
