"""How a run spends its compute: the learning-rate schedule, warm-up, the time budget, mixed precision.

A schedule is a function of the run's *fraction done*, a number in [0, 1]: the iteration over the
total iterations of a run of ``epochs``, or, with ``TrainConfig.time_budget``, the elapsed seconds
over the budget (:class:`Budget`). So one schedule serves both a fixed number of steps and "I have
20 minutes": the learning rate reaches its end exactly when the run does.

nnU-Net's optimisation (SGD, Nesterov momentum 0.99, lr 1e-2, weight decay 3e-5, poly decay with
exponent 0.9, gradients clipped at norm 12) is :data:`NNUNET_OPTIMISATION`; AdamW with a cosine
decay is the other well-trodden choice and the default of :class:`~smp3d.training.TrainConfig`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from .errors import TrainingError

#: Learning rate and weight decay of each optimiser when ``TrainConfig.lr`` / ``weight_decay`` are None.
OPTIMIZER_DEFAULTS = {
    "adam": {"lr": 1e-3, "weight_decay": 1e-4},
    "adamw": {"lr": 1e-3, "weight_decay": 1e-4},
    "sgd": {"lr": 1e-2, "weight_decay": 3e-5},
}

#: nnU-Net's optimisation, as ``TrainConfig`` fields (``dataclasses.replace(config, **NNUNET_OPTIMISATION)``).
NNUNET_OPTIMISATION: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 1e-2,
    "momentum": 0.99,
    "weight_decay": 3e-5,
    "scheduler": "poly",
    "poly_exponent": 0.9,
    "grad_clip": 12.0,
}

#: ``TrainConfig.amp`` -> the autocast dtype (None: full precision).
AMP_DTYPES = {False: None, None: None, True: torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: bool | str | None) -> torch.dtype | None:
    """The autocast dtype of ``TrainConfig.amp``: False/None (none), True or ``"bf16"``, ``"fp16"``."""
    try:
        return AMP_DTYPES[amp]
    except (KeyError, TypeError):
        raise TrainingError(f"--amp {amp!r}: expected bf16 or fp16 (or True for bf16, False for none)") from None


def autocast_context(device: torch.device, amp: bool | str | None) -> AbstractContextManager:
    """``torch.autocast`` for ``amp``'s dtype on ``device``, or a context that does nothing."""
    dtype = amp_dtype(amp)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def grad_scaler(device: torch.device, amp: bool | str | None) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 training (fp16's range is too short for small gradients), else None."""
    if amp_dtype(amp) is not torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


class LRSchedule:
    """The learning rate as a function of the fraction done ``f`` in [0, 1], set on every step.

    ``kind``: ``"poly"`` (``lr * (1 - f) ** exponent``, nnU-Net's), ``"cosine"`` (from ``lr`` to
    ``min_lr``) or ``"constant"``. During the first ``warmup`` fraction of the run the rate rises
    linearly from ``lr / 100`` to where the decay would be. The base rate of each parameter group is
    read once from the optimiser.

    Args:
        optimizer: its groups' ``lr`` are overwritten by :meth:`update`.
        kind: ``"poly"``, ``"cosine"`` or ``"constant"``.
        warmup: fraction of the run spent warming up, in [0, 1).
        min_lr: the floor of the cosine decay.
        exponent: the poly decay's exponent.
    """

    KINDS = ("poly", "cosine", "constant")

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        kind: str = "poly",
        *,
        warmup: float = 0.0,
        min_lr: float = 0.0,
        exponent: float = 0.9,
    ) -> None:
        if kind not in self.KINDS:
            raise TrainingError(f"unknown schedule {kind!r}; expected one of {', '.join(self.KINDS)}")
        if not 0 <= warmup < 1:
            raise TrainingError(f"--warmup is a fraction of the run in [0, 1), got {warmup}")
        self.optimizer, self.kind, self.warmup, self.min_lr, self.exponent = optimizer, kind, warmup, min_lr, exponent
        self.base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
        for group, base in zip(optimizer.param_groups, self.base_lrs, strict=True):
            group["initial_lr"] = base
        self.fraction = 0.0
        self.update(0.0)

    def factor(self, fraction: float) -> float:
        """The multiplier of the base rate at ``fraction`` done (without warm-up)."""
        f = min(max(fraction, 0.0), 1.0)
        if self.kind == "poly":
            return (1.0 - f) ** self.exponent
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * f))
        return 1.0

    def lr(self, fraction: float, base: float) -> float:
        """The rate of a group of base rate ``base`` at ``fraction`` done."""
        if self.kind == "cosine":
            value = self.min_lr + (base - self.min_lr) * self.factor(fraction)
        else:
            value = base * self.factor(fraction)
        if self.warmup and fraction < self.warmup:
            start = base / 100
            value = start + (value - start) * fraction / self.warmup
        return value

    def update(self, fraction: float) -> None:
        """Set every group's rate for ``fraction`` done."""
        self.fraction = float(fraction)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = self.lr(self.fraction, base)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "fraction": self.fraction, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Checkpoints of torch's CosineAnnealingLR (older smp3d) carry no fraction: the loop sets it anyway.
        if "base_lrs" in state:
            self.base_lrs = [float(lr) for lr in state["base_lrs"]]
        self.update(float(state.get("fraction", self.fraction)))


class Budget:
    """A wall-clock budget: how much of it is spent, and whether there is time for more.

    Args:
        seconds: the whole budget.
        spent: seconds already spent before this session (a resumed run).
        clock: the clock to read, in seconds (``time.perf_counter``; tests pass a fake one).
    """

    def __init__(self, seconds: float, spent: float = 0.0, clock: Callable[[], float] = time.perf_counter) -> None:
        if not seconds > 0:
            raise TrainingError(f"--time-budget must be positive, got {seconds / 60:g} minutes")
        self.seconds, self.clock = float(seconds), clock
        self.started = clock() - spent

    def elapsed(self) -> float:
        """Seconds spent, earlier sessions included."""
        return self.clock() - self.started

    def fraction(self) -> float:
        """The fraction of the budget spent, at most 1."""
        return min(self.elapsed() / self.seconds, 1.0)

    def left(self) -> float:
        """Seconds left (negative once over)."""
        return self.seconds - self.elapsed()

    def allows(self, seconds: float) -> bool:
        """Whether ``seconds`` more of work still end within the budget."""
        return self.left() >= seconds


__all__ = [
    "AMP_DTYPES",
    "Budget",
    "LRSchedule",
    "NNUNET_OPTIMISATION",
    "OPTIMIZER_DEFAULTS",
    "amp_dtype",
    "autocast_context",
    "grad_scaler",
]
