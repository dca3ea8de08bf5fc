"""Cross-entropy losses for (B, C, *spatial) tensors: soft-label BCE and CE, and per-batch weighted CE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    check_ignore_index,
    check_number,
    check_prediction,
    check_reduction,
    check_tensor_weight,
    class_map,
    full_precision,
    to_float,
)

__all__ = ["SoftBCEWithLogitsLoss", "SoftCrossEntropyLoss", "WeightedCrossEntropyLoss"]


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _per_channel(weight: torch.Tensor | None, pred: torch.Tensor, name: str, owner: str) -> torch.Tensor | None:
    """A 1-D ``weight`` of C entries applies per channel of (B, C, *spatial); other shapes broadcast as given."""
    if weight is None:
        return None
    weight = weight.to(device=pred.device, dtype=pred.dtype)
    if weight.ndim == 1 and weight.numel() != 1 and pred.ndim >= 2:
        if weight.numel() != pred.shape[1]:
            raise ValueError(
                f"{owner}: a 1-D `{name}` holds one value per channel: expected {pred.shape[1]} entries for a "
                f"prediction of shape {tuple(pred.shape)}, got {weight.numel()}."
            )
        weight = weight.view((-1,) + (1,) * (pred.ndim - 2))
    return weight


class SoftBCEWithLogitsLoss(nn.Module):
    """``torch.nn.BCEWithLogitsLoss`` with ``ignore_index`` and label smoothing, for (B, C, *spatial).

    Same arguments, defaults and values as segmentation_models_pytorch 0.6.0. With ``smooth_factor`` s the
    target t becomes t (1 - s) + (1 - t) s. Positions where the target equals ``ignore_index`` contribute 0;
    as in smp, ``"mean"`` still divides by the number of all elements.

    Args:
        weight: rescaling weight, broadcast against the prediction; a 1-D tensor of C values is per channel.
        ignore_index: target value whose positions contribute 0 (``None`` to disable).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (a loss shaped like the prediction).
        smooth_factor: label smoothing s in [0, 1], or ``None``.
        pos_weight: weight of positive examples, broadcast like ``weight`` (1-D of C values: per channel).

    Shapes: prediction (B, C, *spatial) logits; target of the same shape, or (B, *spatial) when C = 1.
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int | None = -100,
        reduction: str = "mean",
        smooth_factor: float | None = None,
        pos_weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.reduction = check_reduction(reduction, owner)
        check_number(smooth_factor, "smooth_factor", owner, 0.0, 1.0, optional=True)
        self.ignore_index = check_ignore_index(ignore_index, owner)
        self.smooth_factor = smooth_factor
        weight = check_tensor_weight(weight, "weight", owner)
        pos_weight = check_tensor_weight(pos_weight, "pos_weight", owner)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        check_prediction(y_pred, owner, min_spatial=-1)  # as smp: any shape with a batch axis
        if not isinstance(y_true, torch.Tensor):
            raise TypeError(f"{owner}: the target must be a torch.Tensor, got {type(y_true).__name__}.")
        if y_pred.ndim > 1 and y_pred.shape[1] == 1 and y_true.ndim == y_pred.ndim - 1:
            y_true = y_true.unsqueeze(1)
        if y_true.shape != y_pred.shape:
            raise ValueError(
                f"{owner}: the target must have the prediction's shape {tuple(y_pred.shape)} "
                f"(or (B, *spatial) when C = 1), got shape {tuple(y_true.shape)}."
            )
        with full_precision(y_pred):
            pred = to_float(y_pred)
            target = y_true.to(device=pred.device, dtype=pred.dtype)
            soft = target
            if self.smooth_factor is not None:
                soft = target * (1.0 - self.smooth_factor) + (1.0 - target) * self.smooth_factor
            loss = F.binary_cross_entropy_with_logits(
                pred,
                soft,
                _per_channel(self.weight, pred, "weight", owner),
                pos_weight=_per_channel(self.pos_weight, pred, "pos_weight", owner),
                reduction="none",
            )
            if self.ignore_index is not None:
                loss = loss * (y_true != self.ignore_index).to(device=loss.device, dtype=loss.dtype)
            return _reduce(loss, self.reduction)


