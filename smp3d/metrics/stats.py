"""Confusion counts (true/false positives/negatives) per sample and class, for any number of spatial axes.

The argument names and the meaning of the three modes follow segmentation_models_pytorch 0.6
(``smp.metrics.get_stats``); the counting itself is vectorised (no Python loop over the batch) and never
leaves the device, so :class:`~smp3d.metrics.SegmentationMetrics` can call it without a host sync.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["MODES", "get_stats"]

MODES = ("binary", "multilabel", "multiclass")

Threshold = float | Sequence[float] | None


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; expected one of {', '.join(map(repr, MODES))}.")


def check_inputs(
    output: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    ignore_index: int | None,
    threshold: Threshold,
    num_classes: int | None,
) -> int:
    """Raise a clear error for any inconsistent argument; return the number of classes C."""
    check_mode(mode)
    for name, tensor in (("output", output), ("target", target)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(tensor).__name__}.")
        if tensor.is_complex():
            raise TypeError(f"`{name}` must be a real tensor, got dtype {tensor.dtype}.")
    if target.is_floating_point():
        raise TypeError(
            f"`target` must hold integer (or bool) labels, got dtype {target.dtype}. "
            "Convert it with target.long() (after rounding, if it holds 0./1. values)."
        )
    if output.device != target.device:
        raise ValueError(f"`output` is on {output.device} but `target` is on {target.device}; put both on one device.")

    if mode == "multiclass":
        if output.is_floating_point():
            raise TypeError(
                f"In 'multiclass' mode `output` must be an integer class map (B, *spatial), got dtype {output.dtype}. "
                "Take output.argmax(dim=1) of the (B, C, *spatial) scores first."
            )
        if threshold is not None:
            raise ValueError("`threshold` does not apply to 'multiclass' mode (the output is already a class map).")
        if num_classes is None:
            raise ValueError("'multiclass' mode needs `num_classes` (labels are 0..num_classes-1).")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
        if output.ndim < 2:
            raise ValueError(
                f"In 'multiclass' mode `output` and `target` are class maps (B, *spatial) with at least one "
                f"spatial axis; got `output` of shape {tuple(output.shape)}."
            )
        if output.shape != target.shape:
            hint = ""
            if output.ndim == target.ndim + 1:
                hint = " `output` has one axis more than `target`: take output.argmax(dim=1) of the scores first."
            elif target.ndim == output.ndim + 1 and target.shape[1] == 1:
                hint = " `target` has a channel axis of size 1: use target.squeeze(1)."
            raise ValueError(
                f"`output` and `target` must have the same shape (B, *spatial) in 'multiclass' mode, got "
                f"{tuple(output.shape)} and {tuple(target.shape)}.{hint}"
            )
        if ignore_index is not None:
            if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
                raise TypeError(f"`ignore_index` must be an int, got {ignore_index!r}.")
            if 0 <= ignore_index < num_classes:
                raise ValueError(
                    f"`ignore_index` must lie outside the class values 0..{num_classes - 1}, got {ignore_index}. "
                    "To ignore a real class, shift the labels so that it becomes -1, or pick e.g. 255."
                )
        return num_classes

    # binary / multilabel: (B, C, *spatial) on both sides
    if ignore_index is not None:
        raise ValueError(
            f"`ignore_index` is only supported in 'multiclass' mode, got ignore_index={ignore_index} "
            f"with mode {mode!r}."
        )
    if output.ndim < 3:
        raise ValueError(
            f"In {mode!r} mode `output` and `target` are (B, C, *spatial) with at least one spatial axis; "
            f"got `output` of shape {tuple(output.shape)}."
        )
    if output.shape != target.shape:
        raise ValueError(
            f"`output` and `target` must have the same shape (B, C, *spatial) in {mode!r} mode, got "
            f"{tuple(output.shape)} and {tuple(target.shape)}."
        )
    channels = output.shape[1]
    if mode == "binary" and channels != 1:
        raise ValueError(
            f"'binary' mode expects one channel (B, 1, *spatial), got {channels} channels in shape "
            f"{tuple(output.shape)}; use mode='multilabel' for several independent channels."
        )
    if num_classes is not None and num_classes != channels:
        raise ValueError(f"`num_classes`={num_classes} does not match the {channels} channel(s) of `output`.")
    if threshold is None and output.is_floating_point():
        raise ValueError(
            f"`output` has floating dtype {output.dtype}: pass `threshold` to binarise it "
            "(0.5 for probabilities, 0.0 for logits), or pass an integer 0/1 mask."
        )
    if threshold is not None and not isinstance(threshold, int | float):
        if isinstance(threshold, torch.Tensor | str | bytes) or not isinstance(threshold, Sequence):
            raise TypeError(f"`threshold` must be a float or a sequence of {channels} floats, got {threshold!r}.")
        if len(threshold) != channels:
            raise ValueError(
                f"`threshold` has {len(threshold)} values but `output` has {channels} channel(s); "
                "give one float, or one per channel."
            )
    return channels


def _as_threshold(threshold: float | Sequence[float], like: torch.Tensor) -> float | torch.Tensor:
    if isinstance(threshold, int | float):
        return threshold
    # One threshold per channel, broadcast over batch and spatial axes.
    shape = (1, len(threshold)) + (1,) * (like.ndim - 2)
    dtype = like.dtype if like.is_floating_point() else torch.float64
    return torch.tensor(threshold, dtype=dtype, device=like.device).view(shape)


def count_binary(
    output: torch.Tensor, target: torch.Tensor, threshold: Threshold
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tp, fp, fn, tn) of shape (B, C) and the number of values that are neither 0 nor 1 (0-d), on the device.

    With a threshold both sides are binarised with ``>= threshold`` (as smp does); without one, any value
    other than 0 and 1 is counted as invalid (and ignored), for the caller to report.
    """
    if threshold is not None:
        output = output >= _as_threshold(threshold, output)
        target = target >= _as_threshold(threshold, target)
        invalid = torch.zeros((), dtype=torch.long, device=output.device)
    else:
        invalid = ((output != 0) & (output != 1)).sum() + ((target != 0) & (target != 1)).sum()
        output = output == 1
        target = target == 1
    output = output.flatten(2)
    target = target.flatten(2)
    tp = (output & target).sum(-1)
    predicted = output.sum(-1)
    actual = target.sum(-1)
    fp = predicted - tp
    fn = actual - tp
    tn = output.shape[-1] - tp - fp - fn
    return tp, fp, fn, tn, invalid


