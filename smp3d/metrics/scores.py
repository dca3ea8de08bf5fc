"""Scores computed from confusion counts, with smp 0.6's names, reductions and defaults.

Every score takes ``(tp, fp, fn, tn)``, each of shape (B, C) as returned by :func:`~smp3d.metrics.get_stats`,
and a ``reduction`` saying how counts and scores are combined over samples (B) and classes (C):

- ``'micro'``: sum the counts over samples and classes, then one score.
- ``'macro'``: sum the counts over samples, one score per class, then their mean.
- ``'weighted'``: as ``'macro'``, then the mean weighted by ``class_weights``.
- ``'micro-imagewise'``: sum the counts over classes, one score per sample, then their mean.
- ``'macro-imagewise'``: one score per sample and class, mean over samples, then mean over classes.
- ``'weighted-imagewise'``: one score per sample and class, mean over samples, then the ``class_weights`` mean.
- ``'none'`` or ``None``: the (B, C) scores themselves.

``zero_division`` is the value given to a score whose fraction is 0/0 (e.g. IoU of a class absent from both
prediction and target); ``'warn'`` gives 0 and warns. A non-zero number divided by zero (only possible in the
likelihood ratios) stays ``inf``.

Three differences from smp 0.6, each a fix: ``zero_division`` also applies to ``'micro'`` (smp returns NaN
there); ``'weighted-imagewise'`` is a true weighted mean (smp divides it once more by C); and ``class_weights``
with a reduction that does not use them is an error (smp silently rescales ``'macro'`` scores by them).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "REDUCTIONS",
    "accuracy",
    "balanced_accuracy",
    "dice_score",
    "f1_score",
    "false_discovery_rate",
    "false_negative_rate",
    "false_omission_rate",
    "false_positive_rate",
    "fbeta_score",
    "iou_score",
    "negative_likelihood_ratio",
    "negative_predictive_value",
    "positive_likelihood_ratio",
    "positive_predictive_value",
    "precision",
    "recall",
    "sensitivity",
    "specificity",
]

REDUCTIONS = ("micro", "macro", "weighted", "micro-imagewise", "macro-imagewise", "weighted-imagewise", "none", None)

Counts = torch.Tensor
Formula = Callable[[Counts, Counts, Counts, Counts], torch.Tensor]
ZeroDivision = float | str


# Formulas on float64 counts of any (matching) shape; 0/0 gives NaN, resolved by `zero_division` later.


def _fbeta(tp: Counts, fp: Counts, fn: Counts, tn: Counts, beta: float = 1.0) -> torch.Tensor:
    weighted_tp = (1 + beta**2) * tp
    return weighted_tp / (weighted_tp + beta**2 * fn + fp)


def _iou(tp: Counts, fp: Counts, fn: Counts, tn: Counts) -> torch.Tensor:
    return tp / (tp + fp + fn)


def _accuracy(tp: Counts, fp: Counts, fn: Counts, tn: Counts) -> torch.Tensor:
    return (tp + tn) / (tp + fp + fn + tn)


def _tpr(tp: Counts, fp: Counts, fn: Counts, tn: Counts) -> torch.Tensor:
    return tp / (tp + fn)


def _tnr(tp: Counts, fp: Counts, fn: Counts, tn: Counts) -> torch.Tensor:
    return tn / (tn + fp)


def _ppv(tp: Counts, fp: Counts, fn: Counts, tn: Counts) -> torch.Tensor:
    return tp / (tp + fp)


def _npv(tp: Counts, fp: Counts, fn: Counts, tn: Counts) -> torch.Tensor:
    return tn / (tn + fn)


def _balanced_accuracy(tp: Counts, fp: Counts, fn: Counts, tn: Counts) -> torch.Tensor:
    return (_tpr(tp, fp, fn, tn) + _tnr(tp, fp, fn, tn)) / 2


def _fnr(tp: Counts, fp: Counts, fn: Counts, tn: Counts) -> torch.Tensor:
    return 1 - _tpr(tp, fp, fn, tn)


def _fpr(tp: Counts, fp: Counts, fn: Counts, tn: Counts) -> torch.Tensor:
    return 1 - _tnr(tp, fp, fn, tn)


def _fdr(tp: Counts, fp: Counts, fn: Counts, tn: Counts) -> torch.Tensor:
    return 1 - _ppv(tp, fp, fn, tn)


def _for(tp: Counts, fp: Counts, fn: Counts, tn: Counts) -> torch.Tensor:
    return 1 - _npv(tp, fp, fn, tn)


def _lr_positive(tp: Counts, fp: Counts, fn: Counts, tn: Counts) -> torch.Tensor:
    return _tpr(tp, fp, fn, tn) / _fpr(tp, fp, fn, tn)


def _lr_negative(tp: Counts, fp: Counts, fn: Counts, tn: Counts) -> torch.Tensor:
    return _fnr(tp, fp, fn, tn) / _tnr(tp, fp, fn, tn)


def _check_counts(tp: Counts, fp: Counts, fn: Counts, tn: Counts) -> None:
    for name, value in (("tp", tp), ("fp", fp), ("fn", fn), ("tn", tn)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor of counts, got {type(value).__name__}.")
        if value.ndim != 2:
            raise ValueError(
                f"`{name}` must have shape (B, C) as returned by get_stats, got shape {tuple(value.shape)}."
            )
    shapes = {tuple(value.shape) for value in (tp, fp, fn, tn)}
    if len(shapes) != 1:
        raise ValueError(f"`tp`, `fp`, `fn`, `tn` must share one shape (B, C), got {[list(s) for s in shapes]}.")


def _check_zero_division(zero_division: ZeroDivision) -> None:
    if zero_division == "warn":
        return
    if isinstance(zero_division, bool) or not isinstance(zero_division, int | float):
        raise ValueError(f"`zero_division` must be a number or 'warn', got {zero_division!r}.")


def _class_weights(
    class_weights: Sequence[float] | torch.Tensor | None, reduction: str | None, classes: int, device: torch.device
) -> torch.Tensor | None:
    weighted = reduction in ("weighted", "weighted-imagewise")
    if class_weights is None:
        if weighted:
            raise ValueError(f"reduction={reduction!r} needs `class_weights` (one weight per class, {classes} here).")
        return None
    if not weighted:
        raise ValueError(
            f"`class_weights` are only used by the 'weighted' and 'weighted-imagewise' reductions, got "
            f"reduction={reduction!r}. Drop them, or pick a weighted reduction."
        )
    weights = torch.as_tensor(class_weights, dtype=torch.float64).detach().cpu()
    if weights.shape != (classes,):
        raise ValueError(
            f"`class_weights` must hold one weight per class ({classes}), got shape {tuple(weights.shape)}."
        )
    if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"`class_weights` must be finite, non-negative and not all zero, got {weights.tolist()}.")
    return (weights / weights.sum()).to(device)


def _resolve_zero_division(score: torch.Tensor, zero_division: ZeroDivision) -> torch.Tensor:
    undefined = torch.isnan(score)
    if zero_division == "warn":
        if undefined.any():
            # stacklevel 4: warn at the caller of the public score function.
            warnings.warn("A score had a zero division (0/0); it is set to 0.", RuntimeWarning, stacklevel=4)
        zero_division = 0.0
    return torch.where(undefined, torch.full_like(score, float(zero_division)), score)


def _reduce(
    formula: Formula,
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None,
    class_weights: Sequence[float] | torch.Tensor | None,
    zero_division: ZeroDivision,
) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"Unknown reduction {reduction!r}; expected one of {', '.join(map(repr, REDUCTIONS))}.")
    _check_counts(tp, fp, fn, tn)
    _check_zero_division(zero_division)
    weights = _class_weights(class_weights, reduction, tp.shape[1], tp.device)
    counts = [value.to(torch.float64) for value in (tp, fp, fn, tn)]

    if reduction == "micro":
        score = _resolve_zero_division(formula(*(c.sum() for c in counts)), zero_division)
    elif reduction in ("macro", "weighted"):
        score = _resolve_zero_division(formula(*(c.sum(0) for c in counts)), zero_division)
        score = score.mean() if weights is None else (score * weights).sum()
    elif reduction == "micro-imagewise":
        score = _resolve_zero_division(formula(*(c.sum(1) for c in counts)), zero_division).mean()
    elif reduction in ("macro-imagewise", "weighted-imagewise"):
        score = _resolve_zero_division(formula(*counts), zero_division).mean(0)
        score = score.mean() if weights is None else (score * weights).sum()
    else:  # 'none' / None
        score = _resolve_zero_division(formula(*counts), zero_division)
    return score.to(torch.get_default_dtype())


_ARGS_DOC = """

    Args:
        tp, fp, fn, tn: int64 counts of shape (B, C), from :func:`get_stats`.
        reduction: how samples and classes are combined (see :mod:`smp3d.metrics.scores`); ``None`` or ``'none'``
            returns the (B, C) scores.
        class_weights: one weight per class, for the ``'weighted'`` reductions only (normalised to sum 1).
        zero_division: value of a 0/0 score; ``'warn'`` gives 0 with a warning.

    Returns:
        A 0-d tensor, or (B, C) without reduction, in the default float dtype.
    """


def fbeta_score(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    beta: float = 1.0,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """F-beta score, (1 + beta²)·tp / ((1 + beta²)·tp + beta²·fn + fp); beta > 1 favours recall."""

    def formula(tp: Counts, fp: Counts, fn: Counts, tn: Counts) -> torch.Tensor:
        return _fbeta(tp, fp, fn, tn, beta=beta)

    return _reduce(formula, tp, fp, fn, tn, reduction, class_weights, zero_division)


def f1_score(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """F1 score (the Dice coefficient), 2·tp / (2·tp + fp + fn)."""
    return _reduce(_fbeta, tp, fp, fn, tn, reduction, class_weights, zero_division)


def dice_score(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """Dice coefficient, 2·tp / (2·tp + fp + fn): the same number as :func:`f1_score`."""
    return _reduce(_fbeta, tp, fp, fn, tn, reduction, class_weights, zero_division)


def iou_score(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """Intersection over union (Jaccard index), tp / (tp + fp + fn)."""
    return _reduce(_iou, tp, fp, fn, tn, reduction, class_weights, zero_division)


def accuracy(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """Accuracy, (tp + tn) / (tp + fp + fn + tn)."""
    return _reduce(_accuracy, tp, fp, fn, tn, reduction, class_weights, zero_division)


def sensitivity(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """Sensitivity, recall or true positive rate, tp / (tp + fn)."""
    return _reduce(_tpr, tp, fp, fn, tn, reduction, class_weights, zero_division)


def specificity(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """Specificity or true negative rate, tn / (tn + fp)."""
    return _reduce(_tnr, tp, fp, fn, tn, reduction, class_weights, zero_division)


def balanced_accuracy(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """Balanced accuracy, the mean of sensitivity and specificity."""
    return _reduce(_balanced_accuracy, tp, fp, fn, tn, reduction, class_weights, zero_division)


def positive_predictive_value(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """Precision or positive predictive value, tp / (tp + fp)."""
    return _reduce(_ppv, tp, fp, fn, tn, reduction, class_weights, zero_division)


def negative_predictive_value(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """Negative predictive value, tn / (tn + fn)."""
    return _reduce(_npv, tp, fp, fn, tn, reduction, class_weights, zero_division)


def false_negative_rate(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """Miss rate or false negative rate, 1 - sensitivity."""
    return _reduce(_fnr, tp, fp, fn, tn, reduction, class_weights, zero_division)


def false_positive_rate(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """Fall-out or false positive rate, 1 - specificity."""
    return _reduce(_fpr, tp, fp, fn, tn, reduction, class_weights, zero_division)


def false_discovery_rate(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """False discovery rate, 1 - precision."""
    return _reduce(_fdr, tp, fp, fn, tn, reduction, class_weights, zero_division)


def false_omission_rate(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """False omission rate, 1 - negative predictive value."""
    return _reduce(_for, tp, fp, fn, tn, reduction, class_weights, zero_division)


def positive_likelihood_ratio(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """Positive likelihood ratio, sensitivity / false positive rate."""
    return _reduce(_lr_positive, tp, fp, fn, tn, reduction, class_weights, zero_division)


def negative_likelihood_ratio(
    tp: Counts,
    fp: Counts,
    fn: Counts,
    tn: Counts,
    reduction: str | None = None,
    class_weights: Sequence[float] | None = None,
    zero_division: ZeroDivision = 1.0,
) -> torch.Tensor:
    """Negative likelihood ratio, false negative rate / specificity."""
    return _reduce(_lr_negative, tp, fp, fn, tn, reduction, class_weights, zero_division)


for _score in (
    fbeta_score,
    f1_score,
    dice_score,
    iou_score,
    accuracy,
    sensitivity,
    specificity,
    balanced_accuracy,
    positive_predictive_value,
    negative_predictive_value,
    false_negative_rate,
    false_positive_rate,
    false_discovery_rate,
    false_omission_rate,
    positive_likelihood_ratio,
    negative_likelihood_ratio,
):
    _score.__doc__ = (_score.__doc__ or "") + _ARGS_DOC

# smp's aliases
precision = positive_predictive_value
recall = sensitivity
