"""Batch norm that also trains on a single value per channel (a branch pooled to one cell, batch 1)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from .factories import batch_norm

__all__ = ["SingleCellBatchNorm", "single_cell_safe"]


class SingleCellBatchNorm(_BatchNorm):
    """Batch norm (any spatial_dims) for a branch pooled to a single cell.

    In training, a batch of one sample then holds a single value per channel, which has no
    batch statistics (torch raises); this layer normalizes it with its running statistics
    instead (not updating them), as in eval mode. Any other input is plain batch norm, and the
    parameters and buffers are those of ``nn.BatchNorm2d``/``3d``, so state dicts are unchanged.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 3:
            raise ValueError(f"SingleCellBatchNorm expects a (B, C, *spatial) input, got shape {x.shape}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.track_running_stats and x.numel() == x.shape[1]:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if torch.jit.is_scripting():  # TorchScript cannot call super().forward: the same batch norm, spelled out
            return self._batch_norm(x)
        return super().forward(x)

    def _batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        """``_BatchNorm.forward``'s computation: batch statistics in training (updating the running ones
        with ``momentum``, or a cumulative average when it is None), running statistics in eval."""
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        keep_running = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean if keep_running else None,
            self.running_var if keep_running else None,
            self.weight,
            self.bias,
            use_batch,
            factor,
            self.eps,
        )


def single_cell_safe(norm: nn.Module, spatial_dims: int) -> nn.Module:
    """Swap a plain batch norm for :class:`SingleCellBatchNorm` with the same settings; keep anything else."""
    if type(norm) is batch_norm(spatial_dims) and norm.track_running_stats:
        return SingleCellBatchNorm(norm.num_features, norm.eps, norm.momentum, norm.affine, True)
    return norm
