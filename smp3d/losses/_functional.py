"""Stateless loss pieces, dims-agnostic: each works on tensors of any shape."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["focal_term", "lovasz_gradient", "soft_tversky_score"]


def soft_tversky_score(
    pred: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    smooth: float = 0.0,
    eps: float = 1e-7,
    dims: Sequence[int] | None = None,
) -> torch.Tensor:
    """Tversky index TP / (TP + alpha FP + beta FN), summed over ``dims`` (everything when ``None``).

    TP is (sum p + sum t - |p - t|_1) / 2, which equals sum(p t) for hard targets and stays a proper
    overlap for soft targets (Wang et al., 2023, arXiv:2302.05666). alpha = beta = 0.5 gives Dice,
    alpha = beta = 1 gives Jaccard. ``smooth`` is added to both sides; the denominator is at least ``eps``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must have one shape.")
    dims = tuple(range(pred.ndim)) if dims is None else tuple(dims)
    pred_sum = pred.sum(dims)
    target_sum = target.sum(dims)
    distance = (pred - target).abs().sum(dims)
    true_positive = (pred_sum + target_sum - distance) / 2
    false_positive = pred_sum - true_positive
    false_negative = target_sum - true_positive
    denominator = true_positive + alpha * false_positive + beta * false_negative + smooth
    return (true_positive + smooth) / denominator.clamp_min(eps)


def focal_term(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float,
    alpha: float | None,
    reduced_threshold: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise sigmoid focal loss and its modulating factor (Lin et al., 2017).

    loss = (1 - p_t)^gamma * BCE(logits, target), times alpha t + (1 - alpha)(1 - t) when ``alpha`` is set.
    With ``reduced_threshold`` the factor is ((1 - p_t) / threshold)^gamma, and 1 where p_t < threshold
    (reduced focal loss, arXiv:1903.01347). Returns (loss, factor), both shaped like ``logits``.
    """
    cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_true = torch.exp(-cross_entropy)
    if reduced_threshold is None:
        factor = (1.0 - p_true).pow(gamma)
    else:
        factor = ((1.0 - p_true) / reduced_threshold).pow(gamma)
        factor = torch.where(p_true < reduced_threshold, torch.ones_like(factor), factor)
    loss = factor * cross_entropy
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss, factor


def lovasz_gradient(foreground_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss (Berman et al., 2018, Alg. 1).

    ``foreground_sorted``: (..., P) ground truth ordered by decreasing error along the last axis.
    Returns (..., P): the increments of 1 - IoU as the errors, in that order, are counted as mistakes.
    """
    total = foreground_sorted.sum(-1, keepdim=True)
    intersection = total - foreground_sorted.cumsum(-1)
    union = total + (1.0 - foreground_sorted).cumsum(-1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)
