"""Whole-volume prediction as nnU-Net does it: test-time mirroring, several models (folds) ensembled,
mixed precision, and optional largest-component post-processing.

:func:`predict_probabilities` runs every model on every mirrored copy of the input with the sliding
window, flips each prediction back and adds it into one accumulator, then divides once: the mean
of ``len(models) * 2**len(axes)`` probability maps, never holding more than two of them.
:func:`keep_largest_component` keeps, per class, only the largest connected region of a label map
(the rest becomes background), with ``scipy.ndimage.label`` when SciPy is installed and a pure
PyTorch labelling otherwise (both face-connected).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from .sliding_window import sliding_window_inference

MODES = ("multiclass", "binary", "multilabel")


class Probabilities(nn.Module):
    """``model`` followed by softmax over classes (multi-class) or a sigmoid (binary, multi-label)."""

    def __init__(self, model: nn.Module, mode: str) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model, self.mode = model, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x).float()
        return logits.softmax(1) if self.mode == "multiclass" else logits.sigmoid()


def mirror_combinations(axes: Sequence[int] | None, spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial ``axes`` (0-based) to flip, the empty one (no flip) first.

    Args:
        axes: spatial axes to mirror over; None or empty: no mirroring.
        spatial_dims: the number of spatial axes, to check ``axes``.

    Returns:
        ``2 ** len(axes)`` tuples of spatial axes.
    """
    axes = tuple(axes or ())
    bad = [a for a in axes if not (isinstance(a, int) and 0 <= a < spatial_dims)]
    if bad or len(set(axes)) != len(axes):
        raise ValueError(
            f"TTA axes must be distinct spatial axes in 0..{spatial_dims - 1} (0-based, after batch and channel); "
            f"got {list(axes)}"
        )
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(sorted(axes), r)]


