"""Output heads: a per-voxel segmentation head and a per-image classification head."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn as nn

from ..layers import Activation, adaptive_avg_pool, adaptive_max_pool, conv

__all__ = [
    "ClassificationHead",
    "SegmentationHead",
    "build_classification_head",
    "build_deep_supervision_heads",
    "decoder_levels",
    "mask_reduction",
]


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


def decoder_levels(decoder: nn.Module, owner: str) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """The decoder's ``(level_channels, level_reductions)``, finest first, or a ValueError naming ``owner``
    if the decoder has a single resolution level (no ``forward_levels``)."""
    channels = getattr(decoder, "level_channels", None)
    reductions = getattr(decoder, "level_reductions", None)
    if channels is None or reductions is None or not callable(getattr(decoder, "forward_levels", None)):
        raise ValueError(
            f"{owner}: its decoder {type(decoder).__name__} has a single resolution level (it exposes no "
            f"level_channels/level_reductions/forward_levels), so it has nothing to deep-supervise."
        )
    if len(channels) != len(reductions):
        raise ValueError(
            f"{owner}: decoder {type(decoder).__name__} has {len(channels)} level_channels but "
            f"{len(reductions)} level_reductions."
        )
    return tuple(channels), tuple(tuple(r) for r in reductions)


def mask_reduction(decoder: nn.Module, segmentation_head: nn.Module) -> tuple[int, ...]:
    """Per-axis reduction (w.r.t. the input) of the mask: the decoder's first level divided by the
    head's upsampling factor (all ones when the head brings the mask back to the input size)."""
    _, reductions = decoder_levels(decoder, type(decoder).__name__)
    factor: Sequence[float] = (1,) * len(reductions[0])
    for module in segmentation_head.modules():
        if isinstance(module, nn.Upsample) and module.scale_factor is not None:
            scale = module.scale_factor
            factor = scale if isinstance(scale, Sequence) else (scale,) * len(reductions[0])
    out = []
    for r, f in zip(reductions[0], factor, strict=True):
        ratio = r / f
        out.append(int(ratio) if ratio == int(ratio) else ratio)
    return tuple(out)


def build_deep_supervision_heads(
    decoder: nn.Module,
    levels: int | None,
    classes: int,
    activation: str | Callable[..., nn.Module] | None,
    spatial_dims: int,
    owner: str,
) -> nn.ModuleList:
    """One 1x1 :class:`SegmentationHead` (conv -> activation, no upsampling) per supervised decoder
    level beyond the first: levels ``1 .. levels - 1``, finest first.

    ``levels`` counts the masks returned in training mode, the full-resolution one included; ``None``
    takes every decoder level except the deepest (nnU-Net's choice: its coarsest output gets weight 0).
    Reads only the decoder's ``level_channels``.
    """
    channels, _ = decoder_levels(decoder, owner)
    available = len(channels)
    if levels is None:
        levels = available - 1
        if levels < 2:
            raise ValueError(
                f"{owner}: the decoder has {available} resolution level(s); deep supervision leaves out the "
                f"deepest by default, which leaves only the full-resolution mask. Use a deeper encoder, or pass "
                f"deep_supervision_levels={available} to supervise every level."
                if available >= 2
                else f"{owner}: the decoder has a single resolution level; deep supervision needs at least 2."
            )
    elif isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= available:
        raise ValueError(
            f"{owner}: deep_supervision_levels must be None (every level but the deepest) or an int in "
            f"2..{available} (the decoder's levels), got {levels!r}."
        )
    for level in range(1, levels):
        if channels[level] < 1:
            raise ValueError(f"{owner}: decoder level {level} has {channels[level]} channels; it cannot take a head.")
    return nn.ModuleList(
        SegmentationHead(channels[level], classes, kernel_size=1, activation=activation, spatial_dims=spatial_dims)
        for level in range(1, levels)
    )
