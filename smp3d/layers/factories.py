"""Layers chosen by ``spatial_dims``: one table, so every model has a single code path for 2D and 3D.

A 3D layer is the 2D layer with one more trailing spatial axis (depth), so a kernel of shape
``(O, I, kh, kw)`` in 2D is ``(O, I, kh, kw, kd)`` in 3D and state-dict keys do not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from .conv import Conv1d, Conv2d, Conv3d

__all__ = [
    "SPATIAL_DIMS",
    "adaptive_avg_pool",
    "adaptive_max_pool",
    "as_tuple",
    "avg_pool",
    "batch_norm",
    "channels_last_format",
    "check_spatial_dims",
    "conv",
    "conv_transpose",
    "dropout",
    "instance_norm",
    "interpolation_mode",
    "layer_type",
    "max_pool",
    "strided_pool",
]

SPATIAL_DIMS = (1, 2, 3)

_LAYERS: dict[str, tuple[type[nn.Module], type[nn.Module], type[nn.Module]]] = {
    "conv": (Conv1d, Conv2d, Conv3d),  # torch's, with a faster CPU path (see .conv)
    "conv_transpose": (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d),
    "batch_norm": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
    "instance_norm": (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d),
    "max_pool": (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d),
    "avg_pool": (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d),
    "adaptive_avg_pool": (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
    "adaptive_max_pool": (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d),
    "dropout": (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d),
}


def check_spatial_dims(spatial_dims: Any) -> int:
    """Return ``spatial_dims`` if it is 1, 2 or 3; otherwise raise a ValueError that says so."""
    if isinstance(spatial_dims, bool) or spatial_dims not in SPATIAL_DIMS:
        raise ValueError(
            f"spatial_dims must be 2 (images, (B, C, H, W)) or 3 (volumes, (B, C, H, W, D)); "
            f"1 is accepted for signals. Got {spatial_dims!r}."
        )
    return int(spatial_dims)


def layer_type(kind: str, spatial_dims: int) -> type[nn.Module]:
    """The torch layer class of ``kind`` (e.g. ``"conv"``, ``"batch_norm"``) for ``spatial_dims``."""
    try:
        classes = _LAYERS[kind]
    except KeyError:
        raise ValueError(f"Unknown layer kind {kind!r}; expected one of {sorted(_LAYERS)}.") from None
    return classes[check_spatial_dims(spatial_dims) - 1]


def channels_last_format(spatial_dims: int) -> torch.memory_format | None:
    """torch's channels-last memory format for ``spatial_dims`` axes: ``channels_last`` (2D),
    ``channels_last_3d`` (3D), or None where torch has none."""
    return {2: torch.channels_last, 3: torch.channels_last_3d}.get(spatial_dims)


def conv(spatial_dims: int) -> type[nn.Module]:
    return layer_type("conv", spatial_dims)


def conv_transpose(spatial_dims: int) -> type[nn.Module]:
    return layer_type("conv_transpose", spatial_dims)


def batch_norm(spatial_dims: int) -> type[nn.Module]:
    return layer_type("batch_norm", spatial_dims)


def instance_norm(spatial_dims: int) -> type[nn.Module]:
    return layer_type("instance_norm", spatial_dims)


def max_pool(spatial_dims: int) -> type[nn.Module]:
    return layer_type("max_pool", spatial_dims)


def avg_pool(spatial_dims: int) -> type[nn.Module]:
    return layer_type("avg_pool", spatial_dims)


def adaptive_avg_pool(spatial_dims: int) -> type[nn.Module]:
    return layer_type("adaptive_avg_pool", spatial_dims)


def adaptive_max_pool(spatial_dims: int) -> type[nn.Module]:
    return layer_type("adaptive_max_pool", spatial_dims)


def dropout(spatial_dims: int) -> type[nn.Module]:
    return layer_type("dropout", spatial_dims)


def strided_pool(
    kind: str,
    kernel_size: int,
    stride: int | Sequence[int],
    padding: int = 0,
    spatial_dims: int = 3,
    **kwargs: Any,
) -> nn.Module:
    """A ``"max"`` or ``"avg"`` pool that pools only along the axes it strides.

    Along an axis with stride 1 the kernel is 1 and the padding 0, so that axis keeps its size
    and its values (a per-axis stride of 1 means "leave this axis alone", e.g. thick slices);
    along the other axes the layer is exactly ``kernel_size``/``padding``, so isotropic strides
    give the 2D layer unchanged.
    """
    stride = as_tuple(stride, spatial_dims, "stride")
    kernel = tuple(kernel_size if s > 1 else 1 for s in stride)
    pad = tuple(padding if s > 1 else 0 for s in stride)
    if kind not in ("max", "avg"):
        raise ValueError(f"Unknown pooling kind {kind!r}; expected 'max' or 'avg'.")
    return layer_type(f"{kind}_pool", spatial_dims)(kernel, stride=stride, padding=pad, **kwargs)


def as_tuple(value: int | Sequence[int], spatial_dims: int, name: str = "value") -> tuple[int, ...]:
    """Broadcast an int to ``spatial_dims`` axes, or check that a sequence has one entry per axis."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a tuple of {spatial_dims} ints, got {value!r}.")
    if isinstance(value, int):
        return (value,) * spatial_dims
    if (
        isinstance(value, Sequence)
        and len(value) == spatial_dims
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return tuple(value)
    raise ValueError(f"{name} must be an int or a tuple of {spatial_dims} ints (one per spatial axis), got {value!r}.")


# Interpolation modes of F.interpolate by spatial_dims. The 2D names users know from smp
# ("bilinear", "bicubic") are accepted everywhere and mapped to their N-D meaning.
_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}
_MODES = ("nearest", "nearest-exact", "area", "linear", "bilinear", "trilinear", "bicubic")


def interpolation_mode(mode: str, spatial_dims: int) -> str:
    """Translate an interpolation mode to the one ``F.interpolate`` accepts for ``spatial_dims``.

    ``"linear"``, ``"bilinear"`` and ``"trilinear"`` all mean (multi)linear interpolation;
    ``"bicubic"`` exists only in 2D.
    """
    spatial_dims = check_spatial_dims(spatial_dims)
    if mode not in _MODES:
        raise ValueError(f"Unknown interpolation mode {mode!r}; expected one of {list(_MODES)}.")
    if mode in ("linear", "bilinear", "trilinear"):
        return _LINEAR[spatial_dims]
    if mode == "bicubic" and spatial_dims != 2:
        raise ValueError(
            f"Interpolation mode 'bicubic' exists only in 2D (torch has no {spatial_dims}D cubic "
            f"interpolation); use 'trilinear' or 'nearest' with spatial_dims={spatial_dims}."
        )
    return mode
