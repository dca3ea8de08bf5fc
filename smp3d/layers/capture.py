"""What graph capture (TorchScript, ONNX export, ``torch.export``, ``torch.compile``) needs from layers.

Fast paths that make Python-level decisions on shapes and devices (the batch-1 split convolution,
the fused upsample) are eager-only: a captured graph must be the plain computation, valid for any
batch size and backend. Axis moves use non-negative permutations, which every exporter accepts
(the TorchScript ONNX exporter writes ``movedim(-1, 1)`` as a ``Transpose`` with ``perm`` holding -1,
which onnxruntime rejects).
"""

from __future__ import annotations

import torch

__all__ = ["capturing_graph", "channels_first", "channels_last"]


def capturing_graph(compiling: bool = True) -> bool:
    """Whether the code runs under graph capture: scripting, tracing (``jit.trace`` and the TorchScript
    ONNX exporter), ``torch.export``, or (with ``compiling``) ``torch.compile``.

    ``compiling=False`` keeps a fast path in ``torch.compile``, whose guards re-check the Python
    decision for every new shape; exported graphs have no such guards."""
    if torch.jit.is_scripting():
        return True
    return (
        torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_exporting()
        or (compiling and torch.compiler.is_compiling())
    )


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial) -> (B, *spatial, C)`` (a view), as ``x.movedim(1, -1)`` with explicit axes."""
    n = x.dim()
    return x.permute([0] + list(range(2, n)) + [1])


def channels_first(x: torch.Tensor) -> torch.Tensor:
    """``(B, *spatial, C) -> (B, C, *spatial)`` (a view), as ``x.movedim(-1, 1)`` with explicit axes."""
    n = x.dim()
    return x.permute([0, n - 1] + list(range(1, n - 1)))
