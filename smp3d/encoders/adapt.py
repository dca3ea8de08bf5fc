"""Adapting an encoder's first convolution to another number of input channels."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.modules.conv import _ConvNd

__all__ = ["adapt_input_channels", "adapt_input_weight", "first_conv"]


def first_conv(module: nn.Module, in_channels: int) -> _ConvNd:
    """The first (in module order) non-transposed convolution that reads ``in_channels`` channels."""
    for m in module.modules():
        if isinstance(m, _ConvNd) and not m.transposed and m.in_channels == in_channels:
            return m
    raise ValueError(f"{type(module).__name__} has no convolution with {in_channels} input channels to adapt.")


def adapt_input_weight(weight: torch.Tensor, new_in_channels: int) -> torch.Tensor:
    """smp's rule for reusing a first-conv kernel ``(O, C, *k)`` with ``new_in_channels`` inputs.

    - 1 channel: the sum over the original channels (a grey image gives the RGB response);
    - otherwise: the original channels repeated cyclically, scaled by ``C / new_in_channels``,
      which keeps the response to a constant input exactly when ``new_in_channels`` is a
      multiple of ``C`` and approximately otherwise.
    """
    old = weight.shape[1]
    if new_in_channels == 1:
        return weight.sum(1, keepdim=True)
    index = torch.arange(new_in_channels, device=weight.device) % old
    return weight[:, index] * (old / new_in_channels)


@torch.no_grad()
def adapt_input_channels(encoder: nn.Module, new_in_channels: int, pretrained: bool = True) -> None:
    """Change an encoder's input channels in place, keeping pretrained knowledge when ``pretrained``.

    The first convolution reading ``encoder.out_channels[0]`` channels gets a new kernel (the
    rule of :func:`adapt_input_weight`, or a fresh initialization when not ``pretrained``) and
    ``encoder.out_channels[0]`` becomes ``new_in_channels``. An encoder whose input feeds more
    than one convolution defines ``set_in_channels(in_channels, pretrained)`` with the same
    meaning, and it is called instead.
    """
    old_in_channels = encoder.out_channels[0]
    if new_in_channels == old_in_channels:
        return
    if callable(getattr(encoder, "set_in_channels", None)):  # e.g. a stem whose input feeds parallel branches
        encoder.set_in_channels(new_in_channels, pretrained=pretrained)
        return
    conv = first_conv(encoder, old_in_channels)
    if conv.groups != 1:
        raise ValueError(f"Cannot adapt a grouped first convolution (groups={conv.groups}) to new input channels.")
    if pretrained:
        weight = adapt_input_weight(conv.weight.detach(), new_in_channels)
        conv.in_channels = new_in_channels
        conv.weight = nn.Parameter(weight.contiguous())
    else:
        conv.in_channels = new_in_channels
        conv.weight = nn.Parameter(conv.weight.new_empty((conv.out_channels, new_in_channels, *conv.kernel_size)))
        conv.reset_parameters()
    encoder.out_channels = (new_in_channels, *tuple(encoder.out_channels)[1:])
