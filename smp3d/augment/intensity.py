"""Intensity transforms of a batch: noise, blur, brightness, contrast, low resolution, gamma.

Each transform is applied to a sample with probability ``p``; parameters are drawn on the host
for the whole batch at once (see :mod:`._random`), and the chosen samples are gathered, changed
with whole-tensor operations and written back. The label is never touched. Images are
(B, C, *spatial) floating-point tensors on any device; 2D and 3D share every line.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._random import around_one, check_probability, check_range, chosen, uniform

_EPSILON = 1e-7


class IntensityTransform:
    """Base of the intensity transforms: ``transform(image, generator, device_generator)``
    returns the batch with the chosen samples changed (``image`` may be changed in place)."""

    p: float = 1.0

    def __call__(
        self, image: torch.Tensor, generator: torch.Generator, device_generator: torch.Generator | None
    ) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(k,) or (k, C) host values as a tensor broadcasting against ``like`` (k, C, *spatial)."""
    values = values if values.dim() == 2 else values[:, None]
    return values.to(device=like.device, dtype=like.dtype).view(*values.shape, *(1,) * (like.dim() - 2))


def _index(members: list[int], count: int, device: torch.device) -> torch.Tensor | None:
    if members == list(range(count)):
        return None
    return torch.tensor(members, dtype=torch.long).to(device, non_blocking=True)


