"""Output heads: a per-voxel segmentation head and a per-image classification head."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ..layers import Activation, adaptive_avg_pool, adaptive_max_pool, conv

__all__ = ["ClassificationHead", "SegmentationHead", "build_classification_head"]


class SegmentationHead(nn.Sequential):
    """conv (kernel ``kernel_size``) -> optional upsampling -> activation.

    ``upsampling`` is a scale factor (int or per-axis tuple); 1 means none.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        activation: str | Callable[..., nn.Module] | None = None,
        upsampling: int | tuple[int, ...] = 1,
        spatial_dims: int = 3,
    ):
        layer = conv(spatial_dims)(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        factor = (upsampling,) * spatial_dims if isinstance(upsampling, int) else tuple(upsampling)
        if any(f > 1 for f in factor):
            mode = "bilinear" if spatial_dims == 2 else "trilinear" if spatial_dims == 3 else "linear"
            upsample: nn.Module = nn.Upsample(scale_factor=factor, mode=mode, align_corners=True)
        else:
            upsample = nn.Identity()
        super().__init__(layer, upsample, Activation(activation))


class ClassificationHead(nn.Sequential):
    """Global pooling -> flatten -> dropout -> linear -> activation, on the deepest feature."""

    def __init__(
        self,
        in_channels: int,
        classes: int,
        pooling: str = "avg",
        dropout: float = 0.2,
        activation: str | Callable[..., nn.Module] | None = None,
        spatial_dims: int = 3,
    ):
        if pooling not in ("max", "avg"):
            raise ValueError(f"aux_params['pooling'] must be 'avg' or 'max', got {pooling!r}.")
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise ValueError(f"aux_params['classes'] must be a positive int, got {classes!r}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"aux_params['dropout'] must be in [0, 1), got {dropout!r}.")
        pool = (adaptive_avg_pool if pooling == "avg" else adaptive_max_pool)(spatial_dims)(1)
        drop = nn.Dropout(p=dropout, inplace=True) if dropout else nn.Identity()
        super().__init__(pool, nn.Flatten(), drop, nn.Linear(in_channels, classes, bias=True), Activation(activation))


_AUX_KEYS = ("classes", "pooling", "dropout", "activation")


def build_classification_head(
    aux_params: dict | None, in_channels: int, spatial_dims: int
) -> ClassificationHead | None:
    """The auxiliary classification head described by smp's ``aux_params`` dict, or ``None``."""
    if aux_params is None:
        return None
    if not isinstance(aux_params, dict):
        raise TypeError(f"aux_params must be a dict like {{'classes': 4}} or None, got {aux_params!r}.")
    unknown = sorted(set(aux_params) - set(_AUX_KEYS))
    if unknown or "classes" not in aux_params:
        raise ValueError(f"aux_params takes the keys {_AUX_KEYS} ('classes' required), got {sorted(aux_params)}.")
    return ClassificationHead(in_channels, spatial_dims=spatial_dims, **aux_params)
