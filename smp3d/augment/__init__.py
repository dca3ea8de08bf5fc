"""``smp3d.augment``: batched 2D/3D augmentation on the training device, in pure PyTorch.

A batch ``(image, label)`` is augmented where it lives (CPU or GPU). Rotation, scaling and
mirroring are one affine resampling per sample (the label follows the image on the same grid);
intensity transforms follow. Parameters are drawn for the whole batch at once on the host, so
nothing waits on the device::

    from smp3d.augment import preset

    augment = preset("nnunet", spatial_dims=3, patch=(96, 96, 96), seed=0)
    window = augment.input_shape()            # read this much around each patch (rotations)
    image, label = augment(image, label)      # (B, C, *window) -> (B, C, 96, 96, 96)

See ``docs/augment.md`` for every option.
"""

from __future__ import annotations

from .compose import Augment
from .intensity import Brightness, Contrast, Gamma, GaussianBlur, GaussianNoise, IntensityTransform, LowResolution
from .presets import ANISOTROPY_THRESHOLD, PRESETS, coarse_axis, preset
from .spatial import SpatialParameters, SpatialTransform, rotation_matrices

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "PRESETS",
    "Augment",
    "Brightness",
    "Contrast",
    "Gamma",
    "GaussianBlur",
    "GaussianNoise",
    "IntensityTransform",
    "LowResolution",
    "SpatialParameters",
    "SpatialTransform",
    "coarse_axis",
    "preset",
    "rotation_matrices",
]
