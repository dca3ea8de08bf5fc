"""Rotation, scaling and mirroring as one affine map per sample, applied with one resampling.

For every sample of a batch the three are composed into one matrix ``A = R @ S @ M`` (rotation,
scaling, mirroring, in voxel units about the patch centre); the output voxel at offset ``p``
from the patch centre reads the input at ``centre + A @ p``. All samples that rotate or scale
share one ``F.affine_grid`` and one ``F.grid_sample`` per tensor (image linear, label nearest or
one-hot linear), so the label moves with the image on exactly the same grid. Samples that only
mirror (most of them at nnU-Net's probabilities) are cropped and flipped without resampling.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._random import check_probability, check_range, chosen, uniform

IMAGE_MODES = ("linear", "nearest")
LABEL_MODES = ("nearest", "linear")


@dataclass
class SpatialParameters:
    """The spatial draw of one batch (host tensors): ``matrices`` (B, d, d) float64 maps output
    offsets to input offsets in voxels; ``resample`` lists the samples that rotate or scale;
    ``mirror`` (B, d) says which axes each sample flips."""

    matrices: torch.Tensor
    resample: list[int]
    mirror: torch.Tensor


def _rotation_planes(spatial_dims: int) -> list[tuple[int, int]]:
    """The plane each rotation angle turns: in 2D the one plane; in 3D the plane normal to axis 0, 1, 2."""
    if spatial_dims == 2:
        return [(0, 1)]
    return [tuple(a for a in range(3) if a != axis) for axis in range(3)]  # type: ignore[misc]


def rotation_matrices(angles: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """(B, d, d) rotations from (B, n) angles in radians (n = 1 in 2D; in 3D one angle about each
    axis, applied about axis 0 first, then 1, then 2)."""
    batch = angles.shape[0]
    result = torch.eye(spatial_dims, dtype=angles.dtype).expand(batch, -1, -1).clone()
    for k, (i, j) in enumerate(_rotation_planes(spatial_dims)):
        turn = torch.eye(spatial_dims, dtype=angles.dtype).expand(batch, -1, -1).clone()
        cos, sin = torch.cos(angles[:, k]), torch.sin(angles[:, k])
        turn[:, i, i], turn[:, i, j], turn[:, j, i], turn[:, j, j] = cos, -sin, sin, cos
        result = turn @ result
    return result


class SpatialTransform:
    """Random rotation, scaling and mirroring of a batch, one affine resampling per sample.

    Args:
        spatial_dims: 2 or 3.
        p_rotation: probability that a sample rotates.
        rotation: largest angle in degrees, drawn uniformly in ``[-r, r]``: one number (every
            rotation angle), or one per angle (3D: the rotations about axis 0, 1 and 2; 2D: one).
            Use ``(180, 0, 0)`` for in-plane rotation only, about a coarse axis 0.
        p_scaling: probability that a sample scales.
        scaling: ``(low, high)`` range of the scale factor, one factor per sample for all
            ``scale_axes``. A factor above 1 samples a larger region (objects look smaller).
        scale_axes: the axes that scale (default: all).
        mirror_axes: axes each flipped with probability ``p_mirror`` (default: all; ``()``: none).
        p_mirror: probability of a flip per sample and axis.
        image_mode: ``"linear"`` or ``"nearest"`` resampling of the image.
        label_mode: ``"nearest"`` (any label values) or ``"linear"`` (class-index labels become
            one-hot, are resampled linearly and take the arg-max; needs ``classes``).
        classes: number of classes of class-index labels, for ``label_mode="linear"``.

    Outside the input the image reads 0 and the label reads 0 (background).
    """

    def __init__(
        self,
        spatial_dims: int,
        *,
        p_rotation: float = 0.2,
        rotation: float | Sequence[float] = 30.0,
        p_scaling: float = 0.2,
        scaling: Sequence[float] = (0.7, 1.4),
        scale_axes: Sequence[int] | None = None,
        mirror_axes: Sequence[int] | None = None,
        p_mirror: float = 0.5,
        image_mode: str = "linear",
        label_mode: str = "nearest",
        classes: int | None = None,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        self.spatial_dims = spatial_dims
        self.p_rotation = check_probability("p_rotation", p_rotation)
        angles = len(_rotation_planes(spatial_dims))
        rotation = (float(rotation),) * angles if isinstance(rotation, (int, float)) else tuple(map(float, rotation))
        if len(rotation) != angles or any(r < 0 for r in rotation):
            raise ValueError(
                f"rotation takes one or {angles} non-negative angles in degrees for {spatial_dims}D, got {rotation}"
            )
        self.rotation = rotation
        self.p_scaling = check_probability("p_scaling", p_scaling)
        self.scaling = check_range("scaling", scaling, minimum=1e-3)
        self.scale_axes = self._axes("scale_axes", scale_axes)
        self.mirror_axes = self._axes("mirror_axes", mirror_axes)
        self.p_mirror = check_probability("p_mirror", p_mirror)
        if image_mode not in IMAGE_MODES:
            raise ValueError(f"image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
        if label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
        if label_mode == "linear" and (classes is None or classes < 1):
            raise ValueError("label_mode='linear' needs classes (the number of classes of class-index labels)")
        self.image_mode, self.label_mode, self.classes = image_mode, label_mode, classes

    def _axes(self, name: str, axes: Sequence[int] | None) -> tuple[int, ...]:
        if axes is None:
            return tuple(range(self.spatial_dims))
        axes = tuple(int(a) for a in axes)
        bad = [a for a in axes if not 0 <= a < self.spatial_dims]
        if bad:
            raise ValueError(f"{name} {bad} out of range for {self.spatial_dims} spatial axes (0-based)")
        return axes

    @property
    def resamples(self) -> bool:
        """Whether any sample can rotate or scale (otherwise the transform only crops and flips)."""
        rotates = self.p_rotation > 0 and any(r > 0 for r in self.rotation)
        scales = self.p_scaling > 0 and self.scaling != (1.0, 1.0) and bool(self.scale_axes)
        return rotates or scales

    def input_shape(self, patch: Sequence[int]) -> tuple[int, ...]:
        """The window to read around a ``patch`` so that rotation never reads padding near the
        patch centre: the bounding box of the patch turned by every angle in range (scale 1),
        with the same parity as the patch so that the two share their centre voxel."""
        patch = tuple(int(p) for p in patch)
        if len(patch) != self.spatial_dims:
            raise ValueError(f"patch {patch} has {len(patch)} sizes, expected {self.spatial_dims}")
        if not (self.p_rotation > 0 and any(r > 0 for r in self.rotation)):
            return patch
        steps = [torch.linspace(-r, r, max(3, math.ceil(2 * r / 5) + 1), dtype=torch.float64) for r in self.rotation]
        angles = torch.cartesian_prod(*steps).reshape(-1, len(steps)) * (math.pi / 180)
        turns = rotation_matrices(angles, self.spatial_dims)
        half = torch.tensor(patch, dtype=torch.float64) / 2
        corners = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=self.spatial_dims)), dtype=torch.float64)
        reach = (turns @ (corners * half).T).abs().amax(dim=(0, 2))
        shape = []
        for p, r in zip(patch, reach.tolist(), strict=True):
            size = max(p, math.ceil(2 * r - 1e-9))
            shape.append(size + (size - p) % 2)
        return tuple(shape)

    def draw(self, batch: int, generator: torch.Generator) -> SpatialParameters:
        """Draw the parameters of ``batch`` samples at once (host tensors, no device work)."""
        d = self.spatial_dims
        rotate = chosen(self.p_rotation, batch, generator)
        limits = torch.tensor(self.rotation, dtype=torch.float64) * (math.pi / 180)
        angles = uniform(-1.0, 1.0, (batch, len(self.rotation)), generator) * limits
        keep = torch.zeros(batch, dtype=torch.bool)
        keep[rotate] = True
        angles = torch.where(keep[:, None], angles, torch.zeros_like(angles))
        scale = chosen(self.p_scaling, batch, generator)
        factors = uniform(*self.scaling, (batch,), generator)
        scales = torch.ones(batch, d, dtype=torch.float64)
        for axis in self.scale_axes:
            scales[scale, axis] = factors[scale]
        flips = torch.rand(batch, d, generator=generator, dtype=torch.float64) < self.p_mirror
        mirror = torch.zeros(batch, d, dtype=torch.bool)
        mirror[:, list(self.mirror_axes)] = flips[:, list(self.mirror_axes)]
        signs = 1.0 - 2.0 * mirror.to(torch.float64)
        matrices = rotation_matrices(angles, d) @ torch.diag_embed(scales * signs)
        moved = set(rotate) if any(r > 0 for r in self.rotation) else set()
        if self.scale_axes and self.scaling != (1.0, 1.0):
            moved |= set(scale)
        resample = sorted(moved)
        return SpatialParameters(matrices, resample, mirror)

    def __call__(
        self,
        image: torch.Tensor,
        label: torch.Tensor | None,
        shape: Sequence[int],
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Transform a batch. ``image`` (B, C, *in_shape); ``label`` (B, *in_shape) class
        indices, (B, K, *in_shape) channels, or None; the result has spatial size ``shape``
        (at most ``in_shape``), centred on the input's centre."""
        params = self.draw(image.shape[0], generator)
        return self.apply(image, label, shape, params)

    def apply(
        self,
        image: torch.Tensor,
        label: torch.Tensor | None,
        shape: Sequence[int],
        params: SpatialParameters,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply drawn ``params`` (see :meth:`__call__`)."""
        batch, d = image.shape[0], self.spatial_dims
        in_shape, shape = tuple(image.shape[2:]), tuple(int(s) for s in shape)
        if any(s > n for s, n in zip(shape, in_shape, strict=True)):
            raise ValueError(f"output patch {shape} is larger than the input {in_shape} on some axis")
        offset = tuple((n - s) // 2 for n, s in zip(in_shape, shape, strict=True))
        channelled = label is not None and label.dim() == image.dim()
        lead = 2 if channelled else 1
        out_image = image.new_empty((*image.shape[:2], *shape))
        out_label = None
        if label is not None:
            out_label = label.new_empty((*label.shape[:lead], *shape))

        resample = params.resample
        rest = [i for i in range(batch) if i not in set(resample)]
        window = tuple(slice(o, o + s) for o, s in zip(offset, shape, strict=True))
        # Crop and flip the samples that only mirror, grouped by their flip pattern.
        groups: dict[tuple[bool, ...], list[int]] = {}
        mirror = params.mirror.tolist()
        for i in rest:
            groups.setdefault(tuple(mirror[i]), []).append(i)
        for pattern, members in groups.items():
            axes = [a for a in range(d) if pattern[a]]
            index = _index(members, batch, image.device)
            piece = _take(image, index)[(slice(None), slice(None), *window)]
            _put(out_image, index, piece.flip([a + 2 for a in axes]) if axes else piece)
            if label is not None and out_label is not None:
                part = _take(label, index)[(slice(None),) * lead + window]
                _put(out_label, index, part.flip([a + lead for a in axes]) if axes else part)

        if resample:
            index = _index(resample, batch, image.device)
            theta = _theta(params.matrices[resample], in_shape, shape, offset).to(image.device)
            grid = affine_grid(theta.to(image.dtype), shape)
            mode = "bilinear" if self.image_mode == "linear" else "nearest"
            moved = F.grid_sample(_take(image, index), grid, mode=mode, padding_mode="zeros", align_corners=False)
            _put(out_image, index, moved)
            if label is not None and out_label is not None:
                _put(out_label, index, self._resample_label(_take(label, index), grid.float(), channelled))
        return out_image, out_label

    def _resample_label(self, label: torch.Tensor, grid: torch.Tensor, channelled: bool) -> torch.Tensor:
        source = label if channelled else label.unsqueeze(1)
        if self.label_mode == "nearest":
            moved = F.grid_sample(source.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
            moved = moved if label.is_floating_point() else moved.round()
            moved = moved.to(label.dtype)
            return moved if channelled else moved[:, 0]
        if channelled:
            moved = F.grid_sample(source.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            return moved.to(label.dtype) if label.is_floating_point() else (moved >= 0.5).to(label.dtype)
        # Foreground channels only: background's score is 1 minus theirs, which also makes the outside
        # background. A comparison rather than F.one_hot, which checks the label range on the host.
        values = torch.arange(1, int(self.classes or 1), device=label.device)
        result = torch.zeros((label.shape[0], *grid.shape[1:-1]), dtype=label.dtype, device=label.device)
        if values.numel() == 0:
            return result
        one_hot = (label.unsqueeze(1) == values.view(1, -1, *(1,) * (label.dim() - 1))).float()
        moved = F.grid_sample(one_hot, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # A running comparison: argmax over the channel axis is many times slower on the CPU.
        best = 1.0 - moved.sum(1)
        for channel in range(moved.shape[1]):
            score = moved[:, channel]
            result = torch.where(score > best, channel + 1, result)
            best = torch.maximum(best, score)
        return result


def affine_grid(theta: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``F.affine_grid(theta, (k, 1, *shape), align_corners=False)``, computed as a sum of one
    broadcast term per axis (a few passes over the grid instead of a batched matrix product;
    about twice as fast on the CPU, and the same numbers)."""
    k, d = theta.shape[0], len(shape)
    grid = theta.new_empty((k, *shape, d))
    grid.copy_(theta[:, :, d].view(k, *(1,) * d, d).expand_as(grid))
    for axis, size in enumerate(shape):
        # Normalised voxel centres of this axis; affine_grid's column for it is d - 1 - axis.
        coords = (torch.arange(size, device=theta.device, dtype=theta.dtype) * 2 + 1) / size - 1
        column = theta[:, :, d - 1 - axis].view(k, *(1,) * d, d)
        grid.add_(coords.view(1, *(size if a == axis else 1 for a in range(d)), 1) * column)
    return grid


def _theta(matrices: torch.Tensor, in_shape: tuple[int, ...], shape: tuple[int, ...], offset: tuple[int, ...]):
    """``F.affine_grid``'s (k, d, d + 1) matrices for ``matrices`` (k, d, d) in voxel units.

    In normalised coordinates (``align_corners=False``) an output offset ``v`` reads the input at
    ``diag(1/N) @ A @ diag(M) @ v + t`` with ``t = (2 * offset + M - N) / N``; ``affine_grid``
    orders its axes last-first, so rows and columns are reversed."""
    n = torch.tensor(in_shape, dtype=torch.float64)
    m = torch.tensor(shape, dtype=torch.float64)
    linear = matrices * m[None, None, :] / n[None, :, None]
    shift = (2 * torch.tensor(offset, dtype=torch.float64) + m - n) / n
    linear = linear.flip(1).flip(2)
    shift = shift.flip(0).expand(linear.shape[0], -1)
    return torch.cat([linear, shift[:, :, None]], dim=2).float()


def _index(members: list[int], batch: int, device: torch.device) -> torch.Tensor | None:
    """The device index of ``members`` of a batch, or None when they are the whole batch in order."""
    if members == list(range(batch)):
        return None
    return torch.tensor(members, dtype=torch.long).to(device, non_blocking=True)


def _take(tensor: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return tensor if index is None else tensor.index_select(0, index)


def _put(out: torch.Tensor, index: torch.Tensor | None, value: torch.Tensor) -> None:
    if index is None:
        out.copy_(value)
    else:
        out.index_copy_(0, index, value)
