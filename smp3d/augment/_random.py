"""Random parameters of a batch, drawn on the host with a ``torch.Generator``.

Every parameter of every transform is drawn here, for the whole batch at once, as small CPU
tensors. What the device does with them needs no value back from the device: which samples a
transform touches, kernel sizes and resampled shapes are known on the host before any voxel is
read, so augmenting a CUDA batch never waits for the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def chosen(p: float, count: int, generator: torch.Generator) -> list[int]:
    """Indices in ``range(count)`` each chosen with probability ``p`` (one draw per index)."""
    draws = torch.rand(count, generator=generator, dtype=torch.float64)
    return torch.nonzero(draws < p).flatten().tolist()


def uniform(low: float, high: float, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Uniform samples in ``[low, high)``, float64 on the host."""
    return low + (high - low) * torch.rand(tuple(shape), generator=generator, dtype=torch.float64)


def around_one(low: float, high: float, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Factors in ``[low, high]`` drawn so that shrinking and growing are equally likely: with
    probability 1/2 uniform in ``[low, 1)``, else uniform in ``[1, high)`` (when ``low < 1 < high``).
    nnU-Net draws its brightness, contrast and gamma factors this way."""
    below = uniform(low, min(high, 1.0), shape, generator)
    above = uniform(max(low, 1.0), high, shape, generator)
    if low >= 1.0:
        return above
    if high <= 1.0:
        return below
    pick_below = torch.rand(tuple(shape), generator=generator, dtype=torch.float64) < 0.5
    return torch.where(pick_below, below, above)


def check_probability(name: str, p: float) -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def check_range(name: str, value: Sequence[float], *, minimum: float | None = None) -> tuple[float, float]:
    """A ``(low, high)`` pair with ``low <= high`` (and ``low >= minimum`` when given)."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if low > high or (minimum is not None and low < minimum):
        bound = f" and low >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must satisfy low <= high{bound}, got ({low}, {high})")
    return low, high


def device_generator(device: torch.device, seed: int) -> torch.Generator | None:
    """A generator on ``device`` seeded with ``seed``, for noise drawn where the image lives.
    Meta tensors hold no values (tests use them to prove that nothing is read back), so they
    take no generator."""
    if device.type == "meta":
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
