"""Segmentation metrics for (B, C, *spatial) tensors, any number of spatial axes.

:func:`get_stats` counts true/false positives/negatives per sample and class; the score functions (smp 0.6's
names and reductions, plus :func:`dice_score`) turn counts into numbers. :func:`dice_per_class` and
:class:`SegmentationMetrics` serve training loops; the latter reports each score's mean over every class
(``mean_dice_all``) and over the foreground classes (``mean_dice_foreground``).
"""

from .accumulator import MetricsResult, SegmentationMetrics, dice_per_class, foreground_classes
from .scores import (
    REDUCTIONS,
    accuracy,
    balanced_accuracy,
    dice_score,
    f1_score,
    false_discovery_rate,
    false_negative_rate,
    false_omission_rate,
    false_positive_rate,
    fbeta_score,
    iou_score,
    negative_likelihood_ratio,
    negative_predictive_value,
    positive_likelihood_ratio,
    positive_predictive_value,
    precision,
    recall,
    sensitivity,
    specificity,
)
from .stats import MODES, get_stats

__all__ = [
    "MODES",
    "REDUCTIONS",
    "MetricsResult",
    "SegmentationMetrics",
    "accuracy",
    "balanced_accuracy",
    "dice_per_class",
    "dice_score",
    "f1_score",
    "false_discovery_rate",
    "false_negative_rate",
    "false_omission_rate",
    "false_positive_rate",
    "fbeta_score",
    "foreground_classes",
    "get_stats",
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
