"""Compute budgets: a trial training step measures what a patch costs (seconds on the CPU, peak
memory on CUDA), and :func:`fit_budget` finds the largest patch, then the batch, that a budget allows.
Used by :func:`smp3d.training.plan.make_plan`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import TrainingError

__all__ = ["MIN_BATCH", "Measure", "StepCost", "fit_budget", "measure_step"]

MIN_BATCH = 2


@dataclass
class StepCost:
    """One measured training step: ``seconds``, and on CUDA ``peak_bytes`` (the step's peak memory)
    and ``static_bytes`` (what stays allocated between steps: weights, gradients, optimiser state)."""

    seconds: float
    peak_bytes: int | None = None
    static_bytes: int | None = None
    cpu_seconds: float | None = None  # the process's CPU time for the step

    @property
    def cpu_step_seconds(self) -> float:
        """A CPU step's seconds without other processes' contention: its CPU time over torch's threads
        (a lower bound of the wall time on an idle machine, exact with one thread)."""
        if self.cpu_seconds is None:
            return self.seconds
        return min(self.seconds, self.cpu_seconds / max(torch.get_num_threads(), 1))


def measure_step(
    arch: str,
    encoder: str,
    model_kwargs: dict[str, Any],
    *,
    in_channels: int,
    classes: int,
    spatial_dims: int,
    patch: Sequence[int],
    batch: int,
    device: torch.device | str = "cpu",
    amp: bool | str = False,
) -> StepCost:
    """Build the model and time a training step (AdamW, cross-entropy): the faster of two after one
    warm-up step; on CUDA also the peak memory of those steps."""
    from ..models import create_model

    device = torch.device(device)
    model = create_model(
        arch,
        encoder_name=encoder,
        in_channels=in_channels,
        classes=max(classes, 2),
        spatial_dims=spatial_dims,
        **model_kwargs,
    ).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    image = torch.randn(batch, in_channels, *patch, device=device)
    target = torch.randint(0, max(classes, 2), (batch, *patch), device=device)
    half = torch.float16 if amp == "fp16" else torch.bfloat16
    autocast = torch.autocast(device.type, dtype=half, enabled=bool(amp))

    def step() -> None:
        with autocast:
            out = model(image)
        out = out[0] if isinstance(out, list) else out
        loss = torch.nn.functional.cross_entropy(out.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    cuda = device.type == "cuda"
    step()
    static = None
    if cuda:
        torch.cuda.synchronize(device)
        static = torch.cuda.memory_allocated(device) - image.nbytes - target.nbytes
        torch.cuda.reset_peak_memory_stats(device)
    seconds = cpu_seconds = math.inf
    for _ in range(2):  # the faster of two steps: less noise from other work on the machine
        started, cpu_started = time.perf_counter(), time.process_time()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        seconds = min(seconds, time.perf_counter() - started)
        cpu_seconds = min(cpu_seconds, time.process_time() - cpu_started)
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return StepCost(seconds, peak, static, None if cuda else cpu_seconds)


#: ``measure(patch, batch) -> (cost, static cost)`` in the budget's unit.
Measure = Callable[[tuple[int, ...], int], tuple[float, float]]


def fit_budget(
    measure: Measure,
    budget: float,
    candidate: Callable[[float], tuple[int, ...]],
    largest_voxels: float,
    calibration_voxels: float,
    trials: int = 5,
) -> tuple[tuple[int, ...], int, list[dict[str, Any]]]:
    """The largest patch whose batch of :data:`MIN_BATCH` costs at most ``budget``, and the batch
    the budget then allows (before the dataset cap).

    Args:
        measure: ``(patch, batch) -> (cost, static cost)``; static is the part a larger batch
            does not grow (weights and optimiser state for memory, 0 for time).
        budget: the allowed cost per step.
        candidate: ``voxels -> patch`` of about that many voxels.
        largest_voxels: voxels of the largest allowed patch.
        calibration_voxels: voxels of the first (small) trial.
        trials: most measurements after the first.

    Returns:
        (patch, batch, the trials as dicts of patch, batch and cost).
    """
    log: list[dict[str, Any]] = []
    points: list[tuple[float, float]] = []  # (voxels, cost) at MIN_BATCH
    best: tuple[tuple[int, ...], float, float] | None = None
    patch = candidate(min(calibration_voxels, largest_voxels))
    tried: set[tuple[int, ...]] = set()
    for _ in range(trials + 1):
        tried.add(patch)
        cost, static = measure(patch, MIN_BATCH)
        voxels = float(np.prod(patch))
        log.append({"patch": list(patch), "batch": MIN_BATCH, "cost": round(cost, 6)})
        points.append((voxels, cost))
        if cost <= budget and (best is None or voxels > float(np.prod(best[0]))):
            best = (patch, cost, static)
        goal = _voxels_for(points, budget * 0.95)
        following = candidate(min(goal, largest_voxels))
        if following in tried:
            break
        if best is not None and float(np.prod(following)) < 1.1 * float(np.prod(best[0])):
            break  # within 10% of the best fitting patch: not worth another trial
        patch = following
    if best is None:
        raise TrainingError(
            f"no patch fits the budget: the smallest tried, {list(log[-1]['patch'])} with batch {MIN_BATCH}, "
            f"costs {log[-1]['cost']:.4g} against a budget of {budget:.4g}; raise the budget"
        )
    patch, cost, static = best
    per_sample = max((cost - static) / MIN_BATCH, 1e-12)
    batch = max(MIN_BATCH, int((budget - static) // per_sample))
    return patch, batch, log


def _voxels_for(points: list[tuple[float, float]], cost: float) -> float:
    """Voxels whose cost would be ``cost``: a line through the two latest points (cost = a + b * voxels)
    when it rises, else proportional to the latest."""
    voxels, measured = points[-1]
    if len(points) >= 2:
        (v0, c0), (v1, c1) = points[-2], points[-1]
        if v1 != v0 and (c1 - c0) / (v1 - v0) > 0:
            slope = (c1 - c0) / (v1 - v0)
            return max(v1 + (cost - c1) / slope, 1.0)
    return max(voxels * cost / max(measured, 1e-12), 1.0)
