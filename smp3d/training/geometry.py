"""Voxel geometry: spacing from an affine, checks that an image and its label share a grid, and
resampling of images, labels and probabilities to a target spacing (and back).

Resampling is separable (one axis after the other) and runs in PyTorch on the CPU, with voxel
centres aligned as ``align_corners=False`` does: target voxel ``i`` samples the source at
``(i + 0.5) * n_source / n_target - 0.5``. Upsampling a label by an integer factor with
``nearest`` and sampling it back therefore returns the label unchanged.

Images are interpolated ``linear`` or ``cubic`` (Keys' cubic convolution with a = -0.5,
Catmull-Rom); labels by ``nearest`` or ``onehot`` (each class's indicator interpolated linearly, then
the most likely class). When one axis is much coarser than the others (a thick-slice scan: ratio
above :data:`SEPARATE_AXIS_RATIO`), that axis is resampled on its own with ``nearest``, so that
slices are not blended into each other (nnU-Net does the same).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import TrainingError

__all__ = [
    "IMAGE_RESAMPLING",
    "LABEL_RESAMPLING",
    "SEPARATE_AXIS_RATIO",
    "check_same_grid",
    "resample_image",
    "resample_label",
    "resampled_shape",
    "separate_axis",
    "spacing_from_affine",
]

IMAGE_RESAMPLING = ("linear", "cubic")
LABEL_RESAMPLING = ("nearest", "onehot")
#: An axis whose spacing exceeds this multiple of the finest axis is resampled on its own.
SEPARATE_AXIS_RATIO = 3.0


def spacing_from_affine(affine: np.ndarray, spatial_dims: int) -> tuple[float, ...]:
    """Voxel size per array axis (the length of each of the affine's first ``spatial_dims`` columns)."""
    affine = np.asarray(affine, dtype=np.float64)
    lengths = np.sqrt((affine[:3, :spatial_dims] ** 2).sum(axis=0))
    return tuple(float(v) if v > 0 else 1.0 for v in lengths)


def check_same_grid(
    image_name: str,
    image_shape: Sequence[int],
    image_affine: np.ndarray | None,
    label_name: str,
    label_shape: Sequence[int],
    label_affine: np.ndarray | None,
    tolerance: float = 1e-3,
) -> None:
    """Refuse an image and label that do not lie on the same voxel grid (shape and affine).

    Args:
        image_name, label_name: the files, named in the error.
        image_shape, label_shape: spatial shapes.
        image_affine, label_affine: 4x4 affines, or None where the format has none (then only
            the shapes are compared).
        tolerance: largest allowed difference of an affine entry, relative to the voxel size.

    Raises:
        TrainingError: the shapes differ, or both affines are known and differ (e.g. a label
            flipped left-right against its image).
    """
    if tuple(image_shape) != tuple(label_shape):
        raise TrainingError(
            f"{label_name}: label shape {tuple(label_shape)} does not match the image {image_name} "
            f"of spatial shape {tuple(image_shape)}"
        )
    if image_affine is None or label_affine is None:
        return
    image_affine = np.asarray(image_affine, dtype=np.float64)
    label_affine = np.asarray(label_affine, dtype=np.float64)
    scale = max(min(spacing_from_affine(image_affine, 3)), 1e-6)
    difference = np.abs(image_affine[:3] - label_affine[:3]).max()
    if difference > tolerance * scale:
        flipped = [
            axis
            for axis in range(3)
            if np.allclose(image_affine[:3, axis], -label_affine[:3, axis], atol=tolerance * scale)
            and np.abs(image_affine[:3, axis]).max() > 0
        ]
        why = f" (axis {', '.join(map(str, flipped))} flipped)" if flipped else ""
        raise TrainingError(
            f"{label_name}: label affine differs from the image {image_name}'s{why}; the label would be "
            f"misplaced. Image affine rows {np.round(image_affine[:3], 4).tolist()}, label affine rows "
            f"{np.round(label_affine[:3], 4).tolist()}. Resample or reorient the label onto the image's grid"
        )


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> tuple[int, ...]:
    """The shape after resampling ``shape`` from ``spacing`` to ``target_spacing`` (at least 1 per axis)."""
    if len(shape) != len(spacing) or len(spacing) != len(target_spacing):
        raise TrainingError(
            f"shape {tuple(shape)}, spacing {tuple(spacing)} and target spacing {tuple(target_spacing)} "
            "must have one entry per spatial axis"
        )
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target_spacing, strict=True))


def separate_axis(spacing: Sequence[float], ratio: float = SEPARATE_AXIS_RATIO) -> int | None:
    """The axis of a thick-slice volume (spacing above ``ratio`` times the finest axis), or None."""
    if len(spacing) < 3:
        return None
    coarsest = int(np.argmax(spacing))
    return coarsest if spacing[coarsest] > ratio * min(spacing) else None


def _resample_axis(x: torch.Tensor, axis: int, size: int, mode: str) -> torch.Tensor:
    """Resample axis ``axis`` of ``x`` (any shape) to ``size`` points; the other axes are untouched."""
    if x.shape[axis] == size:
        return x
    moved = x.movedim(axis, -1)
    rest = moved.shape[:-1]
    flat = moved.reshape(1, -1, moved.shape[-1])
    if mode == "cubic":
        out = _cubic(flat, size)
    elif mode == "linear":
        out = F.interpolate(flat, size=size, mode="linear", align_corners=False)
    elif mode == "nearest":
        out = F.interpolate(flat, size=size, mode="nearest-exact")
    else:
        raise TrainingError(f"unknown interpolation {mode!r}; expected nearest, linear or cubic")
    return out.reshape(*rest, size).movedim(-1, axis)


