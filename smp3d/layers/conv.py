"""Convolution layers with a faster CPU path for single volumes.

PyTorch picks the CPU backend of an fp32 convolution with a rule tuned for 2D: a batch of one
goes to its native ``slow_conv3d`` unless N·C·D·H exceeds 20480, and oneDNN otherwise. For 3D
segmentation that sends every batch-1 3×3×3 conv at 16³ and 8³ (ResNet's middle stages, the
matching decoder blocks) to a kernel 2-3× slower than oneDNN, in forward and in both halves
of backward.

:func:`conv_nd` splits such a volume in two along its first spatial axis, each half carrying the
rows its outputs read (a halo of ``kernel - stride`` rows), and runs both halves as a batch of two,
which PyTorch sends to oneDNN; the two output halves are joined again. The result is the same
convolution (the same sums, in another order) and autograd differentiates it as usual.
Measured on 2 cores, forward + backward, batch 1: 64 channels at 16³ 40.7 → 14.1 ms, 128 channels
at 8³ 12.8 → 7.7 ms. Below 8³ outputs, and in 2D, the native kernel is as fast or faster, so
those stay where PyTorch puts them (``benchmarks/conv_backends.py`` measures the table).

:class:`Conv1d`, :class:`Conv2d` and :class:`Conv3d` are the torch layers (same parameters,
state-dict keys and ``isinstance``) with this forward; :func:`smp3d.layers.conv` returns them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .capture import capturing_graph

__all__ = ["Conv1d", "Conv2d", "Conv3d", "conv_nd", "set_split_conv", "splits_for_onednn"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

# PyTorch's own limit (aten/src/ATen/native/Convolution.cpp, ``use_mkldnn``): a batch-1 fp32 conv
# with N·C·D·H at or below it runs natively.
_NATIVE_LIMIT = 20480
# Outputs smaller than this many voxels run as fast natively (measured, see the module docstring).
_MIN_OUTPUT_VOXELS = 512
_ENABLED = [True]


def set_split_conv(enabled: bool) -> bool:
    """Turn the batch-1 CPU split on or off for the whole process (for comparisons); returns the previous setting."""
    previous = _ENABLED[0]
    _ENABLED[0] = bool(enabled)
    return previous


def _output_size(size: Sequence[int], kernel: Sequence[int], stride, padding, dilation) -> list[int]:
    return [
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, k, s, p, d in zip(size, kernel, stride, padding, dilation, strict=True)
    ]


def splits_for_onednn(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> bool:
    """Whether :func:`conv_nd` runs this convolution as two halves (see the module docstring)."""
    if (
        not _ENABLED[0]
        or x.dim() != 5
        or x.shape[0] != 1
        or groups != 1
        or x.device.type != "cpu"
        or x.dtype != torch.float32
    ):
        return False
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    if weight.shape[-1] > 3 and weight.shape[-2] > 3:
        return False  # PyTorch already uses oneDNN for large kernels
    if x.shape[1] * x.shape[2] * x.shape[3] > _NATIVE_LIMIT:
        return False  # ... and for large inputs
    out = _output_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    return out[0] >= 2 and out[0] * out[1] * out[2] >= _MIN_OUTPUT_VOXELS


def _split_conv(x, weight, bias, stride, padding, dilation):
    """The convolution of one volume as a batch of two halves along the first spatial axis."""
    pads = [q for p in reversed(padding) for q in (p, p)]
    x = F.pad(x, pads)
    extent = dilation[0] * (weight.shape[2] - 1) + 1  # input rows one output row reads
    rows = (x.shape[2] - extent) // stride[0] + 1
    half = (rows + 1) // 2
    first = x[:, :, : (half - 1) * stride[0] + extent]
    second = x[:, :, half * stride[0] : (rows - 1) * stride[0] + extent]
    if second.shape[2] < first.shape[2]:  # an odd number of rows: pad, then drop the extra output row
        second = F.pad(second, [0, 0] * (x.dim() - 3) + [0, first.shape[2] - second.shape[2]])
    y = F.conv3d(torch.cat([first, second]), weight, bias, stride, 0, dilation)
    return torch.cat([y[:1], y[1:, :, : rows - half]], 2)


def conv_nd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Sequence[int] = (1, 1, 1),
    padding: Sequence[int] = (0, 0, 0),
    dilation: Sequence[int] = (1, 1, 1),
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv{1,2,3}d`` with explicit per-axis ``stride``/``padding``/``dilation`` (zero padding),
    split in two for batch-1 CPU volumes where that is faster (see the module docstring)."""
    # eager only: a captured graph (TorchScript, ONNX, torch.export, compile) stays the plain convolution
    if not capturing_graph() and splits_for_onednn(x, weight, stride, padding, dilation, groups):
        return _split_conv(x, weight, bias, stride, padding, dilation)
    return _CONV[weight.dim() - 2](x, weight, bias, stride, padding, dilation, groups)


class _SplitConvMixin:
    """``_conv_forward`` through :func:`conv_nd` for zero padding given as numbers; TorchScript
    compiles torch's own convolution (``_script_conv_forward``), the fast path being eager-only."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._script_conv_forward(input, weight, bias)
        else:
            if self.padding_mode != "zeros" or isinstance(self.padding, str):
                return super()._conv_forward(input, weight, bias)
            return conv_nd(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Conv1d(_SplitConvMixin, nn.Conv1d):
    def _script_conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv1d(input, weight, bias, self.stride, (0,), self.dilation, self.groups)
        return F.conv1d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2d(_SplitConvMixin, nn.Conv2d):
    def _script_conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(input, weight, bias, self.stride, (0, 0), self.dilation, self.groups)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Conv3d(_SplitConvMixin, nn.Conv3d):
    def _script_conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv3d(input, weight, bias, self.stride, (0, 0, 0), self.dilation, self.groups)
        return F.conv3d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
