"""Checks of model inputs and constructor arguments, with messages that say what was expected."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["check_classes", "check_input", "padded_size"]

_LAYOUTS = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, H, W, D)"}


def padded_size(size: Sequence[int], multiple: Sequence[int]) -> tuple[int, ...]:
    """The smallest size >= ``size`` divisible by ``multiple``, per axis."""
    return tuple(-(-s // m) * m for s, m in zip(size, multiple, strict=True))


def check_input(
    x: Any,
    spatial_dims: int,
    in_channels: int,
    multiple: Sequence[int] | None = None,
    owner: str = "The model",
) -> None:
    """Raise a clear error unless ``x`` is ``(B, in_channels, *spatial)`` with ``spatial_dims`` axes.

    With ``multiple`` (per-axis), the spatial sizes must also be divisible by it.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner} expects a torch.Tensor, got {type(x).__name__}.")
    layout = _LAYOUTS.get(spatial_dims, f"(B, C, {spatial_dims} spatial axes)")
    if x.ndim != spatial_dims + 2:
        hint = ""
        if x.ndim == spatial_dims + 1:
            hint = " Add the batch axis, e.g. x.unsqueeze(0)."
        if x.ndim == 4 and spatial_dims == 3:
            hint += " For 2D images, build the model with spatial_dims=2."
        elif x.ndim == 5 and spatial_dims == 2:
            hint = " For volumes, build the model with spatial_dims=3 (the default)."
        raise ValueError(
            f"{owner} (spatial_dims={spatial_dims}) expects a {spatial_dims + 2}D input {layout}, "
            f"got a {x.ndim}D tensor of shape {tuple(x.shape)}.{hint}"
        )
    if x.shape[1] != in_channels:
        hint = ""
        if x.shape[-1] == in_channels:
            hint = " The channels look like the last axis: move them with x.movedim(-1, 1)."
        raise ValueError(
            f"{owner} expects {in_channels} input channel(s) on axis 1 of {layout}, got {x.shape[1]} "
            f"(input shape {tuple(x.shape)}).{hint}"
        )
    if multiple is not None:
        size = tuple(x.shape[2:])
        if any(s % m for s, m in zip(size, multiple, strict=True)):
            raise ValueError(
                f"{owner}: input spatial size {size} is not divisible by the encoder's total reduction "
                f"{tuple(multiple)} (per axis). Pad the input to e.g. {padded_size(size, multiple)} or "
                f"change `strides`."
            )


def check_classes(classes: Any) -> int:
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ValueError(f"classes must be a positive int (number of output channels), got {classes!r}.")
    return classes