def _cubic(x: torch.Tensor, size: int) -> torch.Tensor:
    """Cubic convolution (Keys, a = -0.5: Catmull-Rom, exact on linear ramps) along the last axis;
    edges repeat the border voxel."""
    n = x.shape[-1]
    position = (torch.arange(size, dtype=torch.float64) + 0.5) * (n / size) - 0.5
    base = position.floor()
    t = position - base
    out = torch.zeros(*x.shape[:-1], size, dtype=x.dtype)
    for offset in (-1, 0, 1, 2):
        d = (t - offset).abs()  # distance from the sample to this neighbour
        near = 1.5 * d**3 - 2.5 * d**2 + 1
        far = -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2
        weight = torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))
        index = (base.long() + offset).clamp(0, n - 1)
        out += x.index_select(-1, index) * weight.to(x.dtype)
    return out


def _resample(x: torch.Tensor, new_shape: Sequence[int], mode: str, separate: int | None, leading: int) -> torch.Tensor:
    spatial = len(new_shape)
    for axis in range(spatial):
        axis_mode = "nearest" if axis == separate else mode
        x = _resample_axis(x, leading + axis, int(new_shape[axis]), axis_mode)
    return x


def _check_mode(mode: str, allowed: tuple[str, ...], what: str) -> None:
    if mode not in allowed:
        raise TrainingError(f"unknown {what} resampling {mode!r}; expected one of {', '.join(allowed)}")


def _separate(
    spacing: Sequence[float] | None, target_spacing: Sequence[float] | None, separate: bool | int | None
) -> int | None:
    """The axis to resample with ``nearest`` on its own, or None."""
    if separate is None or separate is False:
        return None
    if separate is not True:
        return int(separate)
    if spacing is None or target_spacing is None:
        return None
    # The coarse axis of either grid: slices are thick in the source or in the target.
    found = separate_axis(spacing)
    return found if found is not None else separate_axis(target_spacing)


def resample_image(
    image: np.ndarray,
    new_shape: Sequence[int],
    mode: str = "linear",
    *,
    spacing: Sequence[float] | None = None,
    target_spacing: Sequence[float] | None = None,
    separate: bool | int | None = True,
) -> np.ndarray:
    """Resample a (C, *spatial) image (or probabilities) to (C, *new_shape).

    Args:
        image: (C, *spatial) array.
        new_shape: the spatial shape to produce.
        mode: ``linear`` or ``cubic``.
        spacing, target_spacing: the voxel sizes before and after; only used to find a
            thick-slice axis when ``separate`` is True.
        separate: True: a thick-slice axis (:func:`separate_axis`) is resampled with ``nearest``;
            an int: that axis; False/None: every axis with ``mode``.

    Returns:
        float32 array of shape (C, *new_shape).
    """
    _check_mode(mode, IMAGE_RESAMPLING, "image")
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(image.shape[1:]) == new_shape:
        return np.ascontiguousarray(image, dtype=np.float32)
    axis = _separate(spacing, target_spacing, separate)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    return _resample(x, new_shape, mode, axis, leading=1).numpy()


def resample_label(
    label: np.ndarray,
    new_shape: Sequence[int],
    mode: str = "nearest",
    *,
    spacing: Sequence[float] | None = None,
    target_spacing: Sequence[float] | None = None,
    separate: bool | int | None = True,
) -> np.ndarray:
    """Resample a (*spatial) class-index label (int64) or a (C, *spatial) multi-label target.

    Args:
        label: (*spatial) class indices or (C, *spatial) float targets.
        new_shape: the spatial shape to produce.
        mode: ``nearest``, or ``onehot``: each class's indicator (each channel of a multi-label
            target) interpolated linearly, then the most likely class (the channel above 0.5).
        spacing, target_spacing, separate: as in :func:`resample_image`.

    Returns:
        An array of ``label``'s dtype: (*new_shape) or (C, *new_shape).
    """
    _check_mode(mode, LABEL_RESAMPLING, "label")
    new_shape = tuple(int(n) for n in new_shape)
    indices = label.ndim == len(new_shape)
    if tuple(label.shape[-len(new_shape) :]) == new_shape:
        return label
    axis = _separate(spacing, target_spacing, separate)
    if mode == "nearest":
        x = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))
        out = _resample(x, new_shape, "nearest", axis, leading=0 if indices else 1)
        return out.round().numpy().astype(label.dtype)
    if not indices:
        x = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))
        return (_resample(x, new_shape, "linear", axis, leading=1) > 0.5).numpy().astype(label.dtype)
    classes = np.unique(label)
    best = torch.full(new_shape, -1.0)
    out = torch.zeros(new_shape, dtype=torch.int64)
    for value in classes:  # one class at a time: memory of two volumes, not of C
        indicator = torch.from_numpy((label == value).astype(np.float32))
        score = _resample(indicator, new_shape, "linear", axis, leading=0)
        better = score > best
        out[better] = int(value)
        best = torch.where(better, score, best)
    return out.numpy().astype(label.dtype)