def _gather(image: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    return image if index is None else image.index_select(0, index)


def _scatter(image: torch.Tensor, index: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    if index is None:
        return value
    return image.index_copy_(0, index, value)


def _flat_pairs(samples: list[int], mask: torch.Tensor) -> list[int]:
    """Flat (sample * C + channel) indices of the chosen channels of the chosen samples."""
    channels = mask.shape[1]
    rows = mask.tolist()
    return [b * channels + c for b in samples for c in range(channels) if rows[b][c]]


class GaussianNoise(IntensityTransform):
    """Add zero-mean Gaussian noise; its standard deviation is drawn per sample in ``std``
    (the same for every channel of a sample).

    Args:
        p: probability per sample.
        std: ``(low, high)`` range of the noise's standard deviation (image units).
    """

    def __init__(self, p: float = 0.1, std: Sequence[float] = (0.0, 0.1)) -> None:
        self.p = check_probability("p", p)
        self.std = check_range("std", std, minimum=0.0)

    def __call__(self, image, generator, device_generator):
        batch = image.shape[0]
        samples = chosen(self.p, batch, generator)
        std = uniform(*self.std, (batch,), generator)
        if not samples:
            return image
        index = _index(samples, batch, image.device)
        chosen_images = _gather(image, index)
        noise = torch.randn(chosen_images.shape, generator=device_generator, device=image.device, dtype=image.dtype)
        return _scatter(image, index, chosen_images + noise * _per_sample(std[samples], chosen_images))


class GaussianBlur(IntensityTransform):
    """Blur with a separable Gaussian whose width is drawn per sample, channel and axis.

    Args:
        p: probability per sample.
        sigma: ``(low, high)`` range of the standard deviation in voxels.
        p_per_channel: probability that a channel of a chosen sample is blurred.
        axes: the axes blurred (default: all).
        truncate: kernel radius in standard deviations (borders are mirrored).
    """

    def __init__(
        self,
        p: float = 0.2,
        sigma: Sequence[float] = (0.5, 1.0),
        p_per_channel: float = 0.5,
        axes: Sequence[int] | None = None,
        truncate: float = 4.0,
    ) -> None:
        self.p = check_probability("p", p)
        self.sigma = check_range("sigma", sigma, minimum=1e-3)
        self.p_per_channel = check_probability("p_per_channel", p_per_channel)
        self.axes = None if axes is None else tuple(int(a) for a in axes)
        self.truncate = float(truncate)

    def __call__(self, image, generator, device_generator):
        batch, channels, spatial = image.shape[0], image.shape[1], image.shape[2:]
        samples = chosen(self.p, batch, generator)
        mask = torch.rand(batch, channels, generator=generator, dtype=torch.float64) < self.p_per_channel
        sigmas = uniform(*self.sigma, (batch, channels, len(spatial)), generator)
        pairs = _flat_pairs(samples, mask)
        if not pairs:
            return image
        axes = _check_axes(self.axes, len(spatial), "GaussianBlur axes")
        flat = image.reshape(batch * channels, *spatial)
        index = _index(pairs, batch * channels, image.device)
        values = _gather(flat, index)
        pair_sigmas = sigmas.reshape(batch * channels, len(spatial))[pairs]
        for axis in axes:
            values = _blur_axis(values, pair_sigmas[:, axis], axis, self.truncate)
        return _scatter(flat, index, values).reshape(image.shape)


def _check_axes(axes: tuple[int, ...] | None, count: int, name: str) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(count))
    bad = [a for a in axes if not 0 <= a < count]
    if bad:
        raise ValueError(f"{name} {bad} out of range for images with {count} spatial axes (0-based)")
    return axes


def _blur_axis(values: torch.Tensor, sigma: torch.Tensor, axis: int, truncate: float) -> torch.Tensor:
    """Blur (n, *spatial) ``values`` along spatial ``axis`` with one Gaussian per row (``sigma``
    (n,) on the host): a weighted sum of shifted copies of the mirrored-border volume."""
    size = values.shape[axis + 1]
    radius = min(int(truncate * float(sigma.max()) + 0.5), size - 1)
    if radius < 1:
        return values
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    weights = (weights / weights.sum(1, keepdim=True)).tolist()  # host numbers, no device read
    dims = values.dim() - 1
    padding = [0, 0] * dims  # F.pad lists the last axis first, and mirrors all spatial axes or none
    padding[2 * (dims - 1 - axis) : 2 * (dims - axis)] = [radius, radius]
    padded = F.pad(values[None], padding, mode="reflect")[0]
    result = torch.empty_like(values)
    for row, row_weights in enumerate(weights):
        source, target = padded[row], result[row]
        torch.mul(source.narrow(axis, 0, size), row_weights[0], out=target)
        for k in range(1, 2 * radius + 1):
            target.add_(source.narrow(axis, k, size), alpha=row_weights[k])
    return result


class Brightness(IntensityTransform):
    """Multiply each channel by a factor drawn in ``multiplier`` (half the draws below 1, half above).

    Args:
        p: probability per sample.
        multiplier: ``(low, high)`` range of the factor.
    """

    def __init__(self, p: float = 0.15, multiplier: Sequence[float] = (0.75, 1.25)) -> None:
        self.p = check_probability("p", p)
        self.multiplier = check_range("multiplier", multiplier, minimum=0.0)

    def __call__(self, image, generator, device_generator):
        batch, channels = image.shape[:2]
        samples = chosen(self.p, batch, generator)
        factors = around_one(*self.multiplier, (batch, channels), generator)
        if not samples:
            return image
        index = _index(samples, batch, image.device)
        values = _gather(image, index)
        return _scatter(image, index, values * _per_sample(factors[samples], values))


class Contrast(IntensityTransform):
    """Scale each channel's deviation from its mean by a factor drawn in ``factor``; with
    ``preserve_range`` the result is clipped to the channel's former minimum and maximum.

    Args:
        p: probability per sample.
        factor: ``(low, high)`` range (half the draws below 1, half above).
        preserve_range: clip to the former value range.
    """

    def __init__(self, p: float = 0.15, factor: Sequence[float] = (0.75, 1.25), preserve_range: bool = True) -> None:
        self.p = check_probability("p", p)
        self.factor = check_range("factor", factor, minimum=0.0)
        self.preserve_range = bool(preserve_range)

    def __call__(self, image, generator, device_generator):
        batch, channels = image.shape[:2]
        samples = chosen(self.p, batch, generator)
        factors = around_one(*self.factor, (batch, channels), generator)
        if not samples:
            return image
        index = _index(samples, batch, image.device)
        values = _gather(image, index)
        dims = tuple(range(2, image.dim()))
        mean = values.mean(dims, keepdim=True)
        result = (values - mean) * _per_sample(factors[samples], values) + mean
        if self.preserve_range:
            low, high = values.amin(dims, keepdim=True), values.amax(dims, keepdim=True)
            result = torch.maximum(torch.minimum(result, high), low)
        return _scatter(image, index, result)


class LowResolution(IntensityTransform):
    """Simulate a coarser acquisition: resample a channel down by a factor drawn in ``scale``
    (nearest), then back to its size (``upsample``: ``"linear"``, or ``"cubic"`` in 2D).

    Args:
        p: probability per sample.
        scale: ``(low, high)`` range of the size factor, one per channel for all ``axes``.
        p_per_channel: probability that a channel of a chosen sample is changed.
        axes: the axes made coarser (default: all; leave out an axis that is already coarse).
        upsample: interpolation back to full size.
    """

    def __init__(
        self,
        p: float = 0.25,
        scale: Sequence[float] = (0.5, 1.0),
        p_per_channel: float = 0.5,
        axes: Sequence[int] | None = None,
        upsample: str = "linear",
    ) -> None:
        self.p = check_probability("p", p)
        self.scale = check_range("scale", scale, minimum=1e-3)
        self.p_per_channel = check_probability("p_per_channel", p_per_channel)
        self.axes = None if axes is None else tuple(int(a) for a in axes)
        if upsample not in ("linear", "cubic"):
            raise ValueError(f"upsample must be 'linear' or 'cubic', got {upsample!r}")
        self.upsample = upsample

    def __call__(self, image, generator, device_generator):
        batch, channels, spatial = image.shape[0], image.shape[1], tuple(image.shape[2:])
        samples = chosen(self.p, batch, generator)
        mask = torch.rand(batch, channels, generator=generator, dtype=torch.float64) < self.p_per_channel
        factors = uniform(*self.scale, (batch, channels), generator).tolist()
        pairs = _flat_pairs(samples, mask)
        if not pairs:
            return image
        axes = _check_axes(self.axes, len(spatial), "LowResolution axes")
        if self.upsample == "cubic" and len(spatial) != 2:
            raise ValueError(f"upsample='cubic' is available for 2D images only; got {len(spatial)} spatial axes")
        mode = {"linear": {2: "bilinear", 3: "trilinear"}, "cubic": {2: "bicubic"}}[self.upsample][len(spatial)]
        flat = image.reshape(batch * channels, 1, *spatial)
        # Every channel has its own coarse size, so each is resampled on its own; sizes are host numbers.
        for pair in pairs:
            factor = factors[pair // channels][pair % channels]
            coarse = [max(1, round(s * factor)) if a in axes else s for a, s in enumerate(spatial)]
            down = F.interpolate(flat[pair : pair + 1], size=coarse, mode="nearest-exact")
            flat[pair : pair + 1] = F.interpolate(down, size=spatial, mode=mode, align_corners=False)
        return flat.reshape(image.shape)


class Gamma(IntensityTransform):
    """Gamma correction of each channel within its own value range: ``x`` is mapped to [0, 1],
    raised to a power drawn in ``gamma`` (half the draws below 1, half above) and mapped back;
    with ``retain_stats`` the channel keeps its former mean and standard deviation; with
    ``invert`` the channel is negated before and after (brightening dark values instead).

    Args:
        p: probability per sample.
        gamma: ``(low, high)`` range of the exponent.
        invert: negate before and after.
        retain_stats: restore the former mean and standard deviation.
    """

    def __init__(
        self, p: float = 0.3, gamma: Sequence[float] = (0.7, 1.5), invert: bool = False, retain_stats: bool = True
    ) -> None:
        self.p = check_probability("p", p)
        self.gamma = check_range("gamma", gamma, minimum=1e-3)
        self.invert = bool(invert)
        self.retain_stats = bool(retain_stats)

    def __call__(self, image, generator, device_generator):
        batch, channels = image.shape[:2]
        samples = chosen(self.p, batch, generator)
        gammas = around_one(*self.gamma, (batch, channels), generator)
        if not samples:
            return image
        index = _index(samples, batch, image.device)
        values = _gather(image, index)
        values = -values if self.invert else values
        dims = tuple(range(2, image.dim()))
        low, high = values.amin(dims, keepdim=True), values.amax(dims, keepdim=True)
        spread = high - low
        result = (values - low).div_(spread.clamp_min(_EPSILON)).pow_(_per_sample(gammas[samples], values))
        if self.retain_stats:
            # Mapping back to [low, high] and then standardising equals standardising directly.
            std, mean = torch.std_mean(values, dims, keepdim=True)
            new_std, new_mean = torch.std_mean(result, dims, keepdim=True)
            result.sub_(new_mean).mul_(std / new_std.clamp_min(_EPSILON)).add_(mean)
        else:
            result.mul_(spread).add_(low)
        result = result.neg_() if self.invert else result
        return _scatter(image, index, result)


__all__ = [
    "Brightness",
    "Contrast",
    "Gamma",
    "GaussianBlur",
    "GaussianNoise",
    "IntensityTransform",
    "LowResolution",
]
