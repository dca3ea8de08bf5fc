"""Training-loop helpers: per-class Dice in one call, and an accumulator of confusion counts over batches."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from .stats import Threshold, check_inputs, check_mode, count, invalid_values_message

__all__ = ["MetricsResult", "SegmentationMetrics", "dice_per_class", "foreground_classes"]

# Scores reported per class; each is NaN where its denominator is 0 (see SegmentationMetrics).
_SCORES = ("dice", "iou", "precision", "recall")

#: Keys of ``compute()`` before the means were named for what they average, and the names that replaced them.
DEPRECATED_KEYS = {f"mean_{name}": f"mean_{name}_all" for name in _SCORES}


def foreground_classes(mode: str, num_classes: int) -> list[int]:
    """The classes that are not background: all but class 0 in ``'multiclass'`` mode, every class otherwise
    (a binary or multi-label mask has no background channel)."""
    return list(range(1, num_classes)) if mode == "multiclass" else list(range(num_classes))


class MetricsResult(dict):
    """The dict that :meth:`SegmentationMetrics.compute` returns.

    It holds the per-class scores and their means under their current names. The old keys ``mean_dice``,
    ``mean_iou``, ``mean_precision`` and ``mean_recall`` still read (the mean over every class, now
    ``mean_<score>_all``) but emit a ``FutureWarning`` naming ``mean_<score>_all`` and
    ``mean_<score>_foreground``; they are not listed by ``keys()`` and will be removed.
    """

    def __missing__(self, key: Any) -> torch.Tensor:
        if key in DEPRECATED_KEYS:
            new = DEPRECATED_KEYS[key]
            warnings.warn(
                f"SegmentationMetrics result key {key!r} is deprecated: it is the mean over every class, background "
                f"included; read {new!r} (same value) or {new.replace('_all', '_foreground')!r} (without the "
                "background class)",
                FutureWarning,
                stacklevel=2,
            )
            return self[new]
        raise KeyError(key)

    def get(self, key: Any, default: Any = None) -> Any:
        """As ``dict.get``, also for the deprecated keys (with their warning)."""
        if key in self or key in DEPRECATED_KEYS:
            return self[key]
        return default


def _prepare(
    output: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    num_classes: int | None,
    ignore_index: int | None,
    threshold: Threshold,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Accept raw (B, C, *spatial) scores in 'multiclass' mode (argmax over C, target with or without its
    size-1 channel axis), then check everything as get_stats does."""
    check_mode(mode)
    if (
        mode == "multiclass"
        and isinstance(output, torch.Tensor)
        and isinstance(target, torch.Tensor)
        and output.is_floating_point()
        and output.ndim >= 3
    ):
        if num_classes is not None and output.shape[1] != num_classes:
            raise ValueError(
                f"`output` scores have {output.shape[1]} channels (shape {tuple(output.shape)}) but "
                f"num_classes={num_classes}."
            )
        if target.ndim == output.ndim and target.shape[1] == 1:
            target = target.squeeze(1)
        if target.shape != output.shape[:1] + output.shape[2:]:
            raise ValueError(
                f"`target` must be (B, *spatial) or (B, 1, *spatial) for `output` scores of shape "
                f"{tuple(output.shape)}, got {tuple(target.shape)}."
            )
        output = output.argmax(dim=1)
    classes = check_inputs(output, target, mode, ignore_index, threshold, num_classes)
    return output, target, classes


