"""Patches of in-memory volumes for training: a grid at a stride, or random windows with
foreground oversampling (a class first, then a voxel of it), each flipped at random along
chosen axes. Random patches may reach past the volume's borders (the outside reads the image's
background value, label background) so that border voxels are seen as often as others; each
patch can be read with a larger window around it, for augmentation that rotates (see
:meth:`smp3d.augment.Augment.input_shape`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .errors import TrainingError
from .volumes import Volume


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start offsets of a grid of ``patch``-long windows ``stride`` apart, the last flush with the end."""
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def check_patch(volumes: list[Volume], patch: tuple[int, ...], what: str = "--patch") -> None:
    for volume in volumes:
        shape = volume.spatial_shape
        if len(shape) != len(patch):
            raise TrainingError(
                f"{what} has {len(patch)} sizes but {volume.name} has {len(shape)} spatial axes {shape}"
            )
        if any(p > s for p, s in zip(patch, shape, strict=True)):
            raise TrainingError(f"{what} {tuple(patch)} is larger than the volume {volume.name} of shape {shape}")


class PatchDataset(torch.utils.data.Dataset):
    """Patches of in-memory volumes: a shuffled-by-the-sampler grid at ``stride``, or, when
    ``samples`` is given, that many random windows per epoch. Each spatial axis in ``flip`` (all
    of them for ``True``, none for ``False``) is flipped at random, with probability 1/2,
    independently of the others.

    Random windows: a fraction ``foreground`` of them is centred on a labelled voxel, found as
    nnU-Net does: a foreground class present in the volume is drawn first (uniformly, so rare
    classes are seen as often as common ones), then one of its voxels. A patch may reach
    ``reach`` voxels past each border (default: an eighth of the patch per axis); what lies
    outside reads 0 (background) in the label and, in each image channel, the median of the
    volume's outermost voxels (:func:`border_value`): air or the zero of a masked normalisation,
    whatever the volume's background is, rather than a constant that may look like tissue.

    ``window`` (default: the patch) is the size actually read, centred on the patch, and may be
    larger than the patch: a rotating augmentation then finds image data up to the patch's corners
    before it crops to the patch. Grid patches are read with the same window.
    """

    def __init__(
        self,
        volumes: list[Volume],
        patch: tuple[int, ...],
        stride: tuple[int, ...] | None = None,
        *,
        samples: int | None = None,
        foreground: float = 0.33,
        flip: bool | Sequence[int] = True,
        seed: int = 0,
        window: Sequence[int] | None = None,
        reach: int | Sequence[int] | None = None,
    ) -> None:
        check_patch(volumes, patch)
        self.volumes = volumes
        self.patch = tuple(patch)
        self.window = self.patch if window is None else tuple(int(w) for w in window)
        if len(self.window) != len(self.patch) or any(w < p for w, p in zip(self.window, self.patch, strict=True)):
            raise TrainingError(f"window {self.window} must have one size per axis, each >= the patch {self.patch}")
        if reach is None:
            reach = tuple(p // 8 for p in self.patch)
        self.reach = (int(reach),) * len(self.patch) if isinstance(reach, int) else tuple(int(r) for r in reach)
        if len(self.reach) != len(self.patch) or any(r < 0 for r in self.reach):
            raise TrainingError(f"reach {self.reach} must be one non-negative size or one per axis {self.patch}")
        self.samples = samples
        self.foreground = foreground
        axes = range(len(self.patch)) if flip is True else (() if flip is False else tuple(flip))
        bad = [a for a in axes if not 0 <= a < len(self.patch)]
        if bad:
            raise TrainingError(
                f"flip axes {bad} out of range: the volumes have {len(self.patch)} spatial axes (0-based)"
            )
        self.flip_axes = tuple(axes)
        self.seed = seed
        self.images = [torch.from_numpy(v.image) for v in volumes]
        self.labels = [torch.from_numpy(v.label) for v in volumes]  # type: ignore[arg-type]
        self.fills = [border_value(image) for image in self.images]
        self._class_points = [_class_points(v.label, seed) for v in volumes]
        if samples is None:
            stride = tuple(stride or self.patch)
            self.windows = [
                (i, corner) for i, v in enumerate(volumes) for corner in _grid(v.spatial_shape, self.patch, stride)
            ]
        else:
            self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's random windows (the same on every process for a given epoch)."""
        if self.samples is None:
            return
        rng = np.random.default_rng((self.seed, epoch))
        windows = []
        for _ in range(self.samples):
            i = int(rng.integers(len(self.volumes)))
            shape = self.volumes[i].spatial_shape
            classes = self._class_points[i]
            limits = zip(shape, self.patch, self.reach, strict=True)
            if classes and rng.random() < self.foreground:
                points = classes[int(rng.integers(len(classes)))]  # a class first, then one of its voxels
                centre = points[rng.integers(len(points))]
                corner = tuple(
                    int(min(max(c - p // 2, -r), s - p + r)) for c, (s, p, r) in zip(centre, limits, strict=True)
                )
            else:
                corner = tuple(int(rng.integers(-r, s - p + r + 1)) for s, p, r in limits)
            windows.append((i, corner))
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i, corner = self.windows[index]
        corner = tuple(c - (w - p) // 2 for c, w, p in zip(corner, self.window, self.patch, strict=True))
        image = read_window(self.images[i], corner, self.window, self.fills[i])
        label = read_window(self.labels[i], corner, self.window)
        if self.flip_axes:
            axes = [a for a in self.flip_axes if torch.rand(()) < 0.5]
            if axes:
                image = image.flip([a + 1 for a in axes])
                offset = label.dim() - len(self.patch)
                label = label.flip([a + offset for a in axes])
        return image.contiguous(), label.contiguous()


def read_window(
    tensor: torch.Tensor, corner: Sequence[int], size: Sequence[int], fill: torch.Tensor | None = None
) -> torch.Tensor:
    """The window of ``tensor`` ([C,] *spatial) at ``corner`` of ``size`` (trailing axes); parts
    outside the tensor read ``fill`` (one value per leading channel; None: 0). A view when the
    window lies inside, else a new padded tensor."""
    lead = tensor.dim() - len(size)
    shape = tensor.shape[lead:]
    inside = tuple(slice(max(c, 0), min(c + n, s)) for c, n, s in zip(corner, size, shape, strict=True))
    if all(c >= 0 and c + n <= s for c, n, s in zip(corner, size, shape, strict=True)):
        return tensor[(slice(None),) * lead + inside]
    out = tensor.new_zeros((*tensor.shape[:lead], *size))
    if fill is not None:
        out += fill.to(out.dtype).view(*fill.shape, *(1,) * len(size))
    if all(part.start < part.stop for part in inside):
        target = tuple(slice(part.start - c, part.stop - c) for part, c in zip(inside, corner, strict=True))
        out[(slice(None),) * lead + target] = tensor[(slice(None),) * lead + inside]
    return out


def border_value(image: torch.Tensor) -> torch.Tensor:
    """Per channel of ``image`` (C, *spatial), the median of the voxels on its outer faces."""
    channels = image.shape[0]
    faces = [
        image.select(axis, end).reshape(channels, -1)
        for axis in range(1, image.dim())
        for end in (0, image.shape[axis] - 1)
    ]
    return torch.cat(faces, dim=1).float().median(dim=1).values


def _class_points(label: np.ndarray | None, seed: int, limit: int = 20_000) -> list[np.ndarray]:
    """Per foreground class present in ``label`` (class indices > 0, or channels of a (C, *spatial)
    target), the coordinates of up to ``limit`` of its voxels."""
    if label is None:
        return []
    rng = np.random.default_rng(seed)
    if label.dtype.kind == "f":
        masks = (label[c] > 0 for c in range(label.shape[0]))
    else:
        present = np.flatnonzero(np.bincount(label.ravel().clip(min=0).astype(np.int64)))
        masks = (label == c for c in present if c > 0)
    result = []
    for mask in masks:
        points = np.argwhere(mask)
        if len(points) > limit:
            points = points[rng.choice(len(points), limit, replace=False)]
        if len(points):
            result.append(points)
    return result


def _grid(shape: tuple[int, ...], patch: tuple[int, ...], stride: tuple[int, ...]) -> list[tuple[int, ...]]:
    corners: list[tuple[int, ...]] = [()]
    for size, p, s in zip(shape, patch, stride, strict=True):
        corners = [c + (start,) for c in corners for start in window_starts(size, p, s)]
    return corners


def grid_size(shape: tuple[int, ...], patch: tuple[int, ...], stride: tuple[int, ...]) -> int:
    return math.prod(len(window_starts(s, p, st)) for s, p, st in zip(shape, patch, stride, strict=True))
