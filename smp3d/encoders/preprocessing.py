"""Input normalisation of pretrained encoders, as segmentation_models_pytorch's ``get_preprocessing_params``
and ``preprocess_input``, read from the spec's weight sources (no encoder is built)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .registry import get_encoder_spec

__all__ = ["get_preprocessing_fn", "get_preprocessing_params", "preprocess_input"]


def get_preprocessing_params(encoder_name: str, pretrained: str = "imagenet") -> dict[str, Any]:
    """``{"input_space", "input_range", "mean", "std"}`` of the pretrained tag ``pretrained`` of
    ``encoder_name`` (lists, as smp returns them).

    Examples:
        >>> get_preprocessing_params("resnet34")["mean"]
        [0.485, 0.456, 0.406]
    """
    spec = get_encoder_spec(encoder_name)
    source = spec.weights.get(pretrained)
    if source is None:
        tags = ", ".join(sorted(spec.weights)) or "none"
        raise ValueError(
            f"Encoder {encoder_name!r} has no pretrained tag {pretrained!r} (tags: {tags}), so it has no "
            f"preprocessing parameters."
        )
    return {
        "input_space": source.input_space,
        "input_range": list(source.input_range),
        "mean": list(source.mean),
        "std": list(source.std),
    }


def preprocess_input(
    x: Any,
    mean: Any = None,
    std: Any = None,
    input_space: str = "RGB",
    input_range: Any = None,
    channel_axis: int = -1,
) -> Any:
    """Normalise ``x`` as smp does: BGR flips the channel axis, values in [0, 255] are scaled to
    ``input_range`` when its top is 1, then ``(x - mean) / std`` per channel.

    ``x`` is a NumPy array or a tensor; ``channel_axis`` is -1 for smp's channels-last images and 1 for
    (B, C, *spatial) tensors. Returns the same type.
    """
    if input_space == "BGR":
        x = x[..., ::-1].copy() if isinstance(x, np.ndarray) and channel_axis == -1 else _flip(x, channel_axis)
    if input_range is not None and float(x.max()) > 1 and float(input_range[1]) == 1:
        x = x / 255.0
    for name, value in (("mean", mean), ("std", std)):
        if value is None:
            continue
        shape = [1] * x.ndim
        shape[channel_axis] = -1
        stats = np.asarray(value, dtype=np.float64).reshape(shape)
        if isinstance(x, torch.Tensor):
            stats = torch.as_tensor(stats, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)
        x = x - stats if name == "mean" else x / stats
    return x


def _flip(x: Any, axis: int) -> Any:
    if isinstance(x, torch.Tensor):
        return x.flip(axis)
    return np.flip(x, axis=axis).copy()


def get_preprocessing_fn(encoder_name: str, pretrained: str = "imagenet") -> Callable[..., Any]:
    """``preprocess_input`` with the parameters of ``encoder_name``'s pretrained tag bound."""
    return functools.partial(preprocess_input, **get_preprocessing_params(encoder_name, pretrained))
