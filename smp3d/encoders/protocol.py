"""The encoder protocol: what every decoder may rely on, and helpers to satisfy it.

An encoder is an ``nn.Module`` with

- ``forward(x) -> list[Tensor]`` of length ``depth + 1``; item 0 is ``x`` itself;
- ``out_channels: tuple[int, ...]`` (length ``depth + 1``; item 0 is ``in_channels``);
- ``reductions: tuple[tuple[int, ...], ...]`` (length ``depth + 1``): the cumulative
  per-axis reduction of each feature, item 0 all ones;
- ``spatial_dims: int``.

Optional metadata a decoder may read (absent means ``False``):

- ``last_feature_pooled: bool``: the deepest feature comes straight out of a pooling layer with
  no convolution after it (VGG); U-Net then adds a center block of two convolutions on it.
  VGG keeps it ``True`` at every depth, as smp's Unet adds the block for VGG at every depth.
- ``make_dilated(output_stride) -> None``: the dilation hook. Replace the deepest strides by
  dilation so that ``reductions[-1]`` becomes ``output_stride`` (an int or a per-axis tuple; axes
  already at or below it stay as they are) and update ``reductions``. DeepLabV3/V3+ and PAN call
  it through :func:`smp3d.encoders.dilation.dilate_encoder`; an encoder without it works with
  every architecture except at an ``encoder_output_stride`` below its own. Subclasses of
  :class:`Encoder` get it by implementing :meth:`Encoder.stage_modules`.
- ``single_scale: bool``: every feature from 1 on is at one reduction (a plain ViT: one patch
  embedding, then blocks on one token grid; ``reductions`` say so honestly). Pyramid decoders refuse
  such an encoder (:func:`smp3d.base.assembly.build_encoder`); DPT and UNETR build their own pyramid.
- ``num_prefix_tokens: int`` and ``forward_tokens(x) -> (features, prefix_tokens)``: the features of
  ``forward`` and, per feature from 1 on, the ``(B, num_prefix_tokens, C)`` prefix (class, register)
  tokens of that block; DPT's readout uses them. See docs/transformers.md.

Feature ``i`` of an input of spatial size ``n`` has size ``n / reductions[i]`` per axis when
``n`` is divisible by the reduction; otherwise the rounding is the family's own (ceil for
strided convolutions, floor for some pools) and each encoder documents it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn

from ..layers.factories import check_spatial_dims
from .dilation import dilate_module, dilation_schedule

__all__ = [
    "MAX_TOTAL_REDUCTION",
    "Encoder",
    "EncoderProtocol",
    "StridesArg",
    "check_depth",
    "cumulative_reductions",
    "resolve_strides",
    "validate_encoder",
]

Stride = int | Sequence[int]
StridesArg = Sequence[Stride] | None

#: The largest total reduction (product of the strides) along one axis that ``resolve_strides``
#: accepts: 4096 voxels per axis is beyond any volume or image a model sees, so a larger product is
#: a typo (``10**6`` for ``(1, 1, 6)``...) that would otherwise build and fail only in ``forward``.
MAX_TOTAL_REDUCTION = 2**12


@runtime_checkable
class EncoderProtocol(Protocol):
    out_channels: tuple[int, ...]
    reductions: tuple[tuple[int, ...], ...]
    spatial_dims: int

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]: ...


def check_depth(depth: Any, max_depth: int = 5, name: str = "encoder") -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= max_depth:
        raise ValueError(f"encoder_depth of {name!r} must be an int in 1..{max_depth}, got {depth!r}.")
    return depth


def resolve_strides(
    strides: StridesArg,
    depth: int,
    spatial_dims: int,
    default: Sequence[int] = (2, 2, 2, 2, 2),
    max_stride: int | None = None,
    name: str | None = None,
) -> tuple[tuple[int, ...], ...]:
    """Per-stage, per-axis strides: ``depth`` tuples of ``spatial_dims`` positive ints.

    ``strides`` is ``None`` (use ``default[:depth]`` on every axis) or a sequence of ``depth``
    items, each an int (all axes) or a tuple with one int per axis. ``max_stride`` is the
    largest stride an encoder family's blocks support along one axis (``None``: no limit);
    ``name`` (the encoder's) makes error messages more specific. The product of the strides along
    an axis may not exceed :data:`MAX_TOTAL_REDUCTION`.
    """
    owner = f"encoder {name!r}" if name else "this encoder"
    spatial_dims = check_spatial_dims(spatial_dims)
    if strides is None:
        if depth > len(default):
            raise ValueError(f"No default strides for depth {depth}; pass `strides` explicitly.")
        return tuple((int(s),) * spatial_dims for s in default[:depth])
    example = ", ".join(["(2, 2, 1)" if spatial_dims == 3 else "(2, 1)"] + ["2"] * (depth - 1))
    hint = f"Expected {depth} items (one per stage), each an int or a tuple of {spatial_dims} ints, e.g. ({example})."
    if isinstance(strides, (str, bytes, int)) or not isinstance(strides, Sequence):
        raise ValueError(f"`strides` must be a sequence of per-stage strides, got {strides!r}. {hint}")
    if len(strides) != depth:
        raise ValueError(f"`strides` has {len(strides)} items but encoder_depth is {depth}. {hint}")
    resolved = []
    for stage, given in enumerate(strides, start=1):
        item = (given,) * spatial_dims if isinstance(given, int) and not isinstance(given, bool) else given
        if (
            not isinstance(item, Sequence)
            or len(item) != spatial_dims
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in item)
        ):
            raise ValueError(
                f"`strides` item {stage} is {given!r}: each stride must be a positive int or a tuple of "
                f"{spatial_dims} positive ints (one per axis, spatial_dims={spatial_dims}). {hint}"
            )
        if max_stride is not None and max(item) > max_stride:
            raise ValueError(
                f"`strides` item {stage} is {given!r}, but {owner} supports strides of at most {max_stride} per axis."
            )
        resolved.append(tuple(int(s) for s in item))
        for axis in range(spatial_dims):
            total = math.prod(r[axis] for r in resolved)
            if total > MAX_TOTAL_REDUCTION:
                raise ValueError(
                    f"`strides` item {stage} is {given!r}: it takes the total reduction along spatial axis {axis} "
                    f"to {total} (the product of the strides of stages 1..{stage}), above the limit of "
                    f"{MAX_TOTAL_REDUCTION} per axis; an input would need at least {total} voxels along that "
                    f"axis. Each item multiplies the reduction of one stage: use small strides such as 1 or 2."
                )
    return tuple(resolved)


def cumulative_reductions(strides: Sequence[Sequence[int]], spatial_dims: int) -> tuple[tuple[int, ...], ...]:
    """``reductions`` from per-stage strides: item 0 is all ones, item i the product of strides[:i]."""
    out = [(1,) * spatial_dims]
    for stride in strides:
        out.append(tuple(a * b for a, b in zip(out[-1], stride, strict=True)))
    return tuple(out)


class Encoder(nn.Module):
    """Optional base class that stores the protocol's metadata.

    Subclasses call ``super().__init__(out_channels, strides, spatial_dims)`` with the
    channels of every feature (item 0 = in_channels) and the per-stage strides from
    :func:`resolve_strides`; ``reductions`` and ``depth`` are derived.
    """

    #: The deepest feature is a pooling output with no convolution after it (see module docs).
    last_feature_pooled = False
    #: Whether ``torch.jit.script`` can compile this encoder, and why not (see :mod:`smp3d.base.scripting`).
    _is_torch_scriptable = False
    _torch_script_refusal = "its forward is not written for TorchScript"
    # Python-side metadata: TorchScript compiles forward only.
    __jit_unused_properties__ = ["depth", "in_channels", "output_stride"]

    def __init__(
        self,
        out_channels: Sequence[int],
        strides: Sequence[Sequence[int]],
        spatial_dims: int,
    ):
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.strides = tuple(tuple(s) for s in strides)
        self.reductions = cumulative_reductions(self.strides, self.spatial_dims)
        self.out_channels = tuple(int(c) for c in out_channels)
        if len(self.out_channels) != len(self.reductions):
            raise ValueError(
                f"{type(self).__name__}: {len(self.out_channels)} out_channels for "
                f"{len(self.reductions)} features (depth {len(self.strides)} + input)."
            )

    @property
    def depth(self) -> int:
        return len(self.strides)

    @property
    def in_channels(self) -> int:
        return self.out_channels[0]

    @property
    def output_stride(self) -> tuple[int, ...]:
        """Total per-axis reduction of the deepest feature."""
        return self.reductions[-1]

    def stage_modules(self, stage: int) -> Sequence[nn.Module]:
        """The modules that make up stage ``stage`` (1-based; stage ``i`` carries ``strides[i - 1]``).

        Every convolution and pooling layer between feature ``stage - 1`` and feature ``stage``
        must be inside exactly one of them, and nothing of another stage. Implementing this gives
        the encoder :meth:`make_dilated`.
        """
        raise NotImplementedError(
            f"{type(self).__qualname__} does not define stage_modules(), so it cannot be dilated."
        )

    def make_dilated(self, output_stride: int | Sequence[int]) -> None:
        """Trade the deepest strides for dilation until ``reductions[-1] == output_stride`` (per axis).

        See :mod:`smp3d.encoders.dilation` for the rule (smp's, generalized per axis). Weights
        are untouched, so it may be called before or after loading them.
        """
        owner = type(self).__qualname__
        strides, rates = dilation_schedule(self.strides, output_stride, name=owner)
        previous = getattr(self, "dilations", ((1,) * self.spatial_dims,) * self.depth)
        totals = tuple(tuple(r * b for r, b in zip(*pair, strict=True)) for pair in zip(rates, previous, strict=True))
        for stage, (total, before) in enumerate(zip(totals, previous, strict=True), start=1):
            if total != before:
                for module in self.stage_modules(stage):
                    dilate_module(module, total)
        self.dilations = totals
        self.strides = strides
        self.reductions = cumulative_reductions(strides, self.spatial_dims)


def validate_encoder(encoder: Any, depth: int, in_channels: int, spatial_dims: int, name: str) -> None:
    """Check an encoder's metadata against the protocol; raise a TypeError naming the problem.

    Meant for encoders coming from plugins: catches a wrong or missing attribute at
    construction instead of a shape error deep in a decoder.
    """
    where = f"Encoder {name!r} ({type(encoder).__module__}.{type(encoder).__qualname__})"
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"{where} is not an nn.Module.")
    for attr in ("out_channels", "reductions", "spatial_dims"):
        if not hasattr(encoder, attr):
            raise TypeError(f"{where} lacks the attribute {attr!r} required by the encoder protocol.")
    if encoder.spatial_dims != spatial_dims:
        raise TypeError(f"{where} has spatial_dims={encoder.spatial_dims}, but {spatial_dims} was requested.")
    channels, reductions = tuple(encoder.out_channels), tuple(encoder.reductions)
    if len(channels) != depth + 1 or len(reductions) != depth + 1:
        raise TypeError(
            f"{where} was built with depth {depth} and must describe {depth + 1} features, but has "
            f"{len(channels)} out_channels and {len(reductions)} reductions."
        )
    if channels[0] != in_channels:
        raise TypeError(f"{where}: out_channels[0] is {channels[0]}, expected in_channels={in_channels}.")
    for i, r in enumerate(reductions):
        if len(r) != spatial_dims or any(not isinstance(v, int) or v < 1 for v in r):
            raise TypeError(f"{where}: reductions[{i}] = {r!r} is not {spatial_dims} positive ints.")
        if i and any(b % a for a, b in zip(reductions[i - 1], r, strict=True)):
            raise TypeError(
                f"{where}: reductions[{i}] = {r} is not a per-axis multiple of reductions[{i - 1}] = "
                f"{reductions[i - 1]}."
            )
    if reductions[0] != (1,) * spatial_dims:
        raise TypeError(f"{where}: reductions[0] must be all ones, got {reductions[0]}.")
