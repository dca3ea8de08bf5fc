"""Activation checkpointing for encoders and decoders, chosen by what they provide.

A checkpointed unit keeps only its inputs for backward and runs its forward again when the
gradient reaches it: activation memory falls to the unit boundaries, for about one more forward
pass of compute. This is what trains a 256³ U-Net on one GPU.

Units:
- encoder: the blocks of each stage, from :meth:`~smp3d.encoders.Encoder.stage_modules` (a stage
  module that is an ``nn.Sequential`` / ``nn.ModuleList`` contributes each of its blocks);
- decoder: its child modules, with ``nn.ModuleList`` / ``nn.ModuleDict`` children expanded into
  their items (the decoder blocks).

The units keep their classes, attributes and state-dict keys: only their ``forward`` is wrapped,
per instance. The recomputation runs with the normalization layers' running statistics frozen,
so a checkpointed training step updates them exactly once, as an ordinary step does.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.checkpoint import checkpoint

__all__ = ["decoder_units", "encoder_units", "is_checkpointed", "set_checkpointed"]


def _expand(modules) -> list[nn.Module]:  # noqa: ANN001 - any iterable of modules
    units = []
    for module in modules:
        if isinstance(module, (nn.Sequential, nn.ModuleList)):
            units.extend(module)
        elif isinstance(module, nn.ModuleDict):
            units.extend(module.values())
        else:
            units.append(module)
    return [unit for unit in units if next(unit.parameters(), None) is not None]


def encoder_units(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's checkpointing units: the blocks of its stages (see the module docstring)."""
    stage_modules = getattr(encoder, "stage_modules", None)
    depth = getattr(encoder, "depth", None)
    try:
        if stage_modules is None or depth is None:
            raise NotImplementedError
        return _expand(m for stage in range(1, depth + 1) for m in stage_modules(stage))
    except NotImplementedError:
        raise ValueError(
            f"Encoder checkpointing needs the encoder to list its stages (stage_modules(stage), see "
            f"smp3d.encoders.Encoder); {type(encoder).__qualname__} does not. Checkpoint the decoder only."
        ) from None


def decoder_units(decoder: nn.Module) -> list[nn.Module]:
    """The decoder's checkpointing units: its children, lists expanded (see the module docstring)."""
    return _expand(decoder.children())


@contextlib.contextmanager
def _frozen_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Batch statistics are used as usual, but running statistics are left as they are."""
    norms = [m for m in module.modules() if isinstance(m, _NormBase) and m.track_running_stats and m.training]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def _checkpointed_forward(self: nn.Module, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
    forward = type(self).forward.__get__(self)
    if not (self.training and torch.is_grad_enabled()):
        return forward(*args, **kwargs)
    if torch.compiler.is_compiling():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    def contexts():
        return contextlib.nullcontext(), _frozen_norm_statistics(self)

    return checkpoint(forward, *args, use_reentrant=False, context_fn=contexts, **kwargs)


def set_checkpointed(units: list[nn.Module], enabled: bool) -> None:
    """Wrap (or unwrap) each unit's ``forward`` in activation checkpointing."""
    for unit in units:
        if enabled:
            unit.forward = types.MethodType(_checkpointed_forward, unit)
        elif is_checkpointed(unit):
            del unit.forward


def is_checkpointed(unit: nn.Module) -> bool:
    forward = unit.__dict__.get("forward")
    return isinstance(forward, types.MethodType) and forward.__func__ is _checkpointed_forward