class SoftCrossEntropyLoss(nn.Module):
    """``torch.nn.CrossEntropyLoss`` with label smoothing, for (B, C, *spatial) logits and class-index targets.

    Same arguments, defaults and values as segmentation_models_pytorch 0.6.0:
    loss = (1 - s) NLL + (s / C) sum_c -log p_c, reduced separately, with s = ``smooth_factor`` (``None``
    means 0; smp fails on ``None``). Positions equal to ``ignore_index`` contribute 0; as in smp, ``"mean"``
    still divides by the number of all positions.

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (a (B, *spatial) loss map).
        smooth_factor: label smoothing s in [0, 1], or ``None``.
        ignore_index: target value whose positions contribute 0 (``None`` to disable).
        dim: the class axis of the prediction.

    Shapes: prediction (B, C, *spatial); target (B, *spatial) integer indices ((B, 1, *spatial) accepted).
    """

    def __init__(
        self,
        reduction: str = "mean",
        smooth_factor: float | None = None,
        ignore_index: int | None = -100,
        dim: int = 1,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.reduction = check_reduction(reduction, owner)
        check_number(smooth_factor, "smooth_factor", owner, 0.0, 1.0, optional=True)
        self.smooth_factor = smooth_factor
        self.ignore_index = check_ignore_index(ignore_index, owner)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ValueError(f"{owner}: dim must be an int (the class axis of the prediction), got {dim!r}.")
        self.dim = dim

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        check_prediction(y_pred, owner, min_spatial=0)  # as smp: (B, C) logits too
        if not -y_pred.ndim <= self.dim < y_pred.ndim:
            raise ValueError(f"{owner}: dim={self.dim} is out of range for a {y_pred.ndim}D prediction.")
        dim = self.dim % y_pred.ndim
        labels = class_map(y_pred, y_true, self.ignore_index, owner, channel_dim=dim)
        with full_precision(y_pred):
            log_probability = F.log_softmax(to_float(y_pred), dim=dim)
            valid = None if self.ignore_index is None else labels != self.ignore_index
            index = labels if valid is None else labels.masked_fill(~valid, 0)
            nll = -torch.gather(log_probability, dim, index.unsqueeze(dim)).squeeze(dim)
            uniform = -log_probability.sum(dim)
            if valid is not None:
                nll = nll * valid
                uniform = uniform * valid
            smoothing = 0.0 if self.smooth_factor is None else self.smooth_factor
            num_classes = log_probability.shape[dim]
            return (1.0 - smoothing) * _reduce(nll, self.reduction) + smoothing / num_classes * _reduce(
                uniform, self.reduction
            )


class WeightedCrossEntropyLoss(nn.Module):
    """Cross-entropy with class weights recomputed from every batch's predictions (pytorch-3dunet's WCE).

    With p the softmax of the prediction, w_c = sum(1 - p_c) / sum(p_c) over the batch and all spatial
    positions (ignored ones included, as in pytorch-3dunet): classes the network currently under-predicts
    weigh more. The weights carry no gradient. The loss is ``F.cross_entropy`` with these weights, so
    ``"mean"`` is the weighted mean over the non-ignored positions (Sudre et al., 2017, arXiv:1707.03237).

    Args:
        ignore_index: target value whose positions do not count; pytorch-3dunet's default -1
            (``None`` to disable).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (a (B, *spatial) loss map).
        eps: floor of sum(p_c), so that a class the network never predicts gets a large finite weight
            (pytorch-3dunet has no floor).

    Shapes: prediction (B, C, *spatial) logits; target (B, *spatial) integer indices ((B, 1, *spatial)
    accepted). Computed in float32 (float64 stays float64), autocast off.
    """

    def __init__(self, ignore_index: int | None = -1, reduction: str = "mean", eps: float = 1e-7) -> None:
        super().__init__()
        owner = type(self).__name__
        self.reduction = check_reduction(reduction, owner)
        self.ignore_index = check_ignore_index(ignore_index, owner)
        self.eps = check_number(eps, "eps", owner, 0.0)

    @staticmethod
    def class_weights(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
        """Per-batch class weights (C,) from logits (B, C, *spatial): sum(1 - p_c) / sum(p_c), detached."""
        probability = F.softmax(to_float(logits), dim=1)
        dims = (0, *range(2, probability.ndim))
        return ((1.0 - probability).sum(dims) / probability.sum(dims).clamp_min(eps)).detach()

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        check_prediction(y_pred, owner, min_spatial=0)  # as smp: (B, C) logits too
        labels = class_map(y_pred, y_true, self.ignore_index, owner)
        with full_precision(y_pred):
            logits = to_float(y_pred)
            return F.cross_entropy(
                logits,
                labels,
                weight=self.class_weights(logits, self.eps),
                # class_map guarantees every label is a class or ignore_index; -100 then never matches
                ignore_index=-100 if self.ignore_index is None else self.ignore_index,
                reduction=self.reduction,
            )
