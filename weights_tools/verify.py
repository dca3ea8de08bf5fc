"""The numerical proof that an inflated encoder is its 2D encoder, slice by slice.

Feed the 3D encoder a volume that repeats one 2D image along depth (the last axis). With the
depth axis padded circularly, every convolution and pooling sees, at every depth position, the
same 2D slice in each of its ``kd`` depth taps; an I3D kernel (``W / kd`` in each tap) or a
centre kernel (``W`` in one tap) then sums to exactly the 2D response. Hence every 3D feature,
at every depth slice, equals the 2D encoder's feature of that image, up to rounding.

Zero padding along depth breaks the equality near the depth borders only; along H and W the
padding stays the network's own (zeros, or EfficientNet's dynamic TF-'SAME' zeros), as in 2D.
:func:`circular_depth_padding` makes the depth padding circular for the duration of a ``with``
block, without touching the modules' own ``padding`` (which EfficientNet's ``same_pad`` reads):
each conv/pool gets its input wrapped around along depth by its depth padding, and the slices of
its output that would have seen its own zero padding are cropped. This needs stride 1 along depth
(build the 3D encoder with per-axis strides such as ``((2, 2, 1),) * depth``); a depth stride
above 1 raises.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.conv import _ConvNd

from smp3d.encoders.adapt import adapt_input_channels
from smp3d.encoders.inflate import inflate_state_dict

__all__ = [
    "InflationReport",
    "circular_depth_padding",
    "depth_stride_one",
    "inflation_error",
    "inflation_report",
]

_POOLS: dict[type[nn.Module], int] = {
    nn.MaxPool1d: 1,
    nn.MaxPool2d: 2,
    nn.MaxPool3d: 3,
    nn.AvgPool1d: 1,
    nn.AvgPool2d: 2,
    nn.AvgPool3d: 3,
}


def depth_stride_one(depth: int, stride: int = 2, spatial_dims: int = 3) -> tuple[tuple[int, ...], ...]:
    """Per-stage strides that reduce every axis but depth (the last), e.g. ``((2, 2, 1),) * 5``."""
    return ((stride,) * (spatial_dims - 1) + (1,),) * depth


def _last(value: Any, dims: int) -> int:
    """The last-axis entry of an int-or-tuple layer argument."""
    if isinstance(value, int):
        return value
    value = tuple(value)
    if len(value) != dims:
        raise ValueError(f"Expected {dims} per-axis values, got {value!r}.")
    return int(value[-1])


def _depth_padding(module: nn.Module, spatial_dims: int) -> tuple[int, int] | None:
    """``(left, right)`` depth padding of a conv/pool of ``spatial_dims`` axes; ``None`` for other modules."""
    if isinstance(module, _ConvNd) and not module.transposed and len(module.kernel_size) == spatial_dims:
        stride, padding = module.stride[-1], module.padding
        if isinstance(padding, str):
            total = 0 if padding == "valid" else module.dilation[-1] * (module.kernel_size[-1] - 1)
            left, right = total // 2, total - total // 2
        else:
            left = right = int(padding[-1])
        if module.padding_mode != "zeros" and left + right:
            return None  # the module already pads by itself without zeros
    elif _POOLS.get(type(module)) == spatial_dims:
        stride = _last(module.stride if module.stride is not None else module.kernel_size, spatial_dims)
        left = right = _last(module.padding, spatial_dims)
        if getattr(module, "return_indices", False) and left:
            raise ValueError(f"Cannot pad {type(module).__name__} with return_indices=True circularly along depth.")
    else:
        return None
    if left + right == 0:
        return None
    if stride != 1:
        raise ValueError(
            f"{type(module).__name__} has stride {stride} along depth: the circular-padding check needs stride 1 "
            f"along depth; build the 3D encoder with strides such as {depth_stride_one(5, spatial_dims=spatial_dims)}."
        )
    return left, right


@contextmanager
def circular_depth_padding(module: nn.Module, spatial_dims: int = 3) -> Iterator[nn.Module]:
    """Within the block, every conv/pool of ``module`` with ``spatial_dims`` axes pads depth circularly.

    H and W (all axes but the last) keep their padding. Hooks are removed on exit, also on errors;
    no attribute of any module is changed.
    """
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def hooks(left: int, right: int) -> tuple[Any, Any]:
        def wrap(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            n = x.shape[-1]
            index = torch.arange(-left, n + right, device=x.device) % n
            return (x.index_select(-1, index), *args[1:])

        def crop(_: nn.Module, __: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            return out[..., left : out.shape[-1] - right]

        return wrap, crop

    try:
        for m in module.modules():
            pads = _depth_padding(m, spatial_dims)
            if pads is not None:
                wrap, crop = hooks(*pads)
                handles.append(m.register_forward_pre_hook(wrap))
                handles.append(m.register_forward_hook(crop))
        yield module
    finally:
        for handle in handles:
            handle.remove()


@dataclasses.dataclass(frozen=True)
class InflationReport:
    """Differences between 3D features (every depth slice) and 2D features, per feature and overall.

    ``max_abs`` is the largest absolute difference; ``max_rel`` the largest over features of that
    feature's largest absolute difference divided by the largest magnitude of its 2D values.
    """

    max_abs: float
    max_rel: float
    per_feature: tuple[tuple[float, float], ...]  # (abs, rel) per feature, item 0 the input

    def __str__(self) -> str:
        return f"max abs {self.max_abs:.3g}, max rel {self.max_rel:.3g} over {len(self.per_feature)} features"


def _in_channels(encoder: nn.Module) -> int | None:
    channels = getattr(encoder, "out_channels", None)
    return int(channels[0]) if isinstance(channels, (tuple, list)) and channels else None


@torch.no_grad()
def inflation_report(
    encoder_2d: nn.Module,
    encoder_3d: nn.Module,
    image: torch.Tensor | None = None,
    depth: int = 8,
    mode: str | None = None,
    *,
    size: int = 64,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> InflationReport:
    """Run the check of the module docs and return the differences.

    Args:
        encoder_2d: the 2D encoder (reference).
        encoder_3d: a 3D encoder of the same architecture with stride 1 along depth.
        image: ``(B, C, H, W)``; default a seeded standard-normal ``(1, C, size, size)`` image.
        depth: number of depth slices of the volume.
        mode: ``None`` checks ``encoder_3d`` with its own weights (e.g. reloaded after conversion);
            ``"i3d"`` or ``"center"`` checks a copy of it holding ``encoder_2d``'s weights inflated so.
            When the input channels differ, the 2D reference is a copy adapted by smp's rule.
        dtype: run both on copies in this dtype (e.g. ``torch.float64``); default their own.

    Neither encoder is changed: both run in eval mode (restored after) without gradients.
    """
    reference, inflated = encoder_2d, encoder_3d
    spatial_dims = getattr(encoder_3d, "spatial_dims", None)
    if spatial_dims is None:
        spatial_dims = getattr(encoder_2d, "spatial_dims", 2) + 1
    if getattr(encoder_2d, "spatial_dims", spatial_dims - 1) != spatial_dims - 1:
        raise ValueError(
            f"encoder_3d must have one spatial axis more than encoder_2d, got spatial_dims "
            f"{getattr(encoder_2d, 'spatial_dims', None)} and {spatial_dims}."
        )
    reductions = getattr(encoder_3d, "reductions", None)
    if reductions is not None and any(r[-1] != 1 for r in reductions):
        raise ValueError(
            f"encoder_3d reduces depth (reductions {tuple(reductions)}); build it with stride 1 along depth, "
            f"e.g. strides={depth_stride_one(len(reductions) - 1, spatial_dims=spatial_dims)}."
        )
    c2, c3 = _in_channels(encoder_2d), _in_channels(encoder_3d)
    if dtype is not None:  # before inflating, so that the inflated weights are rounded in ``dtype``
        reference, inflated = copy.deepcopy(encoder_2d).to(dtype), copy.deepcopy(encoder_3d).to(dtype)
    if mode is not None:
        if inflated is encoder_3d:
            inflated = copy.deepcopy(encoder_3d)
        inflated.load_state_dict(inflate_state_dict(reference.state_dict(), inflated, mode))
    if c2 is not None and c3 is not None and c2 != c3:
        if reference is encoder_2d:
            reference = copy.deepcopy(encoder_2d)
        adapt_input_channels(reference, c3, pretrained=True)

    param = next(iter(inflated.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    run_dtype = param.dtype if param is not None else torch.float32
    if image is None:
        channels = c3 if c3 is not None else 3
        generator = torch.Generator().manual_seed(seed)
        image = torch.randn((1, channels) + (size,) * (spatial_dims - 1), generator=generator)
    image = image.to(device=device, dtype=run_dtype)
    volume = image.unsqueeze(-1).expand(*image.shape, depth).contiguous()

    modes = (reference.training, inflated.training)
    reference.eval()
    inflated.eval()
    try:
        features_2d = reference(image)
        with circular_depth_padding(inflated, spatial_dims):
            features_3d = inflated(volume)
    finally:
        reference.train(modes[0])
        inflated.train(modes[1])

    if len(features_2d) != len(features_3d):
        raise ValueError(f"The encoders return {len(features_2d)} and {len(features_3d)} features.")
    per_feature = []
    for i, (f2, f3) in enumerate(zip(features_2d, features_3d, strict=True)):
        if tuple(f3.shape) != (*f2.shape, depth):
            raise ValueError(f"Feature {i}: 3D shape {tuple(f3.shape)} is not 2D shape {tuple(f2.shape)} x {depth}.")
        f2, f3 = f2.double(), f3.double()
        diff = (f3 - f2.unsqueeze(-1)).abs().max().item() if f2.numel() else 0.0
        scale = f2.abs().max().item() if f2.numel() else 0.0
        per_feature.append((diff, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))))
    return InflationReport(
        max_abs=max(a for a, _ in per_feature),
        max_rel=max(r for _, r in per_feature),
        per_feature=tuple(per_feature),
    )


def inflation_error(
    encoder_2d: nn.Module,
    encoder_3d: nn.Module,
    image: torch.Tensor | None = None,
    depth: int = 8,
    mode: str | None = None,
    **kwargs: Any,
) -> float:
    """The largest absolute difference of :func:`inflation_report` (same arguments)."""
    return inflation_report(encoder_2d, encoder_3d, image, depth, mode, **kwargs).max_abs