def count_multiclass(
    output: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tp, fp, fn, tn) of shape (B, C) and the number of non-ignored values outside 0..C-1 (0-d).

    One histogram of (sample, target class, predicted class) pairs gives every count. Values outside
    0..C-1 fall into an extra "other" class, so they still count as misses for the class on the other side
    (as in smp) and can be reported as invalid; voxels whose target is ``ignore_index`` go to a discarded bin.
    """
    batch = output.shape[0]
    other = num_classes  # index of the extra category for out-of-range values
    categories = num_classes + 1
    bins = batch * categories * categories
    index_dtype = torch.int32 if bins < 2**31 - 1 else torch.long
    output = output.reshape(batch, -1)
    target = target.reshape(batch, -1)

    def category(labels: torch.Tensor) -> torch.Tensor:
        in_range = (labels >= 0) & (labels < num_classes)
        return torch.where(in_range, labels, other).to(index_dtype)

    sample = torch.arange(batch, device=output.device, dtype=index_dtype).view(batch, 1)
    index = (sample * categories + category(target)) * categories + category(output)
    if ignore_index is not None:
        index = torch.where(target == ignore_index, bins, index)  # bin `bins` is dropped below
    index = index.flatten()
    histogram = torch.zeros(bins + 1, dtype=torch.long, device=output.device)
    histogram.index_add_(0, index, torch.ones(1, dtype=torch.long, device=output.device).expand(index.numel()))
    pairs = histogram[:bins].view(batch, categories, categories)  # (B, target category, predicted category)

    tp = pairs.diagonal(dim1=1, dim2=2)[:, :num_classes]
    predicted = pairs.sum(1)[:, :num_classes]
    actual = pairs.sum(2)[:, :num_classes]
    counted = pairs.sum((1, 2)).unsqueeze(1)
    fp = predicted - tp
    fn = actual - tp
    tn = counted - tp - fp - fn
    invalid = pairs[:, other, :].sum() + pairs[:, :other, other].sum()
    return tp, fp, fn, tn, invalid


def count(
    output: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    num_classes: int,
    ignore_index: int | None,
    threshold: Threshold,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Counts for already-checked inputs: (tp, fp, fn, tn) each (B, C) int64, and the invalid-value count."""
    with torch.no_grad():
        if mode == "multiclass":
            return count_multiclass(output, target, num_classes, ignore_index)
        return count_binary(output, target, threshold)


