"""The model, loss, optimiser and learning-rate schedule of a run, each from its :class:`TrainConfig`."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from .config import LOSSES, OPTIMIZERS, SCHEDULERS, TrainConfig
from .errors import TrainingError
from .schedule import OPTIMIZER_DEFAULTS, LRSchedule


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


def supports_deep_supervision(arch: str) -> bool:
    """Whether the architecture ``arch`` takes ``deep_supervision`` (its decoder has several levels)."""
    import inspect

    from ..models import ARCHITECTURES

    model_class = ARCHITECTURES.get(arch.lower()) if isinstance(arch, str) else None
    return model_class is not None and "deep_supervision" in inspect.signature(model_class).parameters


def _model_kwargs(config: TrainConfig) -> dict[str, Any]:
    kwargs = dict(config.model_kwargs)
    wanted = config.deep_supervision
    if wanted is None:  # auto: on when the architecture has levels, unless the model arguments say otherwise
        wanted = kwargs.get("deep_supervision", supports_deep_supervision(config.arch)) is True
    if wanted:
        if kwargs.get("deep_supervision", True) is not True:
            raise TrainingError("--deep-supervision contradicts deep_supervision=false in the model arguments")
        kwargs["deep_supervision"] = True
    elif config.deep_supervision is False and kwargs.get("deep_supervision") is True:
        raise TrainingError("--no-deep-supervision contradicts deep_supervision=true in the model arguments")
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


def optimizer_settings(config: TrainConfig) -> tuple[float, float]:
    """The run's learning rate and weight decay: the config's, or the optimiser's defaults."""
    if config.optimizer not in OPTIMIZER_DEFAULTS:
        raise TrainingError(f"unknown optimizer {config.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    defaults = OPTIMIZER_DEFAULTS[config.optimizer]
    lr = defaults["lr"] if config.lr is None else config.lr
    weight_decay = defaults["weight_decay"] if config.weight_decay is None else config.weight_decay
    return lr, weight_decay


def build_optimizer(config: TrainConfig, params: Any) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD with Nesterov momentum (``config.momentum``)."""
    lr, weight_decay = optimizer_settings(config)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=True, weight_decay=weight_decay)


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int | None = None) -> Any:
    """An :class:`~smp3d.training.schedule.LRSchedule` (cosine, poly or constant, with ``config.warmup``;
    the loop sets it from the fraction of the run done) or, for ``plateau``, torch's ReduceLROnPlateau
    stepped on the validation Dice. ``total_steps`` is unused (kept for callers of older versions)."""
    if config.scheduler in LRSchedule.KINDS:
        return LRSchedule(
            optimizer, config.scheduler, warmup=config.warmup, min_lr=config.min_lr, exponent=config.poly_exponent
        )
    if config.scheduler == "plateau":
        if config.warmup:
            raise TrainingError("--warmup needs a cosine, poly or constant --scheduler, not plateau")
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=2, min_lr=config.min_lr
        )
    raise TrainingError(f"unknown scheduler {config.scheduler!r}; expected one of {', '.join(SCHEDULERS)}")


__all__ = [
    "SumLoss",
    "build_loss",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "check_patch_fits_model",
    "optimizer_settings",
    "supports_deep_supervision",
]
