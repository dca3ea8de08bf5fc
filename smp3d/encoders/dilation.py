"""Dilated (atrous) encoders: trade the deepest strides for dilation, per axis.

DeepLab and PAN keep the deepest features at a finer resolution by removing the strides of the
last stages and dilating every convolution after them by the product of the removed strides,
so that the receptive fields stay those of the pretrained network (Chen et al., 2017). Here it
is done per axis: a volume reduced by ``(32, 32, 4)`` asked for an output stride of 8 loses the
last two strides along the first two axes and keeps them along the third.

The encoder side of the hook is :meth:`smp3d.encoders.Encoder.make_dilated`, which needs only
:meth:`~smp3d.encoders.Encoder.stage_modules` from a family. The convention is the one of
segmentation_models_pytorch (so pretrained 2D models give the same outputs): every convolution of
an affected stage, the formerly strided one included, gets stride 1 and the stage's dilation
rate along the affected axes, with padding ``(kernel // 2) * rate``. Pooling layers (VGG,
DenseNet transitions, stems), which smp refuses, follow DeepLab v1's treatment of VGG's last
pools: stride 1, an odd kernel (``k`` or ``k + 1``) and padding ``kernel // 2``, so sizes are kept.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.pooling import _AvgPoolNd, _MaxPoolNd

from ..layers.factories import as_tuple

__all__ = ["DilationSchedule", "dilate_encoder", "dilate_module", "dilation_schedule", "resolve_output_stride"]

DilationSchedule = tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]


def resolve_output_stride(
    output_stride: Any, spatial_dims: int, owner: str = "encoder_output_stride"
) -> tuple[int, ...]:
    """An int or a per-axis tuple of positive ints -> a ``spatial_dims`` tuple."""
    if isinstance(output_stride, int) and not isinstance(output_stride, bool):
        output_stride = (output_stride,) * spatial_dims
    if (
        not isinstance(output_stride, Sequence)
        or len(output_stride) != spatial_dims
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in output_stride)
    ):
        raise ValueError(
            f"{owner} must be a positive int or a tuple of {spatial_dims} positive ints (one per axis), "
            f"got {output_stride!r}."
        )
    return tuple(output_stride)


def dilation_schedule(
    strides: Sequence[Sequence[int]], output_stride: int | Sequence[int], name: str = "encoder"
) -> DilationSchedule:
    """Per-stage strides and dilation rates that bring the total reduction down to ``output_stride``.

    Along each axis whose total reduction exceeds the target, the strides of the deepest strided
    stages are removed (set to 1) until the product of the remaining ones equals the target;
    stage ``i``'s rate is the product of the strides removed at stages ``<= i``. Axes already at
    or below the target are left alone. Returns ``(new_strides, rates)``, one per-axis tuple per
    stage. Raises a ValueError when the target cannot be reached exactly (e.g. a stride-4 stage
    between 32 and 16).
    """
    strides = [tuple(s) for s in strides]
    if not strides:
        raise ValueError(f"{name} has no stages to dilate.")
    spatial_dims = len(strides[0])
    target = resolve_output_stride(output_stride, spatial_dims)
    new = [list(s) for s in strides]
    for axis in range(spatial_dims):
        total = math.prod(s[axis] for s in strides)
        for stage in reversed(range(len(strides))):
            if total <= target[axis]:
                break
            stride = strides[stage][axis]
            if stride == 1:
                continue
            if total // stride < target[axis]:
                break
            total //= stride
            new[stage][axis] = 1
        if total > target[axis]:
            reductions = [math.prod(s[axis] for s in strides[: i + 1]) for i in range(len(strides))]
            raise ValueError(
                f"{name} cannot reach an output stride of {target[axis]} along axis {axis}: its reductions "
                f"along that axis are {reductions}, and only whole stages can trade their stride for "
                f"dilation. Choose one of {reductions} or change `strides`."
            )
    rates = []
    removed = [1] * spatial_dims
    for old, kept in zip(strides, new, strict=True):
        removed = [r * (o // k) for r, o, k in zip(removed, old, kept, strict=True)]
        rates.append(tuple(removed))
    return tuple(tuple(s) for s in new), tuple(rates)


class _ValidAverage:
    """Mixin for the average pools of dilated stages: average over the voxels inside the input only.

    Pads explicitly and divides by the pooled count of real voxels, because torch's ``avg_pool3d``
    refuses an input smaller than the kernel even where the padding would cover it (2D does not),
    and a dilated stage can meet 2-voxel features. Same result as ``count_include_pad=False``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.ndim - 2
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
        pads: list[int] = []
        for p in reversed(as_tuple(self.padding, n)):
            pads += [p, p]
        ones = x.new_ones((1, 1, *x.shape[2:]))
        total = pool(F.pad(x, pads), self.kernel_size, self.stride, 0, self.ceil_mode, True)
        count = pool(F.pad(ones, pads), self.kernel_size, self.stride, 0, self.ceil_mode, True)
        return total / count


