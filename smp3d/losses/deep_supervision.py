"""A loss over the masks of a deep-supervised model, each level against a target downsampled to it.

A model built with ``deep_supervision=True`` returns, in training mode, ``[masks, coarser masks ...]``
(finest first). :class:`DeepSupervisionLoss` wraps any loss ``loss(prediction, target)`` and returns
``sum_i w_i * loss(prediction_i, target_i)``, where ``target_i`` is the target brought to level
``i``'s size:

- class-index maps (integer or bool targets): nearest-exact pick, which for a per-axis reduction
  ``r`` dividing the size is the voxel at offset ``r // 2`` of every block of ``r`` voxels (the
  target nnU-Net's ``DownsampleSegForDSTransform`` makes);
- soft, one-hot or probability targets (floating point): the mean over every block (area
  downsampling), so a level's target is the fraction of each class its voxels cover.

With a plain tensor (a model without deep supervision, or one in eval mode) it equals the wrapped
loss. Default weights follow nnU-Net's trainer (``nnUNetTrainer._build_loss``): ``1 / 2**i`` per level,
normalised to sum 1; nnU-Net also gives its coarsest output weight 0, and a smp3d model leaves that
level out already (``deep_supervision_levels=None``), so by default every level received is used; pass
``exclude_lowest=True`` for the masks of a model that returns every level (nnU-Net's own networks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DeepSupervisionLoss", "deep_supervision_weights", "downsample_target"]

TARGET_MODES = ("auto", "nearest", "area")


def deep_supervision_weights(levels: int, exclude_lowest: bool = False) -> tuple[float, ...]:
    """nnU-Net's level weights: ``1 / 2**i`` for level ``i`` (finest first), the coarsest set to 0 when
    ``exclude_lowest``, normalised to sum 1."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive int, got {levels!r}.")
    if exclude_lowest and levels < 2:
        raise ValueError("exclude_lowest=True needs at least 2 levels (it sets the coarsest weight to 0).")
    weights = [1 / 2**i for i in range(levels)]
    if exclude_lowest:
        weights[-1] = 0.0
    total = sum(weights)
    return tuple(w / total for w in weights)


def _nearest_exact_index(size_in: int, size_out: int, device: torch.device) -> torch.Tensor:
    scale = size_in / size_out
    index = ((torch.arange(size_out, device=device, dtype=torch.float64) + 0.5) * scale).floor().long()
    return index.clamp_(max=size_in - 1)


