"""Generalized Dice loss (Sudre et al., 2017) for (B, C, *spatial) tensors with any number of spatial axes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    BINARY_MODE,
    MULTICLASS_MODE,
    check_flag,
    check_ignore_index,
    check_mode,
    check_number,
    check_prediction,
    dense_targets,
    full_precision,
    smp_layout,
    to_float,
)

__all__ = ["GeneralizedDiceLoss"]


def generalized_dice_weights(target_sum: torch.Tensor) -> torch.Tensor:
    """Class weights w_c = 1 / (sum of target_c)^2 from per-class target volumes (C,).

    Guard: a class absent from the batch (volume 0, weight infinite) gets the largest weight among the
    present classes, so predicting it is still penalised without dominating the loss; when no class is
    present every weight is 1.
    """
    present = target_sum > 0
    weights = torch.where(present, 1.0 / target_sum.clamp_min(torch.finfo(target_sum.dtype).tiny) ** 2, 0.0)
    largest = weights.max()
    fill = torch.where(largest > 0, largest, torch.ones_like(largest))
    return torch.where(present, weights, fill).detach()


class GeneralizedDiceLoss(nn.Module):
    """Generalized Dice loss: 1 - (2 sum_c w_c I_c + smooth) / (sum_c w_c (P_c + T_c) + smooth).

    I_c = sum(p t), P_c = sum(p), T_c = sum(t) over the batch and all spatial positions (one term per
    class, as smp's Dice), with w_c = 1 / T_c^2 so that small structures weigh as much as large ones
    (Sudre et al., 2017, arXiv:1707.03237). Absent classes (T_c = 0) get the largest weight of the present
    classes; if no class is present all weights are 1 (see :func:`generalized_dice_weights`).

    In binary mode the background (1 - p, 1 - t) is added as a second class, as in the paper, since with a
    single class the weights cancel and the loss is plain Dice.

    Args:
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        from_logits: apply softmax (multiclass) or sigmoid (binary/multilabel) to the prediction first.
        ignore_index: target value whose positions do not count (prediction and target are zeroed there).
        eps: lower bound of the denominator.
        smooth: added to numerator and denominator.

    Shapes: as :class:`smp3d.losses.DiceLoss`. Returns a scalar computed in float32 (float64 stays float64).
    """

    def __init__(
        self,
        mode: str,
        from_logits: bool = True,
        ignore_index: int | None = None,
        eps: float = 1e-7,
        smooth: float = 0.0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.mode = check_mode(mode, owner)
        self.from_logits = check_flag(from_logits, "from_logits", owner)
        self.ignore_index = check_ignore_index(ignore_index, owner)
        self.eps = check_number(eps, "eps", owner, 0.0)
        self.smooth = check_number(smooth, "smooth", owner, 0.0)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        y_pred, y_true = smp_layout(y_pred, y_true, self.mode)  # smp's shapes without spatial axes
        check_prediction(y_pred, owner, binary=self.mode == BINARY_MODE)
        with full_precision(y_pred):
            pred = to_float(y_pred)
            if self.from_logits:
                pred = F.log_softmax(pred, dim=1).exp() if self.mode == MULTICLASS_MODE else F.logsigmoid(pred).exp()
            target, valid = dense_targets(pred, y_true, self.mode, self.ignore_index, owner)
            if self.mode == BINARY_MODE:
                pred = torch.cat([1.0 - pred, pred], dim=1)
                target = torch.cat([1.0 - target, target], dim=1)
            if valid is not None:
                pred = pred * valid
                target = target * valid
            batch, channels = pred.shape[:2]
            pred = pred.reshape(batch, channels, -1)
            target = target.reshape(batch, channels, -1)
            dims = (0, 2)
            weights = generalized_dice_weights(target.sum(dims))
            intersection = (weights * (pred * target).sum(dims)).sum()
            total = (weights * (pred + target).sum(dims)).sum()
            return 1.0 - (2.0 * intersection + self.smooth) / (total + self.smooth).clamp_min(self.eps)
