"""Overlap losses: Dice, Jaccard (IoU) and Tversky, for (B, C, *spatial) tensors with any number of spatial axes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    MULTICLASS_MODE,
    check_class_selection,
    check_flag,
    check_ignore_index,
    check_mode,
    check_number,
    check_prediction,
    dense_targets,
    full_precision,
    smp_layout,
    to_float,
    weighted_class_mean,
)
from ._functional import soft_tversky_score

__all__ = ["DiceLoss", "JaccardLoss", "TverskyLoss"]


class TverskyLoss(nn.Module):
    """Tversky loss 1 - TP / (TP + alpha FP + beta FN), averaged over classes, raised to ``gamma``.

    Same arguments, defaults and values as segmentation_models_pytorch 0.6.0, in any number of spatial axes.
    TP/FP/FN are summed over the batch and all spatial positions (one score per class). A class with no
    target voxel in the batch contributes 0 (its score is undefined) but still counts in the mean.

    Args:
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"`` (see :data:`smp3d.losses.BINARY_MODE` ...).
        classes: channel indices that enter the mean; all by default (not with ``"binary"``).
        log_loss: ``-log(score)`` instead of ``1 - score``.
        from_logits: apply softmax (multiclass) or sigmoid (binary/multilabel) to the prediction first.
        smooth: added to numerator and denominator of the score.
        ignore_index: target value whose positions do not count (prediction and target are zeroed there).
        eps: lower bound of the score's denominator (and of the score under ``log_loss``).
        alpha: weight of false positives; beta: weight of false negatives (0.5 / 0.5 is Dice).
        gamma: exponent applied to the class-averaged loss.
        class_weights: one non-negative weight per channel for the class mean (not with ``"binary"``).

    Shapes: prediction (B, C, *spatial); target (B, *spatial) integer indices in multiclass mode
    ((B, 1, *spatial) accepted), (B, C, *spatial) in multilabel mode, (B, 1, *spatial) or (B, *spatial) in
    binary mode (C = 1). Returns a scalar computed in float32 (float64 stays float64), autocast off.
    """

    def __init__(
        self,
        mode: str,
        classes: Sequence[int] | None = None,
        log_loss: bool = False,
        from_logits: bool = True,
        smooth: float = 0.0,
        ignore_index: int | None = None,
        eps: float = 1e-7,
        alpha: float = 0.5,
        beta: float = 0.5,
        gamma: float = 1.0,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.mode = check_mode(mode, owner)
        self.classes, weights = check_class_selection(classes, class_weights, mode, owner)
        self.register_buffer("class_weights", weights, persistent=False)
        self.log_loss = check_flag(log_loss, "log_loss", owner)
        self.from_logits = check_flag(from_logits, "from_logits", owner)
        self.smooth = check_number(smooth, "smooth", owner, 0.0)
        self.ignore_index = check_ignore_index(ignore_index, owner)
        self.eps = check_number(eps, "eps", owner, 0.0)
        self.alpha = check_number(alpha, "alpha", owner, 0.0)
        self.beta = check_number(beta, "beta", owner, 0.0)
        self.gamma = check_number(gamma, "gamma", owner, 0.0, low_open=True)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        y_pred, y_true = smp_layout(y_pred, y_true, self.mode)  # smp's shapes without spatial axes
        check_prediction(y_pred, owner, binary=self.mode == "binary")
        with full_precision(y_pred):
            pred = to_float(y_pred)
            if self.from_logits:
                # log-space then exp: no saturation of the gradient at probabilities 0 and 1
                pred = F.log_softmax(pred, dim=1).exp() if self.mode == MULTICLASS_MODE else F.logsigmoid(pred).exp()
            target, valid = dense_targets(pred, y_true, self.mode, self.ignore_index, owner)
            if valid is not None:
                pred = pred * valid
            batch, channels = pred.shape[:2]
            pred = pred.reshape(batch, channels, -1)
            target = target.reshape(batch, channels, -1)
            dims = (0, 2)
            score = soft_tversky_score(pred, target, self.alpha, self.beta, self.smooth, self.eps, dims)
            loss = -torch.log(score.clamp_min(self.eps)) if self.log_loss else 1.0 - score
            loss = loss * (target.sum(dims) > 0).to(loss.dtype)
            return weighted_class_mean(loss, self.classes, self.class_weights, owner) ** self.gamma


class DiceLoss(TverskyLoss):
    """Dice loss 1 - 2 TP / (2 TP + FP + FN): :class:`TverskyLoss` with alpha = beta = 0.5, gamma = 1.

    Same arguments, defaults and values as segmentation_models_pytorch 0.6.0's ``DiceLoss``; see
    :class:`TverskyLoss` for the arguments and shapes.
    """

    def __init__(
        self,
        mode: str,
        classes: Sequence[int] | None = None,
        log_loss: bool = False,
        from_logits: bool = True,
        smooth: float = 0.0,
        ignore_index: int | None = None,
        eps: float = 1e-7,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, 0.5, 0.5, 1.0, class_weights)


class JaccardLoss(TverskyLoss):
    """Jaccard (IoU) loss 1 - TP / (TP + FP + FN): :class:`TverskyLoss` with alpha = beta = 1, gamma = 1.

    Same arguments, defaults and values as segmentation_models_pytorch 0.6.0's ``JaccardLoss``; see
    :class:`TverskyLoss` for the arguments and shapes.
    """

    def __init__(
        self,
        mode: str,
        classes: Sequence[int] | None = None,
        log_loss: bool = False,
        from_logits: bool = True,
        smooth: float = 0.0,
        ignore_index: int | None = None,
        eps: float = 1e-7,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, 1.0, 1.0, 1.0, class_weights)
