"""Validation: whole volumes through the sliding window, scored by per-class Dice."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..metrics.accumulator import foreground_classes  # the classes whose mean Dice selects the best model
from .config import TrainConfig, channels_last_for
from .schedule import amp_dtype
from .volumes import Volume


def to_target(label: torch.Tensor, mode: str) -> torch.Tensor:
    """The loss's target layout: class indices for multi-class, (B, C, *spatial) floats otherwise."""
    if mode == "multiclass":
        return label.long()
    if mode == "binary" and label.dim() >= 2 and label.dtype != torch.float32:
        return label.unsqueeze(1).float()
    return label.float()


def activate(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Probabilities: softmax over classes for multi-class, sigmoid otherwise."""
    return logits.float().softmax(1) if mode == "multiclass" else logits.float().sigmoid()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    volumes: list[Volume],
    config: TrainConfig,
    device: torch.device,
    loss_fn: nn.Module | None = None,
    preview: bool = False,
) -> dict[str, Any]:
    """Segment each volume with the sliding window and score it.

    Returns:
        ``val_loss`` (the mean loss, NaN without ``loss_fn``), ``val_mean_dice_foreground`` (the mean Dice of
        :func:`foreground_classes`, classes absent from prediction and target left out) and ``dice_per_class``;
        with ``preview``, also ``preview``: the first volume's ``image`` (C, *spatial), ``label`` and
        ``prediction`` (class maps (*spatial), NumPy) for :func:`smp3d.training.plots.write_preview`.
    """
    from ..inference import sliding_window_inference
    from ..metrics import SegmentationMetrics

    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(
        config.mode,
        num_classes=config.classes,
        ignore_index=config.ignore_index if config.mode == "multiclass" else None,
        threshold=None if config.mode == "multiclass" else 0.5,
    )
    losses = []
    extra: dict[str, Any] = {}
    for volume in volumes:
        image = torch.from_numpy(volume.image)[None].to(device)
        logits = sliding_window_inference(
            model,
            image,
            config.patch,
            overlap=config.val_overlap,
            batch_size=max(config.batch_size, 1),
            autocast=amp_dtype(config.amp),
            channels_last=channels_last_for(config, device),
        ).float()
        target = to_target(torch.from_numpy(volume.label)[None].to(device), config.mode)  # type: ignore[arg-type]
        if loss_fn is not None:
            losses.append(float(loss_fn(logits, target)))
        if preview and "preview" not in extra:
            extra["preview"] = {
                "image": volume.image,
                "label": class_map(target[0], config.mode),
                "prediction": class_map(
                    logits[0] if config.mode == "multiclass" else logits[0].sigmoid(), config.mode, True
                ),
            }
        if config.mode == "multiclass":
            metrics.update(logits, target)
        else:
            metrics.update(logits.sigmoid(), target.round().long())
    model.train(was_training)
    scores = metrics.compute()
    return {
        "val_loss": float(np.mean(losses)) if losses else float("nan"),
        "val_mean_dice_foreground": float(scores["mean_dice_foreground"]),
        "dice_per_class": [float(d) for d in scores["dice"]],
        **extra,
    }


def class_map(values: torch.Tensor, mode: str, scores: bool = False) -> np.ndarray:
    """One volume's classes as an integer map (*spatial): the argmax of multi-class scores or the class
    index itself; for binary / multi-label channels (C, *spatial), the highest channel over 0.5, plus one."""
    if mode == "multiclass":
        labels = values.argmax(0) if scores else values
    else:
        on = values > 0.5  # (C, *spatial)
        index = torch.arange(1, on.shape[0] + 1, device=on.device).view(-1, *([1] * (on.dim() - 1)))
        labels = (on * index).amax(0)
    return labels.to("cpu", torch.int64).numpy()


def dice_table(class_names: list[str], dice: list[float]) -> str:
    width = max(len(n) for n in class_names)
    return "\n".join(f"  {name:<{width}}  {d:.4f}" for name, d in zip(class_names, dice, strict=True))


__all__ = ["activate", "class_map", "dice_table", "evaluate", "foreground_classes", "to_target"]
