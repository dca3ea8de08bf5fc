"""Nearest upsampling by 2 followed by a 3^n convolution, computed on the small map.

A decoder block upsamples ``x`` (nearest, by 2 along some axes), concatenates a skip and applies a
3×3×3 convolution. Along an upsampled axis every output row of that convolution reads only two
distinct input rows of ``x``, with the three kernel taps summed into two: even rows ``2i`` see
``w[0]·x[i-1] + (w[1]+w[2])·x[i]``, odd rows ``2i+1`` see ``(w[0]+w[1])·x[i] + w[2]·x[i+1]``. So the
``x`` part of the convolution is one convolution of the small map with 2-tap kernels, one kernel
per output phase (2 per upsampled axis, 8 in 3D, stacked as output channels), whose results are
interleaved into the output. It reads ``x`` at its own size, never writes the upsampled map nor
the concatenation, and needs 8/27 of the multiply-adds of the ``x`` part in 3D; the skip part is an
ordinary convolution whose output the phases are added into.

The result is the same function (the same parameters, the sums in another order) and autograd
differentiates it as usual; :func:`upsample_conv` checks what it is given and
``tests/test_fast_paths.py`` compares it with interpolate → cat → conv, values and gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .capture import channels_first
from .conv import conv_nd
from .factories import channels_last_format

__all__ = [
    "FUSED_MIN_VOXELS",
    "can_fuse_upsample",
    "interpolate",
    "phase_kernels",
    "set_fused_upsample",
    "upsample_conv",
]

#: Decoder blocks fuse only maps of at least this many voxels: below it the convolutions are bound
#: by reading weights, and the phase kernels (2.4x the weights in 3D) cost more than they save.
FUSED_MIN_VOXELS = 512


def interpolate(x: torch.Tensor, size: list[int], mode: str, align_corners: bool | None = None) -> torch.Tensor:
    """``F.interpolate(x, size, mode)``, with nearest modes kept in ``x``'s dtype under autocast.

    CUDA autocast runs every upsampling in float32, so a bfloat16 map is widened, copied at twice
    the bytes and narrowed again by the next conv. Nearest upsampling only copies values, which is
    exact in any dtype, so it runs with autocast off; (multi)linear modes keep autocast's float32.
    TorchScript compiles the plain call (scripted models run without autocast's dtype policy here).
    """
    if not torch.jit.is_scripting():
        device = x.device.type
        if (
            mode in ("nearest", "nearest-exact")
            and torch.amp.is_autocast_available(device)
            and torch.is_autocast_enabled(device)
        ):
            with torch.autocast(device, enabled=False):
                return F.interpolate(x, size=tuple(size), mode=mode, align_corners=align_corners)
        return F.interpolate(x, size=tuple(size), mode=mode, align_corners=align_corners)
    return F.interpolate(x, size=size, mode=mode, align_corners=align_corners)


def can_fuse_upsample(conv: nn.Module, scale: Sequence[int]) -> bool:
    """Whether ``conv`` after nearest upsampling by ``scale`` can run as :func:`upsample_conv`:
    a plain 3^n convolution (stride 1, dilation 1, zero padding 1, one group) and factors of 1 or 2
    with at least one 2."""
    n = len(scale)
    return (
        isinstance(conv, nn.modules.conv._ConvNd)
        and not conv.transposed
        and conv.kernel_size == (3,) * n
        and conv.padding == (1,) * n
        and conv.stride == (1,) * n
        and conv.dilation == (1,) * n
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and all(s in (1, 2) for s in scale)
        and 2 in scale
    )


def set_fused_upsample(model: nn.Module, enabled: bool) -> int:
    """Turn the fused upsample -> conv path of every decoder block in ``model`` on or off (for
    comparisons, and FLOP counts of the plain computation); returns how many blocks can fuse.

    A block takes part by having ``fusable_upsample`` (whether it can) and ``fuse_upsample`` (whether
    it does); blocks that cannot fuse stay off."""
    count = 0
    for module in model.modules():
        if getattr(module, "fusable_upsample", False):
            module.fuse_upsample = bool(enabled)
            count += 1
    return count


def phase_kernels(weight: torch.Tensor, scale: Sequence[int]) -> torch.Tensor:
    """The kernels of a 3^n convolution applied after nearest upsampling by ``scale`` (1 or 2 per axis).

    ``weight`` is ``(O, I, 3, ..., 3)``; the result is ``(P·O, I, t_1, ..., t_n)`` with ``t = 2`` along
    upsampled axes and 3 elsewhere, ``P = 2^(upsampled axes)`` phases, phase-major in
    ``itertools.product`` order of the per-axis phases: 0 = odd output rows, 1 = even output rows.

    With that order, interleaving the phase outputs ``(odd[j], even[j])`` for ``j = 0..n`` and dropping the
    first and last row gives ``even[0], odd[1], even[1], ..., odd[n]``, the output rows in order, so the
    result is assembled by one reshape and one crop (see :func:`upsample_conv`).
    """
    kernels = weight[None]  # (P, O, I, *taps)
    for axis, s in enumerate(scale):
        if s == 1:
            continue
        w0, w1, w2 = kernels.unbind(3 + axis)
        odd = torch.stack([w0 + w1, w2], 3 + axis)  # rows 2i+1 read x[i], x[i+1]
        even = torch.stack([w0, w1 + w2], 3 + axis)  # rows 2i read x[i-1], x[i]
        kernels = torch.stack([odd, even], 1).flatten(0, 1)
    return kernels.flatten(0, 1)


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    channels_last = channels_last_format(t.dim() - 2)
    if channels_last is not None and not t.is_contiguous() and t.is_contiguous(memory_format=channels_last):
        return channels_last
    return torch.contiguous_format


def upsample_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: Sequence[int],
    skip: torch.Tensor | None = None,
) -> torch.Tensor:
    """``conv(cat([upsample(x, scale, "nearest"), skip]), weight, bias, padding=1)`` without the upsampled map.

    Args:
        x: ``(B, Cx, *size)``.
        weight: ``(O, Cx + Cskip, 3, ..., 3)``, stride 1, dilation 1, zero padding 1.
        scale: per-axis factor, each 1 or 2.
        skip: ``(B, Cskip, *(size * scale))`` concatenated after ``x``, or None.
    """
    spatial = x.dim() - 2
    scale = tuple(scale)
    if len(scale) != spatial or any(s not in (1, 2) for s in scale):
        raise ValueError(f"upsample_conv: scale must be 1 or 2 per spatial axis of x {tuple(x.shape)}, got {scale}.")
    if tuple(weight.shape[2:]) != (3,) * spatial:
        raise ValueError(f"upsample_conv: expected a 3^{spatial} kernel, got weight {tuple(weight.shape)}.")
    size = [n * s for n, s in zip(x.shape[2:], scale, strict=True)]
    channels = x.shape[1] + (skip.shape[1] if skip is not None else 0)
    if weight.shape[1] != channels or (skip is not None and list(skip.shape[2:]) != size):
        raise ValueError(
            f"upsample_conv: weight {tuple(weight.shape)} needs x + skip with {weight.shape[1]} channels and skip of "
            f"spatial size {size}; got x {tuple(x.shape)}, skip {None if skip is None else tuple(skip.shape)}."
        )
    if skip is not None and skip.shape[1] == 0:
        skip = None  # a placeholder level of the encoder: nothing to concatenate
    cx, out_channels = x.shape[1], weight.shape[0]
    ones = (1,) * spatial
    phases = conv_nd(x, phase_kernels(weight[:, :cx], scale), None, ones, ones, ones)
    layout = _memory_format(x)  # the output keeps x's layout, whatever the convolutions returned
    y = _interleave(phases, out_channels, scale, layout)
    if skip is not None:
        return (conv_nd(skip, weight[:, cx:], bias, ones, ones, ones) + y).contiguous(memory_format=layout)
    y = y.contiguous(memory_format=layout)
    return y if bias is None else y + bias.view(-1, *ones)


def _interleave(
    phases: torch.Tensor, out_channels: int, scale: Sequence[int], layout: torch.memory_format
) -> torch.Tensor:
    """The output rows from the phase outputs ``(B, P·O, *m)``: one reshape (copy) and a crop (view).

    Along an upsampled axis ``m = n + 1`` and the phases are (odd, even) (see :func:`phase_kernels`), so
    the ``2n + 2`` interleaved rows lose their first and last; other axes have no phase and ``m = n``.
    The copy writes ``layout`` (contiguous or channels-last).
    """
    batch, spatial = phases.shape[0], phases.dim() - 2
    upsampled = [a for a in range(spatial) if scale[a] == 2]
    z = phases.view(batch, *[2] * len(upsampled), out_channels, *phases.shape[2:])
    first_axis = 2 + len(upsampled)  # where the spatial axes start in z
    rows = []  # per spatial axis: its rows, then its phase if it has one
    for a in range(spatial):
        rows.append(first_axis + a)
        if a in upsampled:
            rows.append(1 + upsampled.index(a))
    sizes = [m * s for m, s in zip(phases.shape[2:], scale, strict=True)]
    channel = 1 + len(upsampled)
    if layout == torch.contiguous_format:
        z = z.permute(0, channel, *rows).reshape(batch, out_channels, *sizes)
    else:
        z = z.permute(0, *rows, channel).reshape(batch, *sizes, out_channels)
        z = channels_first(z)
    crop = tuple(slice(1, -1) if s == 2 else slice(None) for s in scale)
    return z[(slice(None), slice(None), *crop)]
