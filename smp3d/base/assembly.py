"""What every architecture's constructor does the same way: build the encoder (dilated if asked),
validate the depth it needs, resolve the final upsampling, honour smp's deprecated arguments."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from ..encoders import get_encoder
from ..encoders.dilation import dilate_encoder
from ..encoders.protocol import StridesArg

__all__ = [
    "build_encoder",
    "check_channels",
    "check_decoder_channels",
    "check_encoder_depth",
    "final_upsampling",
    "pop_deprecated_norm",
    "refuse_deep_supervision",
]

#: smp's per-block decoder channels (Unet, Unet++, MAnet), deepest first; the examples in errors.
DEFAULT_BLOCK_CHANNELS = (256, 128, 64, 32, 16)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_channels(value: Any, name: str, arch: str) -> int:
    """Raise a ValueError unless ``value`` (the constructor argument ``name`` of ``arch``, a channel
    count such as ``decoder_channels=256``) is a positive int; return it."""
    if not _is_positive_int(value):
        hint = " (one channel count for the whole decoder, not one per block)" if isinstance(value, Sequence) else ""
        raise ValueError(f"{arch}: {name} must be a positive int, got {value!r}{hint}.")
    return value


def check_decoder_channels(value: Any, blocks: int, arch: str, name: str = "decoder_channels") -> tuple[int, ...]:
    """Raise a ValueError unless ``value`` is a sequence of ``blocks`` positive ints (one channel count per
    decoder block, deepest first, as ``decoder_channels=(256, 128, 64, 32, 16)``); return it as a tuple."""
    example = DEFAULT_BLOCK_CHANNELS[-blocks:] if blocks <= len(DEFAULT_BLOCK_CHANNELS) else None
    suggestion = f", e.g. {name}={example}." if example else "."
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(
            f"{arch}: {name} must be a sequence of {blocks} positive ints (one per decoder block, deepest "
            f"first), got {value!r}{suggestion}"
        )
    bad = [item for item in value if not _is_positive_int(item)]
    if bad:
        raise ValueError(
            f"{arch}: {name} must hold positive ints (channels of each decoder block), got {tuple(value)!r} "
            f"with {', '.join(map(repr, bad))}{suggestion}"
        )
    if len(value) != blocks:
        raise ValueError(
            f"{arch}: {name} has {len(value)} items but the encoder has {blocks} stages (encoder_depth={blocks}); "
            f"give one channel count per decoder block{suggestion}"
        )
    return tuple(value)


def check_encoder_depth(depth: Any, allowed: Sequence[int], arch: str, why: str = "") -> int:
    """Raise a ValueError unless ``depth`` is one of ``allowed`` (at construction, with the reason)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth not in allowed:
        lo, hi = min(allowed), max(allowed)
        choices = f"{lo}..{hi}" if list(allowed) == list(range(lo, hi + 1)) else tuple(allowed)
        raise ValueError(f"{arch} supports encoder_depth in {choices}, got {depth!r}." + (f" {why}" if why else ""))
    return depth


def build_encoder(
    arch: str,
    encoder_name: str,
    *,
    in_channels: int,
    depth: int,
    weights: str | None,
    spatial_dims: int,
    strides: StridesArg,
    output_stride: int | Sequence[int] | None = None,
    single_scale_ok: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """The encoder of an ``arch`` model; with ``output_stride`` its deepest strides become dilation
    (per axis, only where its reduction exceeds the target; see :mod:`smp3d.encoders.dilation`).

    ``deep_supervision`` reaches here only from architectures that do not take it (their decoder has
    a single resolution level): ``False`` is accepted, ``True`` refused with the reason.

    Single-scale encoders (``encoder.single_scale`` true: every feature at one reduction, as a plain
    ViT's blocks) are refused with a ValueError unless the architecture builds its own pyramid from
    them and says so with ``single_scale_ok=True`` (DPT, UNETR)."""
    refuse_deep_supervision(arch, kwargs)
    encoder = get_encoder(
        encoder_name,
        in_channels=in_channels,
        depth=depth,
        weights=weights,
        spatial_dims=spatial_dims,
        strides=strides,
        **kwargs,
    )
    if getattr(encoder, "single_scale", False) and not single_scale_ok:
        raise ValueError(
            f"{arch} needs an encoder with a feature pyramid, but {encoder_name!r} is single-scale: every feature "
            f"is at the reduction {tuple(encoder.reductions[-1])} (a plain ViT: one patch embedding, then blocks "
            f"at one resolution). Use an architecture that builds the pyramid itself: smp3d.DPT or smp3d.UNETR; or "
            f"a hierarchical encoder (a CNN, MiT, Swin) with {arch}."
        )
    dilate_encoder(encoder, output_stride, owner=f"{arch}({encoder_name!r})")
    return encoder


def refuse_deep_supervision(arch: str, kwargs: dict[str, Any]) -> None:
    """Drop ``deep_supervision=False`` / ``deep_supervision_levels`` from ``kwargs``; raise on ``True``."""
    enabled = kwargs.pop("deep_supervision", False)
    kwargs.pop("deep_supervision_levels", None)
    if enabled is False:
        return
    from ..models import ARCHITECTURES  # the architectures import this module

    supported = sorted(
        {cls.__name__ for cls in ARCHITECTURES.values() if "deep_supervision" in inspect.signature(cls).parameters}
    )
    raise ValueError(
        f"{arch} does not support deep_supervision={enabled!r}: its decoder has no chain of maps at several "
        f"resolutions to put heads on (see 'Deep supervision' in docs/deep_supervision.md). Architectures with "
        f"deep supervision: {', '.join(supported)}."
    )


def final_upsampling(upsampling: int | Sequence[int] | None, reduction: Sequence[int], arch: str) -> tuple[int, ...]:
    """Per-axis scale factor of the segmentation head.

    ``None`` means "back to the input size": the per-axis ``reduction`` of the decoder's output
    (read from the encoder, so anisotropic strides and dilation are accounted for). An int or a
    per-axis tuple is used as given, as in smp.
    """
    spatial_dims = len(reduction)
    if upsampling is None:
        return tuple(int(r) for r in reduction)
    is_int = isinstance(upsampling, int) and not isinstance(upsampling, bool)
    factor = (upsampling,) * spatial_dims if is_int else upsampling
    if (
        not isinstance(factor, Sequence)
        or len(factor) != spatial_dims
        or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in factor)
    ):
        raise ValueError(
            f"{arch}: upsampling must be None (back to the input size, here {tuple(reduction)}), a positive int "
            f"or a tuple of {spatial_dims} positive ints, got {upsampling!r}."
        )
    return tuple(factor)


def pop_deprecated_norm(kwargs: dict[str, Any], use_norm: Any, old_name: str = "decoder_use_batchnorm") -> Any:
    """smp's deprecated ``decoder_use_batchnorm``/``psp_use_batchnorm``: warn and use it as ``use_norm``.

    As in smp, an explicit ``None`` counts as not given.
    """
    value = kwargs.pop(old_name, None)
    if value is None:
        return use_norm
    warnings.warn(f"{old_name} is deprecated; use decoder_use_norm.", DeprecationWarning, stacklevel=3)
    return value
