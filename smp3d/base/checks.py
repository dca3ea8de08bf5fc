"""Checks of model inputs and constructor arguments, with messages that say what was expected."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "check_classes",
    "check_input",
    "check_input_matches",
    "explain_batch_norm_error",
    "padded_size",
]

_LAYOUTS = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, H, W, D)"}
_AXES = {1: ("L",), 2: ("H", "W"), 3: ("H", "W", "D")}
# Dtypes that torch.autocast casts to its own: under autocast any of them may meet any float model.
_AUTOCAST_INPUTS = (torch.float32, torch.float16, torch.bfloat16)
_CONVERSIONS = {
    torch.float32: "float()",
    torch.float64: "double()",
    torch.float16: "half()",
    torch.bfloat16: "bfloat16()",
}
# The start of torch's error when batch norm in training mode gets one value per channel.
_SINGLE_VALUE_BATCH_NORM = "Expected more than 1 value per channel when training"


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
    empty = [axis for axis, size in enumerate(x.shape[2:]) if size == 0]
    if empty:
        names = _AXES.get(spatial_dims, ())
        which = ", ".join(f"axis {axis + 2}" + (f" ({names[axis]})" if axis < len(names) else "") for axis in empty)
        raise ValueError(
            f"{owner} got an input of shape {tuple(x.shape)}: spatial {which} is empty (size 0). "
            f"Every spatial axis of {layout} needs at least one voxel."
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


def check_input_matches(x: torch.Tensor, parameter: torch.Tensor | None, owner: str = "The model") -> None:
    """Raise a clear error unless ``x`` can meet a model whose parameters are like ``parameter``.

    The input must be on the parameter's device, and have its dtype; under ``torch.autocast`` (for the
    input's device type) float32/float16/bfloat16 inputs are all accepted, as autocast casts them.
    Only metadata is read: no host sync, nothing for a traced graph.
    """
    if parameter is None:
        return
    if x.device != parameter.device:
        raise ValueError(
            f"{owner}'s parameters are on {parameter.device} but the input is on {x.device}. Move the input "
            f"with x.to({str(parameter.device)!r}) or the model with model.to({str(x.device)!r})."
        )
    if x.dtype == parameter.dtype or not parameter.is_floating_point():
        return
    if x.dtype in _AUTOCAST_INPUTS and parameter.dtype in _AUTOCAST_INPUTS and _autocast_enabled(x.device.type):
        return
    convert = _CONVERSIONS.get(parameter.dtype, f"to({parameter.dtype})")
    if not x.is_floating_point():
        fix = f"Convert the input with x.{convert}."
    else:
        convert_model = _CONVERSIONS.get(x.dtype, f"to({x.dtype})")
        fix = (
            f"Convert the input with x.{convert}, or the model with model.{convert_model}, "
            "or run it under torch.autocast (which takes float32, float16 and bfloat16 inputs)."
        )
    raise TypeError(f"{owner}'s parameters are {parameter.dtype} but the input is {x.dtype}. {fix}")


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (e.g. meta)
        return False


def explain_batch_norm_error(
    error: ValueError, x: Any, reductions: Sequence[Sequence[int]], owner: str = "The model"
) -> ValueError | None:
    """A one-line error for torch's "Expected more than 1 value per channel when training", raised by
    a batch norm in training mode on one value per channel; ``None`` for any other error.

    ``x`` is the model's input and ``reductions`` the encoder's per-axis reductions, to tell the
    user how big the deepest feature is and what to change.
    """
    if not str(error).startswith(_SINGLE_VALUE_BATCH_NORM) or not isinstance(x, torch.Tensor) or x.ndim < 3:
        return None
    size = tuple(x.shape[2:])
    deepest = tuple(reductions[-1])
    if len(deepest) != len(size):
        return None
    # ceil: what strided convolutions give; a pooling encoder may round down further
    feature = tuple(-(-s // r) for s, r in zip(size, deepest, strict=True))
    batch = x.shape[0]
    norms = "or a norm that needs no batch statistics (instance, group or layer norm), or freeze it (eval mode)"
    if math.prod(feature) == 1:
        bigger = tuple(2 * r for r in deepest)
        return ValueError(
            f"{owner} cannot train on a batch of {batch} of size {size}: its deepest encoder feature is "
            f"{feature} voxel(s) (reduction {deepest}), so batch norm sees 1 value per channel ({error}). "
            f"Use a larger patch (at least {bigger}), batch size >= 2, a smaller encoder_depth or smaller "
            f"`strides`, {norms}."
        )
    return ValueError(
        f"{owner} cannot train on a batch of {batch} of size {size}: a batch norm after a layer that pools to "
        f"one cell (squeeze-excitation, split attention, global context) sees 1 value per channel ({error}); "
        f"the deepest encoder feature is {feature} voxels. Use batch size >= 2, {norms}."
    )
