"""Pictures of a run, redrawn after every epoch in the run directory (matplotlib, no display needed).

``progress.png``: training and validation loss, validation Dice per class and its foreground mean,
and the learning rate, against the epoch. ``validation_preview.png``: a few slices of the first
validation volume, with the label's and the prediction's outlines drawn over the image. Both are
written to a temporary file and renamed, so a reader never sees half a picture.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metric_log import VAL_SCORE


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only; never opens a window
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temp, dpi=80)
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)
        _pyplot().close(figure)


def _column(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    values = []
    for row in rows:
        try:
            values.append(float(row.get(key, math.nan)))
        except (TypeError, ValueError):
            values.append(math.nan)
    return np.asarray(values, dtype=float)


def write_progress(path: str | os.PathLike, rows: Sequence[dict[str, Any]], class_names: Sequence[str]) -> None:
    """Draw ``progress.png`` from the metrics rows (``epoch``, ``train_loss``, ``val_loss``,
    ``val_mean_dice_foreground``, ``dice_<class>``, ``lr``) into ``path``, atomically.

    Args:
        path: the PNG file to write.
        rows: one dict per epoch, as in ``metrics.csv``.
        class_names: the classes whose ``dice_<name>`` columns are drawn.
    """
    plt = _pyplot()
    epochs = _column(rows, "epoch")
    figure, (losses, dice, lr) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        values = _column(rows, key)
        if np.isfinite(values).any():
            keep = np.isfinite(values)
            losses.plot(epochs[keep], values[keep], style, marker=".", label=key.replace("_", " "))
    losses.set_ylabel("loss")
    losses.legend(loc="upper right")
    losses.grid(alpha=0.3)
    for name in class_names:
        values = _column(rows, f"dice_{name}")
        keep = np.isfinite(values)
        if keep.any():
            dice.plot(epochs[keep], values[keep], marker=".", linewidth=1, label=name)
    mean = _column(rows, VAL_SCORE)
    if np.isfinite(mean).any():
        keep = np.isfinite(mean)
        dice.plot(epochs[keep], mean[keep], "k-", linewidth=2.5, label="mean foreground")
    dice.set_ylabel("validation Dice")
    dice.set_ylim(0, 1)
    dice.grid(alpha=0.3)
    if dice.get_legend_handles_labels()[0]:
        dice.legend(loc="lower right", fontsize="small", ncol=2)
    lr.plot(epochs, _column(rows, "lr"), marker=".")
    lr.set_ylabel("learning rate (end of epoch)")
    lr.set_xlabel("epoch")
    lr.grid(alpha=0.3)
    figure.tight_layout()
    _save(figure, Path(path))


def _slices(label: np.ndarray, count: int) -> list[int]:
    """``count`` slice indices along the last axis, spread over where the label has foreground."""
    depth = label.shape[-1]
    occupied = np.flatnonzero(label.reshape(-1, depth).any(0))
    lo, hi = (int(occupied[0]), int(occupied[-1])) if len(occupied) else (0, depth - 1)
    return sorted({int(round(x)) for x in np.linspace(lo, hi, count + 2)[1:-1]}) or [depth // 2]


def write_preview(
    path: str | os.PathLike,
    image: np.ndarray,
    label: np.ndarray,
    prediction: np.ndarray,
    *,
    slices: int = 3,
    title: str = "",
) -> None:
    """Draw a few slices of ``image`` (C, *spatial; first channel shown) with the outlines of ``label``
    (green) and ``prediction`` (red), both class maps (*spatial), into ``path``, atomically. 3D volumes
    show ``slices`` slices along the last axis; a 2D image is one panel.

    Args:
        path: the PNG file to write.
        image: (C, H, W) or (C, H, W, D).
        label: (H, W) or (H, W, D) class indices.
        prediction: the same shape as ``label``.
        slices: how many slices of a 3D volume.
        title: a line above the panels.
    """
    if label.shape != prediction.shape or image.shape[1:] != label.shape:
        raise ValueError(
            f"preview needs image (C, *spatial) and label/prediction (*spatial) of one size; got image "
            f"{image.shape}, label {label.shape}, prediction {prediction.shape}"
        )
    plt = _pyplot()
    picture = image[0]
    if picture.ndim == 2:
        picture, label, prediction = picture[..., None], label[..., None], prediction[..., None]
    chosen = _slices(label, slices) if picture.shape[-1] > 1 else [0]
    figure, axes = plt.subplots(1, len(chosen), figsize=(4 * len(chosen), 4), squeeze=False)
    low, high = np.percentile(picture, (1, 99))
    classes = [c for c in np.union1d(np.unique(label), np.unique(prediction)) if c != 0]
    for axis, index in zip(axes[0], chosen, strict=True):
        axis.imshow(picture[..., index].T, cmap="gray", vmin=low, vmax=high, origin="lower")
        for mask, colour in ((label, "lime"), (prediction, "red")):
            for c in classes:
                plane = (mask[..., index] == c).T
                if plane.any() and not plane.all():
                    axis.contour(plane.astype(np.float32), levels=[0.5], colors=colour, linewidths=0.8)
        axis.set_title(f"slice {index}" if picture.shape[-1] > 1 else "")
        axis.axis("off")
    figure.suptitle(f"{title}  (green: label, red: prediction)".strip())
    figure.tight_layout()
    _save(figure, Path(path))


__all__ = ["write_preview", "write_progress"]
