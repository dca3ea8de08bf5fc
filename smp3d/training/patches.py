"""Patches of in-memory volumes for training: a grid at a stride, or random windows with
foreground oversampling, each flipped at random along chosen axes."""

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
    ``samples`` is given, that many random windows per epoch (``foreground`` of them centred
    on a labelled voxel). Each spatial axis in ``flip`` (all of them for ``True``, none for
    ``False``) is flipped at random, with probability 1/2, independently of the others."""

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
    ) -> None:
        check_patch(volumes, patch)
        self.volumes = volumes
        self.patch = tuple(patch)
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
        self._foreground_points = [self._sample_foreground(v.label, seed) for v in volumes]
        if samples is None:
            stride = tuple(stride or self.patch)
            self.windows = [
                (i, corner) for i, v in enumerate(volumes) for corner in _grid(v.spatial_shape, self.patch, stride)
            ]
        else:
            self.set_epoch(0)

    @staticmethod
    def _sample_foreground(label: np.ndarray | None, seed: int, limit: int = 100_000) -> np.ndarray:
        if label is None:
            return np.zeros((0, 0), dtype=np.int64)
        mask = label.any(axis=0) if label.dtype.kind == "f" else label > 0
        points = np.argwhere(mask)
        if len(points) > limit:
            points = points[np.random.default_rng(seed).choice(len(points), limit, replace=False)]
        return points

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's random windows (the same on every process for a given epoch)."""
        if self.samples is None:
            return
        rng = np.random.default_rng((self.seed, epoch))
        windows = []
        for _ in range(self.samples):
            i = int(rng.integers(len(self.volumes)))
            shape = self.volumes[i].spatial_shape
            points = self._foreground_points[i]
            if len(points) and rng.random() < self.foreground:
                centre = points[rng.integers(len(points))]
                corner = tuple(
                    int(min(max(c - p // 2, 0), s - p)) for c, p, s in zip(centre, self.patch, shape, strict=True)
                )
            else:
                corner = tuple(int(rng.integers(s - p + 1)) for s, p in zip(shape, self.patch, strict=True))
            windows.append((i, corner))
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i, corner = self.windows[index]
        region = tuple(slice(c, c + p) for c, p in zip(corner, self.patch, strict=True))
        image = self.images[i][(slice(None), *region)]
        label = self.labels[i]
        label = label[(slice(None), *region)] if label.dim() == image.dim() else label[region]
        if self.flip_axes:
            axes = [a for a in self.flip_axes if torch.rand(()) < 0.5]
            if axes:
                image = image.flip([a + 1 for a in axes])
                offset = label.dim() - len(self.patch)
                label = label.flip([a + offset for a in axes])
        return image.contiguous(), label.contiguous()


def _grid(shape: tuple[int, ...], patch: tuple[int, ...], stride: tuple[int, ...]) -> list[tuple[int, ...]]:
    corners: list[tuple[int, ...]] = [()]
    for size, p, s in zip(shape, patch, stride, strict=True):
        corners = [c + (start,) for c in corners for start in window_starts(size, p, s)]
    return corners


def grid_size(shape: tuple[int, ...], patch: tuple[int, ...], stride: tuple[int, ...]) -> int:
    return math.prod(len(window_starts(s, p, st)) for s, p, st in zip(shape, patch, stride, strict=True))