def _scores(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class Dice, IoU, precision, recall from float64 counts; 0/0 gives NaN."""
    return {
        "dice": 2 * tp / (2 * tp + fp + fn),
        "iou": tp / (tp + fp + fn),
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
    }


def dice_per_class(
    output: torch.Tensor,
    target: torch.Tensor,
    mode: str,
    num_classes: int | None = None,
    ignore_index: int | None = None,
    threshold: float | Sequence[float] | None = None,
) -> torch.Tensor:
    """Dice of each class over the whole batch, as a float64 tensor of shape (C,) on the inputs' device.

    Counts are summed over the batch before dividing (one Dice per class for the batch, not a mean of
    per-sample Dice). A class absent from both prediction and target has Dice NaN; use ``torch.nanmean`` for
    a mean over the classes that occur. Arguments as in :func:`get_stats`, except that in ``'multiclass'``
    mode ``output`` may also be raw (B, C, *spatial) scores (their argmax over C is taken) and ``target`` may
    keep a size-1 channel axis. Values are checked as in :func:`get_stats` (one host sync).
    """
    output, target, classes = _prepare(output, target, mode, num_classes, ignore_index, threshold)
    tp, fp, fn, _, invalid = count(output, target, mode, classes, ignore_index, threshold)
    how_many = int(invalid)
    if how_many:
        raise ValueError(invalid_values_message(mode, classes, ignore_index, how_many))
    tp, fp, fn = (value.sum(0).to(torch.float64) for value in (tp, fp, fn))
    return _scores(tp, fp, fn)["dice"]


class SegmentationMetrics:
    """Accumulates confusion counts over batches; ``compute()`` gives per-class Dice, IoU, precision, recall.

    ``update`` adds int64 counts on the inputs' device and never synchronises with the host, so it is cheap
    to call on every validation batch; checks on values (labels out of range) are deferred to ``compute()``.
    Scores are computed from counts summed over everything seen (dataset-level, smp's 'macro' per class), not
    averaged per volume.

    Convention for empty classes: a score whose denominator is 0 is NaN, i.e. Dice and IoU of a class absent
    from both predictions and targets, precision of a class never predicted, recall of a class absent from the
    targets. Each score has two means, both ``nanmean`` over classes (NaN only if every class averaged is NaN):
    ``mean_<score>_all`` over every class, background included, and ``mean_<score>_foreground`` over the
    classes of :func:`foreground_classes` (all but class 0 in ``'multiclass'`` mode; every class otherwise).
    ``smp3d train`` selects its best model by the second, ``val_mean_dice_foreground``. The former key
    ``mean_dice`` (and ``mean_iou``, ...) still reads ``mean_dice_all`` with a ``FutureWarning``.

    Args:
        mode: ``'binary'``, ``'multilabel'`` or ``'multiclass'``, as in :func:`get_stats`.
        num_classes: number of classes C; required for ``'multiclass'`` and ``'multilabel'`` (1 for ``'binary'``).
        ignore_index: ``'multiclass'`` only, a target label whose voxels are not counted.
        threshold: ``'binary'``/``'multilabel'`` only: binarise float outputs (and targets) with ``>= threshold``.

    ``update(output, target)`` takes the same tensors as :func:`get_stats`; in ``'multiclass'`` mode ``output``
    may also be raw (B, C, *spatial) scores (argmax over C) and ``target`` (B, 1, *spatial).

    For distributed validation, ``torch.distributed.all_reduce(metrics.counts)`` before ``compute()``.

    Example::

        metrics = SegmentationMetrics("multiclass", num_classes=3)
        for image, label in loader:
            metrics.update(model(image), label)
        result = metrics.compute()   # {"dice": (3,), ..., "mean_dice_all": (), "mean_dice_foreground": (), ...}
    """

    def __init__(
        self,
        mode: str,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        threshold: float | Sequence[float] | None = None,
    ) -> None:
        check_mode(mode)
        if num_classes is None:
            if mode != "binary":
                raise ValueError(f"{mode!r} mode needs `num_classes`.")
            num_classes = 1
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
        if mode == "binary" and num_classes != 1:
            raise ValueError(f"'binary' mode has one class, got num_classes={num_classes}; use 'multilabel'.")
        if mode != "multiclass" and ignore_index is not None:
            raise ValueError(f"`ignore_index` is only supported in 'multiclass' mode, got mode {mode!r}.")
        if mode == "multiclass" and threshold is not None:
            raise ValueError("`threshold` does not apply to 'multiclass' mode (the output is already a class map).")
        self.mode = mode
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.threshold = threshold
        self.reset()

    counts: torch.Tensor  # (4, C) int64: tp, fp, fn, tn per class

    def reset(self) -> None:
        """Forget everything seen so far (counts stay on their current device)."""
        device = self.counts.device if hasattr(self, "counts") else torch.device("cpu")
        self.counts = torch.zeros(4, self.num_classes, dtype=torch.long, device=device)
        self._invalid = torch.zeros((), dtype=torch.long, device=device)
        self.num_samples = 0

    def to(self, device: torch.device | str) -> SegmentationMetrics:
        """Move the counts to ``device`` (``update`` also does this on its own when inputs come elsewhere)."""
        self.counts = self.counts.to(device)
        self._invalid = self._invalid.to(device)
        return self

    @property
    def tp(self) -> torch.Tensor:
        """True positives per class, (C,) int64."""
        return self.counts[0]

    @property
    def fp(self) -> torch.Tensor:
        """False positives per class, (C,) int64."""
        return self.counts[1]

    @property
    def fn(self) -> torch.Tensor:
        """False negatives per class, (C,) int64."""
        return self.counts[2]

    @property
    def tn(self) -> torch.Tensor:
        """True negatives per class, (C,) int64."""
        return self.counts[3]

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add the counts of one batch; no host sync."""
        output, target, _ = _prepare(output, target, self.mode, self.num_classes, self.ignore_index, self.threshold)
        if self.counts.device != output.device:
            self.to(output.device)
        tp, fp, fn, tn, invalid = count(output, target, self.mode, self.num_classes, self.ignore_index, self.threshold)
        self.counts += torch.stack([tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0)])
        self._invalid += invalid
        self.num_samples += output.shape[0]

    def compute(self) -> MetricsResult:
        """Per-class scores and their means.

        Returns:
            A :class:`MetricsResult` (a dict): ``dice``, ``iou``, ``precision``, ``recall`` ((C,) float64, CPU);
            for each, ``mean_<score>_all`` (over every class) and ``mean_<score>_foreground`` (over
            :func:`foreground_classes`), 0-d float64, NaN classes left out.

        Raises:
            ValueError: a value seen by ``update`` was out of range.
            RuntimeError: nothing was seen.
        """
        if self.num_samples == 0:
            raise RuntimeError("SegmentationMetrics.compute() called before any update().")
        how_many = int(self._invalid)
        if how_many:
            raise ValueError(invalid_values_message(self.mode, self.num_classes, self.ignore_index, how_many))
        tp, fp, fn, _ = self.counts.cpu().to(torch.float64)
        result = MetricsResult(_scores(tp, fp, fn))
        foreground = foreground_classes(self.mode, self.num_classes)
        for name in _SCORES:
            result[f"mean_{name}_all"] = result[name].nanmean()
            result[f"mean_{name}_foreground"] = result[name][foreground].nanmean()
        return result

    def __repr__(self) -> str:
        return (
            f"SegmentationMetrics(mode={self.mode!r}, num_classes={self.num_classes}, "
            f"ignore_index={self.ignore_index}, threshold={self.threshold}, samples={self.num_samples})"
        )