def predict_probabilities(
    models: nn.Module | Sequence[nn.Module],
    image: torch.Tensor,
    patch_size: Sequence[int],
    *,
    mode: str = "multiclass",
    tta_axes: Sequence[int] | None = None,
    overlap: float = 0.5,
    blend: str = "gaussian",
    batch_size: int = 4,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
    output_device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """The mean probabilities of ``models`` over the mirrored copies of ``image`` (under ``torch.inference_mode``).

    Args:
        models: one model or several (e.g. the folds of a cross-validation), in eval mode, each
            mapping (N, C, *patch) to (N, K, *patch) logits with the same K.
        image: (B, C, *spatial).
        patch_size: the sliding window's size per spatial axis.
        mode: ``"multiclass"`` (softmax) or ``"binary"`` / ``"multilabel"`` (sigmoid).
        tta_axes: spatial axes (0-based) to mirror over at test time; every subset of them is run
            (``2**len(tta_axes)`` passes per model). None: no mirroring.
        overlap: as in :func:`~smp3d.inference.sliding_window_inference`.
        blend: as in :func:`~smp3d.inference.sliding_window_inference`.
        batch_size: as in :func:`~smp3d.inference.sliding_window_inference`.
        channels_last: as in :func:`~smp3d.inference.sliding_window_inference`.
        output_device: as in :func:`~smp3d.inference.sliding_window_inference`.
        progress: as in :func:`~smp3d.inference.sliding_window_inference`.
        amp: an autocast dtype (``torch.bfloat16`` on CPU or GPU, ``torch.float16`` on GPU), or None.

    Returns:
        (B, K, *spatial) float32 probabilities on ``output_device`` (default: the models' device).
    """
    with torch.inference_mode():
        return _mean_probabilities(
            [models] if isinstance(models, nn.Module) else list(models),
            image,
            patch_size,
            mode=mode,
            flips=mirror_combinations(tta_axes, image.dim() - 2),
            window=dict(
                overlap=overlap,
                blend=blend,
                batch_size=batch_size,
                autocast=amp,
                channels_last=channels_last,
                output_device=output_device,
                progress=progress,
            ),
        )


def _mean_probabilities(models, image, patch_size, *, mode, flips, window) -> torch.Tensor:
    if not models:
        raise ValueError("predict_probabilities needs at least one model")
    total: torch.Tensor | None = None
    for model in models:
        wrapped = Probabilities(model, mode)
        for axes in flips:
            dims = [a + 2 for a in axes]
            mirrored = image.flip(dims) if dims else image
            probabilities = sliding_window_inference(wrapped, mirrored, patch_size, **window)
            if dims:
                probabilities = probabilities.flip(dims)
            if total is None:
                total = probabilities.float()
            elif total.shape != probabilities.shape:
                raise ValueError(
                    f"the models disagree on the output: {tuple(total.shape)} vs {tuple(probabilities.shape)}; "
                    "ensemble only models of the same classes"
                )
            else:
                total += probabilities
    if total is None:  # unreachable: at least one model and the unflipped pass
        raise ValueError("nothing was predicted")
    return total.div_(len(models) * len(flips))


def _components_scipy(mask: np.ndarray) -> tuple[np.ndarray, int] | None:
    try:
        from scipy import ndimage
    except ImportError:
        return None
    labels, count = ndimage.label(mask)  # face connectivity by default
    return labels, int(count)


def _components_torch(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Face-connected components by propagating the largest voxel index through each region, with
    pointer jumping (a voxel takes the label of the voxel its label names) so long regions converge fast."""
    on = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
    ids = torch.arange(1, on.numel() + 1, dtype=torch.int64).view(on.shape) * on
    while True:
        new = ids.clone()
        for axis in range(on.dim()):
            ahead = [slice(None)] * on.dim()
            behind = [slice(None)] * on.dim()
            ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
            torch.maximum(new[tuple(behind)], ids[tuple(ahead)], out=new[tuple(behind)])
            torch.maximum(new[tuple(ahead)], ids[tuple(behind)], out=new[tuple(ahead)])
        new *= on
        flat = new.view(-1)
        jumped = flat[(flat - 1).clamp_min(0)].view(on.shape) * on  # the label of the voxel named by the label
        new = torch.maximum(new, jumped)
        if torch.equal(new, ids):
            break
        ids = new
    values, labels = torch.unique(ids, return_inverse=True)
    # unique sorts, so background (0), when present, is value 0 and keeps label 0
    if values.numel() and values[0] != 0:
        labels += 1
    return labels.numpy().astype(np.int64), int((values != 0).sum())


def connected_components(mask: np.ndarray | torch.Tensor, backend: str = "auto") -> tuple[np.ndarray, int]:
    """Label the face-connected regions of a boolean mask.

    Args:
        mask: a boolean array of any number of axes.
        backend: ``"auto"`` (SciPy when installed), ``"scipy"`` or ``"torch"``.

    Returns:
        (labels, count): an int array of ``mask``'s shape, 0 outside, 1..count inside (numbering
        depends on the backend), and the number of regions.
    """
    array = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    array = array.astype(bool, copy=False)
    if backend not in ("auto", "scipy", "torch"):
        raise ValueError(f"backend must be auto, scipy or torch, got {backend!r}")
    if backend in ("auto", "scipy"):
        found = _components_scipy(array)
        if found is not None:
            return found
        if backend == "scipy":
            raise ImportError("backend='scipy' needs SciPy (pip install scipy)")
    return _components_torch(array)


def keep_largest_component(
    labels: np.ndarray, classes: Sequence[int] | None = None, *, stacked: bool = False, backend: str = "auto"
) -> np.ndarray:
    """Keep, for each class, only its largest connected region; the other regions become background (0).

    Args:
        labels: a class map (*spatial) of ints (multi-class), or with ``stacked`` (C, *spatial) 0/1
            masks (binary / multi-label), cleaned channel by channel.
        classes: the classes (or channels) to clean; default: every non-zero value of a class map,
            every channel of a stack.
        stacked: ``labels`` is a stack of masks, one per channel.
        backend: see :func:`connected_components`.

    Returns:
        a cleaned copy of ``labels``.
    """
    out = np.array(labels, copy=True)
    channels = stacked
    if classes is None:
        classes = list(range(out.shape[0])) if stacked else [int(c) for c in np.unique(out) if c != 0]
    for c in classes:
        mask = out[c] != 0 if channels else out == c
        regions, count = connected_components(mask, backend)
        if count <= 1:
            continue
        sizes = np.bincount(regions.ravel(), minlength=count + 1)
        sizes[0] = 0
        drop = mask & (regions != int(sizes.argmax()))
        if channels:
            out[c][drop] = 0
        else:
            out[drop] = 0
    return out


__all__ = [
    "Probabilities",
    "connected_components",
    "keep_largest_component",
    "mirror_combinations",
    "predict_probabilities",
]
