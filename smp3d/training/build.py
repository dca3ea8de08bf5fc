"""The model, loss, optimiser and learning-rate schedule of a run, each from its :class:`TrainConfig`."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from .config import LOSSES, OPTIMIZERS, SCHEDULERS, TrainConfig
from .errors import TrainingError


def build_model(config: TrainConfig) -> nn.Module:
    """``smp3d.create_model`` with the config's architecture, encoder and arguments; the patch
    must be divisible by the model's reduction when the model needs that."""
    from ..models import create_model

    model = create_model(
        config.arch,
        encoder_name=config.encoder,
        encoder_weights=config.encoder_weights,
        in_channels=config.in_channels,
        classes=config.classes,
        spatial_dims=config.spatial_dims,
        **_model_kwargs(config),
    )
    check_patch_fits_model(model, config.patch)
    return model


def _model_kwargs(config: TrainConfig) -> dict[str, Any]:
    kwargs = dict(config.model_kwargs)
    if config.deep_supervision:
        if kwargs.get("deep_supervision", True) is not True:
            raise TrainingError("--deep-supervision contradicts deep_supervision=false in the model arguments")
        kwargs["deep_supervision"] = True
    return kwargs


def deep_supervision_loss(model: nn.Module, loss: nn.Module) -> nn.Module:
    """``loss`` itself, or wrapped in :class:`~smp3d.losses.DeepSupervisionLoss` when the model returns one
    mask per decoder level in training; targets are class labels, so they are downsampled by picking."""
    if not getattr(model, "deep_supervision", False):
        return loss
    from ..losses import DeepSupervisionLoss

    return DeepSupervisionLoss(loss, reductions=model.deep_supervision_reductions, target_mode="nearest")


def check_patch_fits_model(model: nn.Module, patch: tuple[int, ...], what: str = "--patch") -> None:
    if not getattr(model, "requires_divisible_input_shape", False):
        return
    stride = tuple(getattr(model, "output_stride", (1,) * len(patch)))
    if any(p % s for p, s in zip(patch, stride, strict=True)):
        suggestion = tuple(math.ceil(p / s) * s for p, s in zip(patch, stride, strict=True))
        raise TrainingError(
            f"{what} {tuple(patch)} must be divisible by the model's reduction {stride} on every axis; "
            f"try {' '.join(map(str, suggestion))}"
        )


def _one_loss(name: str, mode: str, ignore_index: int | None) -> nn.Module:
    from .. import losses as L

    ignore = {} if ignore_index is None else {"ignore_index": ignore_index}
    if name in ("ce", "wce"):
        if mode != "multiclass":
            raise TrainingError(
                f"--loss {name} needs class-index labels and --classes >= 2; use bce for {mode} targets"
            )
        if name == "ce":
            return nn.CrossEntropyLoss(ignore_index=-100 if ignore_index is None else ignore_index)
        return L.WeightedCrossEntropyLoss(**ignore)
    if name == "bce":
        if mode == "multiclass":
            raise TrainingError(
                "--loss bce needs binary or multi-label targets; use ce (or wce) for class-index labels"
            )
        return L.SoftBCEWithLogitsLoss(**ignore)
    if name == "dice":
        return L.DiceLoss(mode, from_logits=True, **ignore)
    if name == "gdl":
        return L.GeneralizedDiceLoss(mode, from_logits=True, **ignore)
    if name == "focal":
        return L.FocalLoss(mode, **ignore)
    if name == "tversky":
        return L.TverskyLoss(mode, from_logits=True, **ignore)
    if name == "lovasz":
        return L.LovaszLoss(mode, **ignore)
    raise TrainingError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}, or several joined by '+'")


class SumLoss(nn.Module):
    """The sum of several losses (``--loss ce+dice``)."""

    def __init__(self, parts: dict[str, nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(parts)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.parts.values())  # type: ignore[return-value]


def build_loss(name: str, mode: str, ignore_index: int | None = None) -> nn.Module:
    """One loss of :data:`LOSSES`, or the sum of several joined by ``+`` (``"ce+dice"``)."""
    names = [part.strip().lower() for part in name.split("+")]
    if not all(names):
        raise TrainingError(f"--loss {name!r}: empty loss name")
    parts = {part: _one_loss(part, mode, ignore_index) for part in names}
    return next(iter(parts.values())) if len(parts) == 1 else SumLoss(parts)


def build_optimizer(config: TrainConfig, params: Any) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.99, nesterov=True, weight_decay=config.weight_decay)
    raise TrainingError(f"unknown optimizer {config.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """Cosine (stepped per iteration over ``total_steps``), plateau (stepped on validation Dice),
    or None for a constant learning rate."""
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1), eta_min=config.min_lr)
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=2, min_lr=config.min_lr
        )
    if config.scheduler == "constant":
        return None
    raise TrainingError(f"unknown scheduler {config.scheduler!r}; expected one of {', '.join(SCHEDULERS)}")


__all__ = [
    "SumLoss",
    "build_loss",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "check_patch_fits_model",
]