@functools.cache
def _valid_average(cls: type) -> type:
    return type(f"Dilated{cls.__name__}", (_ValidAverage, cls), {"__module__": __name__})


def dilate_module(module: nn.Module, rates: Sequence[int]) -> None:
    """Apply per-axis dilation ``rates`` to every convolution and pooling layer inside ``module``.

    Along each axis with a rate above 1: convolutions get stride 1, that dilation and padding
    ``(kernel // 2) * rate``; max/avg pools with a stride get stride 1, an odd kernel and
    ``kernel // 2`` padding (average pools then count only real voxels). Transposed convolutions
    and adaptive pools are left alone.
    """
    axes = [a for a, r in enumerate(rates) if r > 1]
    if not axes:
        return
    for name, m in module.named_modules():
        if isinstance(m, _ConvNd) and not m.transposed:
            stride, dilation = list(m.stride), list(m.dilation)
            padding = m.padding if isinstance(m.padding, str) else list(m.padding)
            for a in axes:
                k = m.kernel_size[a]
                if k > 1 and k % 2 == 0:
                    raise ValueError(
                        f"Cannot dilate {name or type(m).__name__} ({m}): its kernel {tuple(m.kernel_size)} is even "
                        f"along axis {a}, so no symmetric padding keeps the size."
                    )
                stride[a], dilation[a] = 1, rates[a]
                if not isinstance(padding, str):
                    padding[a] = (k // 2) * rates[a]
            m.stride, m.dilation = tuple(stride), tuple(dilation)
            m.padding = padding if isinstance(padding, str) else tuple(padding)
        elif isinstance(m, (_MaxPoolNd, _AvgPoolNd)):
            n = len(rates)
            kernel, stride = list(as_tuple(m.kernel_size, n)), list(as_tuple(m.stride or m.kernel_size, n))
            padding = list(as_tuple(m.padding, n))
            changed = False
            for a in axes:
                if stride[a] > 1:
                    kernel[a] = kernel[a] if kernel[a] % 2 else kernel[a] + 1
                    stride[a], padding[a] = 1, kernel[a] // 2
                    changed = True
            if changed:
                m.kernel_size, m.stride, m.padding = tuple(kernel), tuple(stride), tuple(padding)
                if isinstance(m, _AvgPoolNd):
                    # The new border padding must not dilute averages; see _ValidAverage for the class swap.
                    m.count_include_pad = False
                    if not isinstance(m, _ValidAverage):
                        m.__class__ = _valid_average(type(m))


def dilate_encoder(encoder: Any, output_stride: int | Sequence[int] | None, owner: str) -> None:
    """Make ``encoder`` (any protocol encoder) reach ``output_stride`` per axis; ``None`` = no change.

    Axes whose reduction is already at most the target are left alone (a shallow encoder needs no
    dilation). Otherwise the encoder must implement ``make_dilated``; the error says so if not.
    """
    if output_stride is None:
        return
    spatial_dims = encoder.spatial_dims
    target = resolve_output_stride(output_stride, spatial_dims, f"{owner}: encoder_output_stride")
    current = tuple(encoder.reductions[-1])
    if all(c <= t for c, t in zip(current, target, strict=True)):
        return
    hint = (
        f"{owner} needs encoder_output_stride={output_stride}, but the encoder {type(encoder).__qualname__} "
        f"(output stride {current}) cannot trade strides for dilation: it does not implement `make_dilated` "
        f"(subclasses of smp3d.encoders.Encoder get it by defining `stage_modules`). Use an encoder that does, "
        f"or encoder_output_stride={tuple(current)}."
    )
    make_dilated = getattr(encoder, "make_dilated", None)
    if make_dilated is None:
        raise ValueError(hint)
    try:
        make_dilated(tuple(min(c, t) for c, t in zip(current, target, strict=True)))
    except NotImplementedError as error:
        raise ValueError(hint) from error
    reached = tuple(encoder.reductions[-1])
    expected = tuple(min(c, t) for c, t in zip(current, target, strict=True))
    if reached != expected:
        raise RuntimeError(
            f"{type(encoder).__qualname__}.make_dilated({expected}) left the output stride at {reached}."
        )
