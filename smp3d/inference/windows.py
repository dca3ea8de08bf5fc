"""Window placement and blending weights for sliding-window inference, for any number of spatial axes.

Everything here works on Python ints (placement) or builds one small tensor (the importance map);
nothing depends on the values of the volume, so the whole window grid is known before the first
model call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch

BLEND_MODES = ("gaussian", "constant")

# Weights below this floor are raised to it: a window's border must still count a little, otherwise a
# voxel seen only by window borders would divide ~0 by ~0.
MIN_IMPORTANCE = 1e-3


def per_axis(value, spatial_dims: int, name: str) -> tuple:
    """`value` repeated for every spatial axis, or checked to hold one entry per axis."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return (value,) * spatial_dims
    if len(value) != spatial_dims:
        raise ValueError(
            f"`{name}` has {len(value)} entries {tuple(value)} but the volume has {spatial_dims} spatial axes; "
            f"give one value or one per spatial axis."
        )
    return tuple(value)


def resolve_patch_size(patch_size, spatial_shape: Sequence[int]) -> tuple[int, ...]:
    """Per-axis patch size; `None` or -1 on an axis means the whole axis."""
    entries = per_axis(patch_size, len(spatial_shape), "patch_size")
    resolved = []
    for axis, (entry, size) in enumerate(zip(entries, spatial_shape, strict=True)):
        if entry is None or (isinstance(entry, int) and not isinstance(entry, bool) and entry == -1):
            resolved.append(int(size))
        elif isinstance(entry, int) and not isinstance(entry, bool) and entry > 0:
            resolved.append(entry)
        else:
            raise ValueError(
                f"`patch_size` must hold positive ints (or None / -1 for a whole axis); axis {axis} got {entry!r}."
            )
    return tuple(resolved)


def resolve_overlap(overlap, spatial_dims: int) -> tuple[float, ...]:
    """Per-axis overlap fraction, each in [0, 1)."""
    entries = per_axis(overlap, spatial_dims, "overlap")
    for axis, entry in enumerate(entries):
        if isinstance(entry, bool) or not isinstance(entry, (int, float)) or not 0 <= entry < 1:
            raise ValueError(f"`overlap` must be a number in [0, 1) (per axis); axis {axis} got {entry!r}.")
    return tuple(float(entry) for entry in entries)


def window_step(patch: int, overlap: float, size: int) -> int:
    """Distance between two window starts on one axis: patch * (1 - overlap), at least 1.

    A patch that covers the whole (padded) axis has a single window, so its step is the patch itself.
    """
    if patch >= size:
        return patch
    return max(int(patch * (1 - overlap)), 1)


def window_starts(size: int, patch: int, step: int) -> list[int]:
    """Starts of the windows on one axis of length `size` (>= patch): a regular grid with the given
    step, stopping at the first window that reaches the end, moved back to end flush with the axis."""
    if patch >= size:
        return [0]
    count = math.ceil((size - patch) / step) + 1
    return [min(index * step, size - patch) for index in range(count)]


def symmetric_padding(size: int, patch: int) -> tuple[int, int]:
    """Padding (before, after) that brings an axis shorter than the patch up to the patch, centred."""
    missing = max(patch - size, 0)
    return missing // 2, missing - missing // 2


def importance_map(
    patch_size: Sequence[int],
    blend: str = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Weight of each voxel of a window when overlapping predictions are averaged, shape `patch_size`.

    - ``"constant"``: all ones (plain average).
    - ``"gaussian"``: the product over axes of ``exp(-x**2 / (2 * sigma**2))``, x measured from the
      window centre in voxels and ``sigma = sigma_scale * patch`` per axis, so the peak is 1 (exactly 1
      at the centre voxel of odd-sized axes); values are then raised to at least 1e-3 so that window
      borders still contribute.

    The same values as MONAI's ``compute_importance_map`` for the same arguments. The map is cached
    per (patch, blend, sigma, device, dtype); treat the returned tensor as read-only.
    """
    patch = tuple(int(p) for p in patch_size)
    if blend not in BLEND_MODES:
        raise ValueError(f"Unknown blend {blend!r}; expected one of {BLEND_MODES}.")
    sigmas = per_axis(sigma_scale, len(patch), "sigma_scale")
    for axis, scale in enumerate(sigmas):
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"`sigma_scale` must be a positive number (per axis); axis {axis} got {scale!r}.")
    sigmas = tuple(float(scale) for scale in sigmas) if blend == "gaussian" else ()
    return _cached_importance_map(patch, blend, sigmas, torch.device(device or "cpu"), dtype)


@lru_cache(maxsize=16)
def _cached_importance_map(
    patch: tuple[int, ...], blend: str, sigma_scales: tuple[float, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    # Built outside inference mode so the cached tensor can also be used where autograd records.
    with torch.inference_mode(False):
        if blend == "constant":
            return torch.ones(patch, device=device, dtype=dtype)
        weights = torch.ones((), device=device, dtype=torch.float32)
        for axis, (size, scale) in enumerate(zip(patch, sigma_scales, strict=True)):
            offsets = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2.0
            profile = torch.exp(offsets**2 / (-2 * (scale * size) ** 2))
            weights = weights.unsqueeze(-1) * profile.view((1,) * axis + (size,))
        return weights.clamp_(min=MIN_IMPORTANCE).to(dtype)