def downsample_target(target: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """``target`` ``(B, *spatial)`` or ``(B, C, *spatial)`` brought to the spatial ``size`` (its last
    ``len(size)`` axes): ``"nearest"`` picks voxels (nearest-exact; a strided view when the sizes
    divide), ``"area"`` averages blocks (floating-point result)."""
    spatial_dims = len(size)
    size_in = tuple(target.shape[-spatial_dims:])
    size = tuple(int(n) for n in size)
    if size_in == size:
        return target
    if any(m > n for n, m in zip(size_in, size, strict=True)):
        raise ValueError(f"Cannot downsample a target of spatial size {size_in} to the larger size {size}.")
    divides = all(n % m == 0 for n, m in zip(size_in, size, strict=True))
    if mode == "nearest":
        if divides:
            index = tuple(slice((n // m) // 2, None, n // m) for n, m in zip(size_in, size, strict=True))
            return target[(..., *index)]
        out = target
        for axis, (n, m) in enumerate(zip(size_in, size, strict=True)):
            if n != m:
                dim = target.dim() - spatial_dims + axis
                out = out.index_select(dim, _nearest_exact_index(n, m, target.device))
        return out
    if mode != "area":
        raise ValueError(f"target downsampling mode must be 'nearest' or 'area', got {mode!r}.")
    value = target if target.is_floating_point() else target.float()
    leading = value.shape[: value.dim() - spatial_dims]
    batched = value.reshape(math.prod(leading), 1, *size_in)  # channels as batch: pooling is per channel
    if divides:
        kernel = tuple(n // m for n, m in zip(size_in, size, strict=True))
        pooled = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial_dims - 1](batched, kernel, kernel)
    else:  # overlapping blocks of nearly equal size
        adaptive = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[spatial_dims - 1]
        pooled = adaptive(batched, size)
    return pooled.reshape(*leading, *size)


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over the levels of a deep-supervised prediction.

    Args:
        loss: any ``loss(prediction, target) -> Tensor`` (e.g. :class:`smp3d.losses.DiceLoss`).
        weights: one non-negative weight per level, finest first, used as given; ``None``: nnU-Net's
            ``1 / 2**i`` normalised to sum 1 (see :func:`deep_supervision_weights`), for however many
            levels the prediction has. Levels with weight 0 are not computed.
        reductions: the per-axis reduction of each level w.r.t. the target (``model.deep_supervision_reductions``);
            checked against the predictions' sizes. ``None``: read from the shapes.
        target_mode: ``"auto"`` (integer/bool targets: ``"nearest"``; floating point: ``"area"``),
            ``"nearest"`` or ``"area"``.
        exclude_lowest: with default weights, give the coarsest level weight 0 (nnU-Net's rule for a
            network that returns every level; smp3d models leave that level out themselves by default).

    ``forward(prediction, target)``: ``prediction`` is a tensor (then the result is ``loss(prediction,
    target)``) or a list/tuple of tensors, finest first; ``target`` is the full-resolution target
    (``(B, *spatial)`` class indices or ``(B, C, *spatial)``), or a list/tuple of per-level targets
    already downsampled.
    """

    def __init__(
        self,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        weights: Sequence[float] | None = None,
        reductions: Sequence[Sequence[int]] | None = None,
        target_mode: str = "auto",
        exclude_lowest: bool = False,
    ):
        super().__init__()
        if not callable(loss):
            raise TypeError(f"DeepSupervisionLoss: loss must be callable (loss(prediction, target)), got {loss!r}.")
        if target_mode not in TARGET_MODES:
            raise ValueError(f"DeepSupervisionLoss: target_mode must be one of {TARGET_MODES}, got {target_mode!r}.")
        if not isinstance(exclude_lowest, bool):
            raise ValueError(f"DeepSupervisionLoss: exclude_lowest must be True or False, got {exclude_lowest!r}.")
        if weights is not None:
            if exclude_lowest:
                raise ValueError("DeepSupervisionLoss: give either weights or exclude_lowest=True, not both.")
            weights = tuple(float(w) for w in weights)
            if not weights or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(
                    f"DeepSupervisionLoss: weights must be finite, non-negative and not all 0, got {weights}."
                )
        if reductions is not None:
            reductions = tuple(tuple(int(r) for r in level) for level in reductions)
            if not reductions or any(not level or min(level) < 1 for level in reductions):
                raise ValueError(
                    f"DeepSupervisionLoss: reductions must be one tuple of positive ints per level, got {reductions}."
                )
        self.loss = loss
        self.weights = weights
        self.reductions = reductions
        self.target_mode = target_mode
        self.exclude_lowest = exclude_lowest

    def level_weights(self, levels: int) -> tuple[float, ...]:
        """The weight of each of ``levels`` levels, finest first."""
        if self.weights is None:
            return deep_supervision_weights(levels, self.exclude_lowest)
        if len(self.weights) != levels:
            raise ValueError(
                f"DeepSupervisionLoss has {len(self.weights)} weights but the prediction has {levels} levels."
            )
        return self.weights

    def _mode(self, target: torch.Tensor) -> str:
        if self.target_mode != "auto":
            return self.target_mode
        return "area" if target.is_floating_point() else "nearest"

    def _check_reduction(self, level: int, size_in: tuple[int, ...], size: tuple[int, ...]) -> None:
        if self.reductions is None:
            return
        reduction = self.reductions[level]
        if len(reduction) != len(size) or any(
            m not in (n // r, -(-n // r)) for n, m, r in zip(size_in, size, reduction, strict=True)
        ):
            raise ValueError(
                f"DeepSupervisionLoss: level {level} has spatial size {size}, which is not the target's {size_in} "
                f"reduced by {reduction} per axis. Pass the model's deep_supervision_reductions, or reductions=None."
            )

    def forward(
        self, prediction: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        if isinstance(prediction, torch.Tensor):
            return self.loss(prediction, target)
        if not isinstance(prediction, (list, tuple)) or not prediction:
            raise TypeError(
                "DeepSupervisionLoss: prediction must be a tensor or a non-empty list/tuple of tensors (finest "
                f"first), got {type(prediction).__name__}. With an aux classification head pass outputs[0]."
            )
        levels = len(prediction)
        weights = self.level_weights(levels)
        if self.reductions is not None and len(self.reductions) != levels:
            raise ValueError(
                f"DeepSupervisionLoss has {len(self.reductions)} reductions but the prediction has {levels} levels."
            )
        if isinstance(target, (list, tuple)):
            if len(target) != levels:
                raise ValueError(
                    f"DeepSupervisionLoss: {len(target)} per-level targets for {levels} prediction levels."
                )
            targets: Sequence[torch.Tensor | None] = target
        else:
            targets = [None] * levels
        total: torch.Tensor | None = None
        for level, (pred, weight) in enumerate(zip(prediction, weights, strict=True)):
            if weight == 0:
                continue
            level_target = targets[level]
            if level_target is None:
                spatial_dims = pred.dim() - 2
                size = tuple(pred.shape[2:])
                size_in = tuple(target.shape[-spatial_dims:])
                self._check_reduction(level, size_in, size)
                level_target = downsample_target(target, size, self._mode(target))
            term = weight * self.loss(pred, level_target)
            total = term if total is None else total + term
        if total is None:  # unreachable: the weights are not all 0
            raise ValueError("DeepSupervisionLoss: every level has weight 0.")
        return total
