"""TorchScript support: which models ``torch.jit.script`` can compile, and a clear refusal for the rest.

A module class says whether TorchScript can compile it with ``_is_torch_scriptable`` (smp's flag)
and why not with ``_torch_script_refusal``. :class:`~smp3d.base.SegmentationModel` checks its
architecture and its encoder before TorchScript starts (``__prepare_scriptable__``, called by
``torch.jit.script``), so a model that cannot be scripted raises one error naming the path, the
part and the reason, instead of a TorchScript compiler message deep inside a block.
``torch.jit.trace``, ``torch.export`` and ONNX export work for every model (docs/export.md).
"""

from __future__ import annotations

import torch.nn as nn

__all__ = ["TorchScriptError", "check_scriptable", "script_refusal"]

_OTHER_PATHS = "torch.jit.trace, torch.export.export and torch.onnx.export work for every model (see docs/export.md)"


class TorchScriptError(RuntimeError):
    """``torch.jit.script`` was called on a model with a part that TorchScript cannot compile."""


def script_refusal(module: nn.Module) -> str | None:
    """The reason ``module``'s own class cannot be scripted, or ``None`` if it says it can (or says nothing)."""
    if getattr(module, "_is_torch_scriptable", True):
        return None
    reason = getattr(module, "_torch_script_refusal", "") or "its forward is not written for TorchScript"
    return f"{type(module).__name__}: {reason}"


def check_scriptable(model: nn.Module) -> None:
    """Raise :class:`TorchScriptError` if ``model``, its encoder or its decoder refuses TorchScript."""
    parts = [model]
    for name in ("encoder", "decoder"):
        part = getattr(model, name, None)
        if isinstance(part, nn.Module):
            parts.append(part)
    reasons = [r for r in map(script_refusal, parts) if r is not None]
    if reasons:
        raise TorchScriptError(
            f"torch.jit.script cannot compile this {type(model).__name__}: {'; '.join(reasons)}. {_OTHER_PATHS}."
        )
