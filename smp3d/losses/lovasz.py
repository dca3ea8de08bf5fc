"""Lovasz hinge and Lovasz-softmax losses (Berman et al., 2018), N-D and vectorised over images and classes."""

from __future__ import annotations

import torch
from torch import nn

from ._common import (
    MULTICLASS_MODE,
    check_flag,
    check_ignore_index,
    check_mode,
    check_prediction,
    class_map,
    dense_targets,
    full_precision,
    smp_layout,
    to_float,
)
from ._functional import lovasz_gradient

__all__ = ["LovaszLoss"]

# Probability clamp used to turn probabilities back into logits for the hinge (from_logits=False).
_LOGIT_EPS = 1e-7


def lovasz_hinge(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Binary Lovasz hinge per group: ``logits``, ``labels`` (G, P) -> mean over the G groups of the loss.

    Ignored positions (``valid`` False) get the lowest error so that they sort last, and count as neither
    foreground nor error: the result equals the loss over the kept positions only.
    """
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    if valid is not None:
        labels = labels * valid
        errors = torch.where(valid, errors, torch.finfo(errors.dtype).min)
    errors_sorted, order = torch.sort(errors, dim=-1, descending=True)
    gradient = lovasz_gradient(torch.gather(labels, -1, order))
    return (torch.relu(errors_sorted) * gradient).sum(-1).mean()


def lovasz_softmax(probabilities: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Lovasz-softmax per group: ``probabilities`` (G, C, P), ``labels`` (G, P) long -> scalar.

    Per group, the mean over the classes present in its labels (0 when none); then the mean over groups.
    """
    classes = torch.arange(probabilities.shape[1], device=labels.device).view(1, -1, 1)
    foreground = (labels.unsqueeze(1) == classes).to(probabilities.dtype)
    errors = (foreground - probabilities).abs()
    if valid is not None:
        valid = valid.unsqueeze(1).expand_as(errors)
        foreground = foreground * valid
        # valid errors are >= 0, so -1 sorts the ignored positions last
        errors = torch.where(valid, errors, -1.0)
    errors_sorted, order = torch.sort(errors, dim=-1, descending=True)
    gradient = lovasz_gradient(torch.gather(foreground, -1, order))
    if valid is not None:
        errors_sorted = errors_sorted * torch.gather(valid, -1, order)
    per_class = (errors_sorted * gradient).sum(-1)
    present = (foreground.sum(-1) > 0).to(per_class.dtype)
    per_group = (per_class * present).sum(-1) / present.sum(-1).clamp_min(1)
    return per_group.mean()


class LovaszLoss(nn.Module):
    """Lovasz loss: a convex surrogate of the Jaccard loss, optimised directly (Berman et al., 2018).

    Same arguments, defaults and values as segmentation_models_pytorch 0.6.0, in any number of spatial axes.
    Binary and multilabel modes use the Lovasz hinge on logits, all channels of an image forming one binary
    problem; multiclass mode uses the Lovasz-softmax averaged over the classes present in the target.

    Args:
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        per_image: compute the loss per image and average over the batch, instead of over the whole batch.
        ignore_index: target value whose positions do not count.
        from_logits: ``False`` when the prediction holds probabilities: multiclass skips the softmax,
            binary/multilabel map them back to logits (smp ignores this argument and assumes logits).

    Shapes: as :class:`smp3d.losses.DiceLoss`. Computed in float32 (float64 stays float64), autocast off.
    """

    def __init__(
        self,
        mode: str,
        per_image: bool = False,
        ignore_index: int | None = None,
        from_logits: bool = True,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.mode = check_mode(mode, owner)
        self.per_image = check_flag(per_image, "per_image", owner)
        self.ignore_index = check_ignore_index(ignore_index, owner)
        self.from_logits = check_flag(from_logits, "from_logits", owner)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        y_pred, y_true = smp_layout(y_pred, y_true, self.mode)  # smp's shapes without spatial axes
        check_prediction(y_pred, owner, binary=self.mode == "binary")
        with full_precision(y_pred):
            pred = to_float(y_pred)
            batch, channels = pred.shape[:2]
            groups = batch if self.per_image else 1
            if self.mode == MULTICLASS_MODE:
                labels = class_map(pred, y_true, self.ignore_index, owner)
                probabilities = pred.softmax(dim=1) if self.from_logits else pred
                probabilities = probabilities.reshape(batch, channels, -1)
                if not self.per_image:
                    probabilities = probabilities.transpose(0, 1).reshape(1, channels, -1)
                valid = None if self.ignore_index is None else (labels != self.ignore_index).reshape(groups, -1)
                return lovasz_softmax(probabilities, labels.reshape(groups, -1), valid)
            if not self.from_logits:
                pred = torch.logit(pred, eps=_LOGIT_EPS)
            target, valid = dense_targets(pred, y_true, self.mode, self.ignore_index, owner)
            if valid is not None:
                valid = valid.expand_as(pred).reshape(groups, -1)
            return lovasz_hinge(pred.reshape(groups, -1), target.reshape(groups, -1), valid)