def invalid_values_message(mode: str, num_classes: int, ignore_index: int | None, how_many: int) -> str:
    if mode == "multiclass":
        allowed = f"0..{num_classes - 1}" + ("" if ignore_index is None else f" or ignore_index={ignore_index}")
        return (
            f"{how_many} value(s) of `output`/`target` lie outside the class values {allowed}. "
            "Pass `ignore_index` for a void label, or fix `num_classes`."
        )
    return (
        f"{how_many} value(s) of `output`/`target` are neither 0 nor 1. Pass `threshold` to binarise "
        "probabilities or logits, or give 0/1 masks."
    )


def get_stats(
    output: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    ignore_index: int | None = None,
    threshold: float | Sequence[float] | None = None,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """True positive, false positive, false negative and true negative voxel counts per sample and class.

    Args:
        output: prediction. ``'binary'``: (B, 1, *spatial); ``'multilabel'``: (B, C, *spatial), integer 0/1
            masks or, with ``threshold``, floats; ``'multiclass'``: integer class map (B, *spatial).
        target: same shape as ``output``, integer or bool labels.
        mode: ``'binary'``, ``'multilabel'`` or ``'multiclass'``.
        ignore_index: ``'multiclass'`` only: voxels whose target equals it are not counted at all. Must lie
            outside 0..num_classes-1 (e.g. -1 or 255).
        threshold: ``'binary'``/``'multilabel'`` only: both ``output`` and ``target`` become ``value >= threshold``.
            One float, or one per channel. Required when ``output`` is floating point.
        num_classes: number of classes C; required in ``'multiclass'`` mode (checked against the channel axis
            otherwise).

    Returns:
        ``(tp, fp, fn, tn)``, each an int64 tensor of shape (B, C) on the inputs' device. Any number of spatial
        axes works; counts equal smp 0.6's on the same data flattened to 2D.

    Raises:
        TypeError: arguments of the wrong type: non-tensors, a floating-point ``target``, or a
            floating-point ``output`` in ``'multiclass'`` mode.
        ValueError: inconsistent arguments, or values out of range: labels outside 0..C-1 (other than
            ``ignore_index``) in ``'multiclass'`` mode, or values other than 0/1 without ``threshold``.
            smp silently drops those; checking them costs one host sync, which
            :class:`~smp3d.metrics.SegmentationMetrics` defers to ``compute()``.
    """
    classes = check_inputs(output, target, mode, ignore_index, threshold, num_classes)
    tp, fp, fn, tn, invalid = count(output, target, mode, classes, ignore_index, threshold)
    how_many = int(invalid)
    if how_many:
        raise ValueError(invalid_values_message(mode, classes, ignore_index, how_many))
    return tp, fp, fn, tn
