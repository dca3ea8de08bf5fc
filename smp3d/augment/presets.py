"""Named augmentation recipes: ``nnunet`` (nnU-Net's default transform set and probabilities),
``flips`` (mirroring only) and ``none``."""

from __future__ import annotations

from collections.abc import Sequence

from .compose import Augment
from .intensity import Brightness, Contrast, Gamma, GaussianBlur, GaussianNoise, LowResolution
from .spatial import SpatialTransform

PRESETS = ("nnunet", "flips", "none")

#: A 3D sample is anisotropic when its coarsest axis is this many times coarser than the next
#: (nnU-Net's ``ANISO_THRESHOLD``); it then rotates and scales in-plane only.
ANISOTROPY_THRESHOLD = 3.0


def coarse_axis(patch: Sequence[int], spacing: Sequence[float] | None = None) -> int | None:
    """The axis of a 3D sample that is much coarser than the others, or None.

    With ``spacing`` (mm per voxel), the axis whose spacing is more than
    :data:`ANISOTROPY_THRESHOLD` times the next largest; without it, the axis of the smallest
    patch size when the largest is more than that many times larger (a planner gives a coarse
    axis fewer voxels). 2D samples have none."""
    if len(patch) != 3:
        return None
    if spacing is not None:
        if len(spacing) != 3 or any(s <= 0 for s in spacing):
            raise ValueError(f"spacing must be 3 positive numbers, got {tuple(spacing)}")
        order = sorted(range(3), key=lambda a: spacing[a], reverse=True)
        return order[0] if spacing[order[0]] > ANISOTROPY_THRESHOLD * spacing[order[1]] else None
    smallest = min(range(3), key=lambda a: patch[a])
    return smallest if max(patch) > ANISOTROPY_THRESHOLD * patch[smallest] else None


def preset(
    name: str,
    spatial_dims: int,
    patch: Sequence[int],
    *,
    spacing: Sequence[float] | None = None,
    mirror_axes: Sequence[int] | None = None,
    label_mode: str = "nearest",
    classes: int | None = None,
    seed: int | None = None,
) -> Augment:
    """The :class:`Augment` of a named recipe for patches of size ``patch``.

    ``nnunet`` follows nnU-Net's default trainer: rotation (p 0.2; in 3D up to 30 degrees about
    each axis, or only in-plane up to 180 degrees about a coarse axis, see :func:`coarse_axis`;
    in 2D up to 180 degrees, 15 when the patch is more than 1.5 times longer than wide), scaling
    (p 0.2, 0.7-1.4, in-plane only about a coarse axis), Gaussian noise (p 0.1, std 0-0.1),
    Gaussian blur (p 0.2, sigma 0.5-1, each channel with p 0.5), brightness (p 0.15, x0.75-1.25),
    contrast (p 0.15, 0.75-1.25), simulated low resolution (p 0.25, size x0.5-1, each channel with
    p 0.5, not along a coarse axis), inverted gamma (p 0.1) and gamma (p 0.3), both 0.7-1.5 with
    mean and standard deviation kept, and mirroring (p 0.5 per axis). ``flips`` mirrors only;
    ``none`` changes nothing.

    Args:
        name: one of :data:`PRESETS`.
        spatial_dims: 2 or 3.
        patch: the output patch size (voxels per axis).
        spacing: voxel spacing, used to find a coarse axis (default: judged from ``patch``).
        mirror_axes: axes to mirror (default: all; ``()``: none).
        label_mode: ``"nearest"`` or ``"linear"`` (one-hot, needs ``classes``).
        classes: number of classes of class-index labels (``label_mode="linear"``).
        seed: seed of the augmentation's own generator (default: torch's global generator).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; expected one of {', '.join(PRESETS)}")
    patch = tuple(int(p) for p in patch)
    if len(patch) != spatial_dims:
        raise ValueError(f"patch {patch} has {len(patch)} sizes but spatial_dims is {spatial_dims}")
    if name == "none":
        return Augment(patch=patch, seed=seed)
    if name == "flips":
        flips = SpatialTransform(spatial_dims, p_rotation=0.0, p_scaling=0.0, mirror_axes=mirror_axes)
        return Augment(flips, patch=patch, seed=seed)
    coarse = coarse_axis(patch, spacing) if spatial_dims == 3 else None
    if spatial_dims == 2:
        rotation: tuple[float, ...] = (15.0 if max(patch) > 1.5 * min(patch) else 180.0,)
    elif coarse is None:
        rotation = (30.0, 30.0, 30.0)
    else:
        rotation = tuple(180.0 if a == coarse else 0.0 for a in range(3))
    in_plane = [a for a in range(spatial_dims) if a != coarse]
    spatial = SpatialTransform(
        spatial_dims,
        p_rotation=0.2,
        rotation=rotation,
        p_scaling=0.2,
        scaling=(0.7, 1.4),
        scale_axes=in_plane,
        mirror_axes=mirror_axes,
        p_mirror=0.5,
        label_mode=label_mode,
        classes=classes,
    )
    intensity = [
        GaussianNoise(p=0.1, std=(0.0, 0.1)),
        GaussianBlur(p=0.2, sigma=(0.5, 1.0), p_per_channel=0.5),
        Brightness(p=0.15, multiplier=(0.75, 1.25)),
        Contrast(p=0.15, factor=(0.75, 1.25), preserve_range=True),
        LowResolution(p=0.25, scale=(0.5, 1.0), p_per_channel=0.5, axes=in_plane),
        Gamma(p=0.1, gamma=(0.7, 1.5), invert=True, retain_stats=True),
        Gamma(p=0.3, gamma=(0.7, 1.5), invert=False, retain_stats=True),
    ]
    return Augment(spatial, intensity, patch=patch, seed=seed)
