"""Inflating 2D weights into N-D ones: a 2D kernel ``(O, I, kh, kw)`` becomes ``(O, I, kh, kw, kd)``.

Pure functions on state dicts, kept in the core so that encoders can inflate 2D weights at load
time; :mod:`weights_tools` re-exports them for conversion. Two modes:

- ``"i3d"`` (default, Carreira & Zisserman 2017): the 2D kernel repeated ``kd`` times along the
  new trailing axis and divided by ``kd``;
- ``"center"``: the 2D kernel in the centre slice (index ``kd // 2``), zeros in the others.

Either way, a volume that repeats one 2D image along depth gives, at every depth slice, the 2D
network's response to that image (exactly away from the depth borders, everywhere when the depth
axis is padded circularly), which :mod:`weights_tools.verify` checks numerically.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from .adapt import adapt_input_weight

__all__ = ["INFLATION_MODES", "inflate_kernel", "inflate_state_dict"]

INFLATION_MODES = ("i3d", "center")


def _check_mode(mode: str) -> str:
    if mode not in INFLATION_MODES:
        raise ValueError(f"Unknown inflation mode {mode!r}; expected one of {', '.join(INFLATION_MODES)}.")
    return mode


def inflate_kernel(weight: torch.Tensor, size: int, mode: str = "i3d") -> torch.Tensor:
    """Add a trailing axis of length ``size`` to ``weight`` following ``mode`` (see the module docs)."""
    _check_mode(mode)
    if size < 1:
        raise ValueError(f"The inflated axis must have a positive length, got {size}.")
    if mode == "i3d":
        return weight.unsqueeze(-1).expand(*weight.shape, size) / size
    out = weight.new_zeros((*weight.shape, size))
    out[..., size // 2] = weight
    return out


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _differs_only_on_input_axis(source: tuple[int, ...], target: tuple[int, ...]) -> bool:
    return (
        len(source) == len(target)
        and len(source) >= 3
        and source[1] != target[1]
        and source[:1] + source[2:] == target[:1] + target[2:]
    )


def inflate_state_dict(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor] | nn.Module,
    mode: str = "i3d",
    *,
    input_key: str | None = None,
) -> dict[str, torch.Tensor]:
    """Map the 2D state dict ``source`` onto the keys and shapes of ``target`` (a state dict or a module).

    Per key of ``target``, in its order:

    - equal shapes: the tensor is copied;
    - a kernel (at least 3 axes) whose target has one more trailing axis
      (``target.shape[:-1] == source.shape``): inflated following ``mode``;
    - the first convolution may also differ in its input-channel axis (axis 1): it is inflated if
      needed, then adapted with :func:`smp3d.encoders.adapt.adapt_input_weight` (smp's rule: sum
      for 1 channel, cyclic repetition scaled by ``C / new`` otherwise). Only one key is adapted:
      ``input_key`` when given, else the first key of ``target`` whose shapes differ only on axis 1
      (for an encoder, or a model with ``in_channels``, its axis 1 must be the module's input channels).

    Anything else (missing or unexpected keys, any other shape difference) raises a ``ValueError``
    listing every problem with the key and both shapes; nothing is returned partly. The result
    holds new tensors (never views of ``source``) with the target's dtypes, on the source's device.
    """
    _check_mode(mode)
    in_channels: int | None = None
    if isinstance(target, nn.Module):
        channels = getattr(target, "out_channels", None)
        if isinstance(channels, (tuple, list)) and channels and isinstance(channels[0], int):
            in_channels = channels[0]  # an encoder
        elif isinstance(getattr(target, "in_channels", None), int):
            in_channels = target.in_channels  # a segmentation model
        target = target.state_dict()
    if input_key is not None and input_key not in target:
        raise ValueError(f"input_key {input_key!r} is not a key of the target state dict.")

    result: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    mismatched: list[str] = []
    adapted: str | None = None
    for key, t in target.items():
        if key not in source:
            missing.append(f"{key} {_shape(t)}")
            continue
        s = source[key]
        if not isinstance(s, torch.Tensor):
            mismatched.append(f"{key}: target {_shape(t)}, source is a {type(s).__name__}, not a tensor")
            continue
        ts, ss = _shape(t), _shape(s)
        value = s.detach()
        work = value.float() if value.is_floating_point() and value.dtype != torch.float64 else value
        if ts == ss:
            out = work
        elif len(ss) >= 3 and len(ts) == len(ss) + 1 and ts[:-1] == ss:
            out = inflate_kernel(work, ts[-1], mode)
        else:
            inflated = len(ss) >= 3 and len(ts) == len(ss) + 1
            core = ts[:-1] if inflated else ts
            may_adapt = (
                adapted is None
                and (input_key is None or key == input_key)
                and (in_channels is None or input_key is not None or ts[1] == in_channels)
                and _differs_only_on_input_axis(ss, core)
                and value.is_floating_point()
            )
            if not may_adapt:
                mismatched.append(f"{key}: target {ts}, source {ss}")
                continue
            adapted = key
            out = adapt_input_weight(inflate_kernel(work, ts[-1], mode) if inflated else work, ts[1])
        result[key] = out.to(dtype=t.dtype, copy=True).contiguous()
    unexpected = [
        f"{k} {_shape(v) if isinstance(v, torch.Tensor) else type(v).__name__}"
        for k, v in source.items()
        if k not in target
    ]

    if missing or unexpected or mismatched:
        lines = [f"Cannot inflate the source state dict onto the target ({mode!r} mode); nothing was inflated."]
        for title, items in (
            ("Shape mismatches", mismatched),
            ("Missing keys (in the target, not in the source)", missing),
            ("Unexpected keys (in the source, not in the target)", unexpected),
        ):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines.extend(f"  {item}" for item in items)
        if mismatched:
            lines.append(
                "Only kernels gain one trailing axis, and only the first convolution may differ in its input channels."
            )
        raise ValueError("\n".join(lines))
    return result
