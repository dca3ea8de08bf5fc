"""The augmentation of a run, from its :class:`TrainConfig` (see :mod:`smp3d.augment`)."""

from __future__ import annotations

from collections.abc import Sequence

from ..augment import Augment, preset
from .config import AUGMENTATIONS, TrainConfig
from .errors import TrainingError


def build_augment(
    config: TrainConfig,
    spatial_dims: int | None = None,
    *,
    spacing: Sequence[float] | None = None,
    seed: int | None = None,
) -> Augment:
    """The :class:`~smp3d.augment.Augment` named by ``config.augment`` for ``config.patch``,
    mirroring the ``config.flip`` axes.

    Args:
        config: the run's configuration (``augment``, ``patch``, ``flip``).
        spatial_dims: 2 or 3 (default: ``config.spatial_dims``).
        spacing: voxel spacing of the (resampled) training data, which decides whether a 3D task
            rotates in-plane only; default: ``config.target_spacing``, else judged from the patch.
        seed: a private seed; default: torch's global generator, which the loop reseeds every
            epoch, so a resumed run augments exactly as the uninterrupted one.

    Returns:
        The augmentation; read ``augment.input_shape()`` voxels around each patch.
    """
    spatial_dims = config.spatial_dims if spatial_dims is None else spatial_dims
    spacing = config.target_spacing if spacing is None else spacing
    if config.augment not in AUGMENTATIONS:
        raise TrainingError(f"unknown augmentation {config.augment!r}; expected one of {', '.join(AUGMENTATIONS)}")
    mirror_axes = None if config.flip is True else (() if config.flip is False else tuple(config.flip))
    bad = [a for a in mirror_axes or () if not 0 <= a < spatial_dims]
    if bad:
        raise TrainingError(f"flip axes {bad} out of range: the volumes have {spatial_dims} spatial axes (0-based)")
    try:
        return preset(config.augment, spatial_dims, config.patch, spacing=spacing, mirror_axes=mirror_axes, seed=seed)
    except ValueError as err:
        raise TrainingError(f"augmentation {config.augment!r}: {err}") from None


__all__ = ["build_augment"]
