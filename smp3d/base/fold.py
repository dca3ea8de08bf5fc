"""Inference-time BatchNorm folding: ``conv -> BN`` becomes one convolution.

In eval mode a BatchNorm is a per-channel affine map, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``;
after a convolution it can be folded into that convolution's weights and bias, which removes one
full read and write of every normalized feature map from inference.

The pairs are found from what the model does, not from its class: one traced forward records
which module produced which autograd node, and a BatchNorm folds into a convolution when its
input is that convolution's output and nothing else reads that output (the convolution's node has
exactly one consumer in the graph). Each module must also run exactly once per forward.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

__all__ = ["fold_batchnorm", "foldable_pairs"]


def _consumers(root) -> Counter:  # noqa: ANN001 - an autograd node
    """How many times each autograd node is an input of another node, over the graph below ``root``."""
    counts: Counter = Counter()
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                counts[child] += 1
                stack.append(child)
    return counts


def foldable_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """``(conv name, batchnorm name)`` pairs of ``model`` that :func:`fold_batchnorm` would fold,
    found by one forward of ``example`` (see the module docstring)."""
    produced: dict[str, object] = {}  # conv name -> the autograd node of its output
    consumed: dict[str, object] = {}  # batchnorm name -> the autograd node of its input
    calls: Counter = Counter()

    def record(name: str, table: dict, node) -> None:  # noqa: ANN001
        calls[name] += 1
        table[name] = node

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _ConvNd) and not module.transposed:
            hook = lambda m, i, o, n=name: record(n, produced, o.grad_fn)  # noqa: E731
        elif isinstance(module, _BatchNorm):
            hook = lambda m, i, o, n=name: record(n, consumed, i[0].grad_fn)  # noqa: E731
        else:
            continue
        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():
            out = model(example.detach().requires_grad_(True))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    first = out[0] if isinstance(out, (tuple, list)) else out
    consumers = _consumers(first.grad_fn)
    by_node = {node: name for name, node in produced.items() if calls[name] == 1 and node is not None}
    pairs = []
    for bn, node in consumed.items():
        conv = by_node.get(node)
        if conv is not None and calls[bn] == 1 and consumers[node] == 1:
            pairs.append((conv, bn))
    return pairs


@torch.no_grad()
def _fold(conv: _ConvNd, bn: _BatchNorm) -> None:
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    conv.weight.mul_(scale.reshape(-1, *(1,) * (conv.weight.dim() - 1)).to(conv.weight))
    if conv.bias is None:
        conv.bias = nn.Parameter(shift.to(conv.weight).clone())
    else:
        conv.bias.copy_(conv.bias * scale + shift)


def fold_batchnorm(model: nn.Module, example: torch.Tensor, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (``inplace=True``: the model itself) in eval mode, with every foldable
    ``conv -> BatchNorm`` pair folded into the convolution and the BatchNorm replaced by an identity.

    ``example`` is one input of the shapes the model will see (used once, to find the pairs). The
    result computes the same function as ``model.eval()`` up to rounding, for inference and export;
    its state dict no longer has the folded BatchNorms, so save the original for training.
    """
    pairs = foldable_pairs(model, example)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for conv_name, bn_name in pairs:
        _fold(model.get_submodule(conv_name), model.get_submodule(bn_name))
        parent_name, _, child = bn_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
    return model
