"""Matthews correlation coefficient loss for binary (B, 1, *spatial) predictions."""

from __future__ import annotations

import torch
from torch import nn

from ._common import (
    BINARY_MODE,
    check_flag,
    check_number,
    check_prediction,
    dense_targets,
    full_precision,
    smp_layout,
    to_float,
)

__all__ = ["MCCLoss"]


class MCCLoss(nn.Module):
    """1 - MCC, with MCC = (TP TN - FP FN) / sqrt((TP + FP)(TP + FN)(TN + FP)(TN + FN)) (Abhishek & Hamarneh, 2021).

    Same arguments, defaults and values as segmentation_models_pytorch 0.6.0 (binary only): the soft counts
    are summed over the whole batch and each is increased by ``eps``, so that a batch of one class stays
    defined. The square root is taken per factor, which avoids overflow on large volumes.

    Args:
        eps: added to each of TP, TN, FP, FN.
        from_logits: apply a sigmoid first; ``False`` (smp's behaviour) expects probabilities.

    Shapes: prediction (B, 1, *spatial); target (B, 1, *spatial) or (B, *spatial) in [0, 1].
    """

    def __init__(self, eps: float = 1e-5, from_logits: bool = False) -> None:
        super().__init__()
        owner = type(self).__name__
        self.eps = check_number(eps, "eps", owner, 0.0)
        self.from_logits = check_flag(from_logits, "from_logits", owner)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        y_pred, y_true = smp_layout(y_pred, y_true, BINARY_MODE)  # smp's shapes without spatial axes
        check_prediction(y_pred, owner, binary=True)
        with full_precision(y_pred):
            pred = to_float(y_pred)
            if self.from_logits:
                pred = torch.sigmoid(pred)
            target, _ = dense_targets(pred, y_true, BINARY_MODE, None, owner)
            true_positive = (pred * target).sum() + self.eps
            true_negative = ((1.0 - pred) * (1.0 - target)).sum() + self.eps
            false_positive = (pred * (1.0 - target)).sum() + self.eps
            false_negative = ((1.0 - pred) * target).sum() + self.eps
            numerator = true_positive * true_negative - false_positive * false_negative
            denominator = (
                (true_positive + false_positive).sqrt()
                * (true_positive + false_negative).sqrt()
                * (true_negative + false_positive).sqrt()
                * (true_negative + false_negative).sqrt()
            )
            return 1.0 - numerator / denominator
