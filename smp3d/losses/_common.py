"""Modes, input checks and target preparation shared by every loss; N-D: tensors are (B, C, *spatial)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

__all__ = [
    "BINARY_MODE",
    "MULTICLASS_MODE",
    "MULTILABEL_MODE",
    "check_class_selection",
    "check_flag",
    "check_ignore_index",
    "check_mode",
    "check_number",
    "check_tensor_weight",
    "check_prediction",
    "check_reduction",
    "class_map",
    "dense_targets",
    "full_precision",
    "smp_layout",
    "to_float",
    "weighted_class_mean",
]

#: One foreground class: prediction (B, 1, *spatial), target (B, 1, *spatial) or (B, *spatial) in [0, 1].
BINARY_MODE: str = "binary"
#: Mutually exclusive classes: prediction (B, C, *spatial), target (B, *spatial) integer class indices.
MULTICLASS_MODE: str = "multiclass"
#: Independent classes, one channel each: prediction and target (B, C, *spatial), target in [0, 1].
MULTILABEL_MODE: str = "multilabel"

_MODES = (BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE)


def check_mode(mode: object, owner: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"{owner}: unknown mode {mode!r}; expected one of {', '.join(map(repr, _MODES))}.")
    return mode  # type: ignore[return-value]


def check_ignore_index(value: Any, owner: str) -> int | None:
    """``ignore_index`` is an int (a label value to skip) or ``None``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        hint = ""
        if value in _MODES:
            hint = f" {owner} has no mode argument; pass ignore_index by keyword (ignore_index=...)."
        raise ValueError(f"{owner}: ignore_index must be an int (a label value to skip) or None, got {value!r}.{hint}")
    return value


def check_flag(value: Any, name: str, owner: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}.")
    return value


def check_number(
    value: Any,
    name: str,
    owner: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    optional: bool = False,
) -> float | None:
    """A finite real number in ``[low, high]`` (``(low, high]`` with ``low_open``); ``None`` if ``optional``."""
    if value is None and optional:
        return None
    interval = (
        f"{'(' if low_open else '['}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
    )
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high)
    if not ok:
        also = " or None" if optional else ""
        raise ValueError(f"{owner}: {name} must lie in {interval} (a finite number){also}, got {value!r}.")
    return value


