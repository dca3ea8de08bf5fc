"""Focal loss for (B, C, *spatial) tensors with any number of spatial axes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._common import (
    BINARY_MODE,
    MULTICLASS_MODE,
    check_class_selection,
    check_flag,
    check_ignore_index,
    check_mode,
    check_number,
    check_prediction,
    check_reduction,
    dense_targets,
    full_precision,
    smp_layout,
    to_float,
    weighted_class_mean,
)
from ._functional import focal_term

__all__ = ["FocalLoss"]

# Floor of the normaliser of ``normalized=True`` (smp's functional default, independent of ``eps``).
_NORMALIZE_EPS = 1e-6


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., 2017), one-vs-rest per channel in multiclass and multilabel modes.

    Same arguments, defaults and values as segmentation_models_pytorch 0.6.0, in any number of spatial axes.
    Each channel's loss is reduced over the batch and the non-ignored positions, then channels are averaged
    (weighted by ``class_weights`` when given).

    Args:
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        alpha: weight of the positive term, ``alpha t + (1 - alpha)(1 - t)``; ``None`` for no weighting.
        gamma: focusing exponent on (1 - p_t).
        ignore_index: target value whose positions do not count.
        from_logits: ``False`` when the prediction holds probabilities: they are clamped to
            [eps, 1 - eps] and mapped back to logits (to ``log p`` in multiclass mode, as smp does).
        eps: clamp of probabilities when ``from_logits=False``.
        reduction: ``"mean"`` (over non-ignored positions), ``"sum"`` or ``"none"``. ``"none"`` returns a
            (B, *spatial) map of the per-position loss averaged over channels, 0 at ignored positions
            (smp returns a flat vector of the kept positions instead).
        normalized: divide each channel's loss by the sum of its focal factors (arXiv:1909.07829).
        reduced_threshold: reduced focal loss (arXiv:1903.01347); use with ``reduction="sum"``.
        class_weights: one non-negative weight per channel (not with ``"binary"``).

    Shapes: as :class:`smp3d.losses.DiceLoss`. Computed in float32 (float64 stays float64), autocast off.
    If every position is ignored the loss is 0 (smp returns NaN).
    """

    def __init__(
        self,
        mode: str,
        alpha: float | None = None,
        gamma: float = 2.0,
        ignore_index: int | None = None,
        from_logits: bool = True,
        eps: float = 1e-7,
        reduction: str = "mean",
        normalized: bool = False,
        reduced_threshold: float | None = None,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.mode = check_mode(mode, owner)
        self.reduction = check_reduction(reduction, owner)
        _, weights = check_class_selection(None, class_weights, mode, owner)
        self.register_buffer("class_weights", weights, persistent=False)
        self.alpha = check_number(alpha, "alpha", owner, 0.0, 1.0, optional=True)
        check_number(reduced_threshold, "reduced_threshold", owner, 0.0, low_open=True, optional=True)
        self.gamma = check_number(gamma, "gamma", owner, 0.0)
        self.ignore_index = check_ignore_index(ignore_index, owner)
        self.from_logits = check_flag(from_logits, "from_logits", owner)
        self.eps = check_number(eps, "eps", owner, 0.0)
        self.normalized = check_flag(normalized, "normalized", owner)
        self.reduced_threshold = reduced_threshold

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        y_pred, y_true = smp_layout(y_pred, y_true, self.mode)  # smp's shapes without spatial axes
        check_prediction(y_pred, owner, binary=self.mode == BINARY_MODE)
        with full_precision(y_pred):
            logits = to_float(y_pred)
            if not self.from_logits:
                probability = logits.clamp(self.eps, 1.0 - self.eps)
                if self.mode == MULTICLASS_MODE:
                    logits = torch.log(probability)
                else:
                    logits = torch.log(probability) - torch.log1p(-probability)
            target, valid = dense_targets(logits, y_true, self.mode, self.ignore_index, owner)
            loss, factor = focal_term(logits, target, self.gamma, self.alpha, self.reduced_threshold)
            if valid is not None:
                loss = loss * valid
                factor = factor * valid
            channels = loss.shape[1]
            dims = (0, *range(2, loss.ndim))
            broadcast = (1, channels) + (1,) * (loss.ndim - 2)
            if self.normalized:
                loss = loss / factor.sum(dims).clamp_min(_NORMALIZE_EPS).view(broadcast)
            if self.reduction == "none":
                if self.class_weights is None:
                    return loss.mean(1)
                weights = self.class_weights.to(loss).view(broadcast)
                return (loss * weights).sum(1) / weights.sum()
            per_class = loss.sum(dims)
            if self.reduction == "mean":
                if valid is None:
                    count = torch.full_like(per_class, loss.numel() // channels)
                else:
                    count = valid.expand_as(loss).sum(dims).to(per_class.dtype)
                per_class = per_class / count.clamp_min(1)
            return weighted_class_mean(per_class, None, self.class_weights, owner)