def check_tensor_weight(value: Any, name: str, owner: str) -> torch.Tensor | None:
    """``None`` or a real tensor of non-negative, finite weights (checked once, at construction)."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.is_complex() or value.dtype == torch.bool:
        raise ValueError(f"{owner}: {name} must be a real torch.Tensor or None, got {value!r}.")
    if value.device.type != "meta" and not bool(torch.isfinite(value).all() & (value >= 0).all()):
        raise ValueError(f"{owner}: {name} must hold finite, non-negative weights, got {value.tolist()}.")
    return value


def check_reduction(reduction: object, owner: str, allowed: Sequence[str] = ("mean", "sum", "none")) -> str:
    if reduction not in allowed:
        raise ValueError(f"{owner}: unknown reduction {reduction!r}; expected one of {', '.join(map(repr, allowed))}.")
    return reduction  # type: ignore[return-value]


def check_class_selection(
    classes: Sequence[int] | None, class_weights: Sequence[float] | None, mode: str, owner: str
) -> tuple[tuple[int, ...] | None, torch.Tensor | None]:
    """Validate the ``classes`` subset and per-class ``class_weights`` (neither exists in binary mode)."""
    if classes is not None:
        if mode == BINARY_MODE:
            raise ValueError(f"{owner}: `classes` selects channels and is not supported with mode='binary'.")
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
            raise ValueError(f"{owner}: `classes` must be a sequence of class indices or None, got {classes!r}.")
        if any(isinstance(c, bool) or not isinstance(c, int) for c in classes):
            raise ValueError(f"{owner}: `classes` must hold int class indices, got {tuple(classes)!r}.")
        classes = tuple(classes)
        if not classes:
            raise ValueError(f"{owner}: `classes` must name at least one class index, got an empty sequence.")
    weights = None
    if class_weights is not None:
        if mode == BINARY_MODE:
            raise ValueError(f"{owner}: `class_weights` are not supported with mode='binary' (one class only).")
        try:
            weights = torch.as_tensor(class_weights, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(
                f"{owner}: `class_weights` must be a sequence of one number per class, got {class_weights!r}."
            ) from error
        if weights.ndim != 1:
            raise ValueError(
                f"{owner}: `class_weights` must be one number per class (a flat sequence), got shape "
                f"{tuple(weights.shape)}: {weights.tolist()}."
            )
        finite = bool(torch.isfinite(weights).all())
        if not finite or weights.numel() == 0 or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(
                f"{owner}: `class_weights` must be non-negative with a positive sum, got {weights.tolist()}."
            )
    return classes, weights


def weighted_class_mean(
    per_class: torch.Tensor,
    classes: tuple[int, ...] | None,
    class_weights: torch.Tensor | None,
    owner: str,
) -> torch.Tensor:
    """Mean of a per-class loss (C,) over the selected ``classes``, weighted by ``class_weights`` (length C)."""
    num_classes = per_class.shape[0]
    if classes is not None:
        bad = [c for c in classes if not -num_classes <= c < num_classes]
        if bad:
            raise ValueError(f"{owner}: `classes` {bad} are out of range for a prediction with {num_classes} channels.")
        index = torch.tensor(classes, device=per_class.device)
        per_class = per_class[index]
    if class_weights is None:
        return per_class.mean()
    if class_weights.numel() != num_classes:
        raise ValueError(
            f"{owner}: `class_weights` has {class_weights.numel()} entries but the prediction has "
            f"{num_classes} channels; give one weight per channel."
        )
    weights = class_weights.to(device=per_class.device, dtype=per_class.dtype)
    if classes is not None:
        weights = weights[index]
    return (per_class * weights).sum() / weights.sum()


@contextlib.contextmanager
def full_precision(x: torch.Tensor) -> Iterator[None]:
    """Switch autocast off for the loss: its reductions run in float32 even inside a bf16/fp16 region."""
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            yield
    else:
        yield


def to_float(x: torch.Tensor) -> torch.Tensor:
    """Promote to at least float32 (bf16/fp16 and integers become float32; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def smp_layout(y_pred: object, y_true: object, mode: str) -> tuple[object, object]:
    """The prediction and target in our (B, C, *spatial) layout when they come in a layout that
    segmentation_models_pytorch's region losses accept (they flatten each sample):

    - no spatial axis: (B, C) logits with (B,) class indices, or (B, C) targets; (B,) binary logits with
      (B,) targets. A trailing spatial axis of size 1 is added.
    - binary mode without a channel axis: prediction and target of the same shape (B, *spatial) with
      more than one value on axis 1. A channel axis is inserted.

    Anything else is returned unchanged, for the loss's own checks to explain.
    """
    if not isinstance(y_pred, torch.Tensor) or not isinstance(y_true, torch.Tensor) or y_pred.ndim == 0:
        return y_pred, y_true
    if mode == BINARY_MODE and y_pred.ndim >= 1 and y_true.shape == y_pred.shape:
        if y_pred.ndim == 1:
            return y_pred.view(-1, 1, 1), y_true.view(-1, 1, 1)
        if y_pred.shape[1] != 1:
            return y_pred.unsqueeze(1), y_true.unsqueeze(1)
    if y_pred.ndim == 2 and y_true.ndim in (1, 2):
        return y_pred.unsqueeze(-1), y_true.unsqueeze(-1)
    return y_pred, y_true


def check_prediction(y_pred: object, owner: str, binary: bool = False, min_spatial: int = 1) -> torch.Tensor:
    if not isinstance(y_pred, torch.Tensor):
        raise TypeError(f"{owner}: the prediction must be a torch.Tensor, got {type(y_pred).__name__}.")
    if y_pred.ndim < 2 + min_spatial:
        raise ValueError(
            f"{owner}: the prediction must be (B, C, *spatial)"
            f"{' with at least one spatial axis' if min_spatial >= 1 else ''}, "
            f"got a {y_pred.ndim}D tensor of shape {tuple(y_pred.shape)}."
        )
    if not y_pred.is_floating_point():
        raise TypeError(f"{owner}: the prediction must be a floating-point tensor, got dtype {y_pred.dtype}.")
    if binary and y_pred.shape[1] != 1:
        raise ValueError(
            f"{owner}: mode='binary' expects a one-channel prediction (B, 1, *spatial), got shape "
            f"{tuple(y_pred.shape)}. Use mode='multilabel' for several independent channels or "
            f"mode='multiclass' for exclusive classes."
        )
    return y_pred


def _check_tensor(y_true: object, owner: str) -> torch.Tensor:
    if not isinstance(y_true, torch.Tensor):
        raise TypeError(f"{owner}: the target must be a torch.Tensor, got {type(y_true).__name__}.")
    return y_true


def class_map(
    y_pred: torch.Tensor, y_true: object, ignore_index: int | None, owner: str, channel_dim: int = 1
) -> torch.Tensor:
    """Check a multiclass target and return it as a long tensor (B, *spatial).

    Rule: the target is (B, *spatial) integer class indices; (B, 1, *spatial) is also accepted and its
    channel axis is dropped. Values must lie in [0, C) or equal ``ignore_index``.
    """
    y_true = _check_tensor(y_true, owner)
    expected = tuple(y_pred.shape[:channel_dim]) + tuple(y_pred.shape[channel_dim + 1 :])
    if y_true.ndim == y_pred.ndim and y_true.shape[channel_dim] == 1:
        y_true = y_true.squeeze(channel_dim)
    if y_true.is_floating_point() or y_true.is_complex() or y_true.dtype == torch.bool:
        raise TypeError(
            f"{owner}: multiclass target must be (B, *spatial) integer class indices, got {y_true.dtype} tensor "
            f"of shape {tuple(y_true.shape)}. Convert it with target.long() (or argmax a one-hot target over "
            f"the channel axis)."
        )
    if tuple(y_true.shape) != expected:
        raise ValueError(
            f"{owner}: multiclass target must be (B, *spatial) = {expected} integer class indices for a "
            f"prediction of shape {tuple(y_pred.shape)}, got shape {tuple(y_true.shape)}."
        )
    num_classes = y_pred.shape[channel_dim]
    out_of_range = (y_true < 0) | (y_true >= num_classes)
    if ignore_index is not None:
        out_of_range &= y_true != ignore_index
    # One host sync per call; skipped while tracing so torch.compile keeps a single graph.
    if not torch.compiler.is_compiling() and bool(out_of_range.any()):
        bad = torch.unique(y_true[out_of_range])[:5].tolist()
        ignored = f" or equal ignore_index={ignore_index}" if ignore_index is not None else ""
        raise ValueError(
            f"{owner}: multiclass target values must lie in [0, {num_classes}){ignored}; found {bad}. "
            f"Set ignore_index for void labels."
        )
    return y_true.long()


def dense_targets(
    y_pred: torch.Tensor, y_true: object, mode: str, ignore_index: int | None, owner: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Targets as a float tensor shaped like ``y_pred`` (one-hot in multiclass mode), plus the validity mask.

    The mask is boolean, (B, 1, *spatial) in binary/multiclass mode and (B, C, *spatial) in multilabel mode,
    ``None`` without ``ignore_index``. Ignored positions are zero in the returned target.
    """
    dtype = y_pred.dtype
    if mode == MULTICLASS_MODE:
        labels = class_map(y_pred, y_true, ignore_index, owner).unsqueeze(1)
        shape = (1, -1) + (1,) * (y_pred.ndim - 2)
        classes = torch.arange(y_pred.shape[1], device=labels.device).view(shape)
        target = (labels == classes).to(dtype)
        valid = None if ignore_index is None else labels != ignore_index
    else:
        y_true = _check_tensor(y_true, owner)
        if y_true.is_complex():
            raise TypeError(f"{owner}: the target must be real-valued, got dtype {y_true.dtype}.")
        if mode == BINARY_MODE and y_true.ndim == y_pred.ndim - 1:
            y_true = y_true.unsqueeze(1)
        if tuple(y_true.shape) != tuple(y_pred.shape):
            layout = "(B, 1, *spatial) or (B, *spatial)" if mode == BINARY_MODE else "(B, C, *spatial)"
            raise ValueError(
                f"{owner}: {mode} target must be {layout} matching the prediction {tuple(y_pred.shape)}, "
                f"got shape {tuple(y_true.shape)}."
            )
        valid = None if ignore_index is None else y_true != ignore_index
        target = y_true.to(device=y_pred.device, dtype=dtype)
    if valid is not None:
        valid = valid.to(y_pred.device)
        target = target * valid
    return target, valid
