"""The plain U-Net encoder: the contracting path of U-Net (Ronneberger et al., 2015) and 3D U-Net
(Çiçek et al., 2016), as pytorch-3dunet builds it, for 2D and 3D.

Level ``i`` (1-based) is a double-conv block of ``base_channels * 2**(i - 1)`` channels. Level 1
works at full resolution (its stride is 1 by default); every later level first downsamples by its
stride, with a max pool (``downsampling="max"``, the papers' choice), an average pool (``"avg"``)
or by striding its first convolution (``"conv"``, as nnU-Net does). Feature ``i`` is the output
of level ``i``, so with ``encoder_depth=4`` and ``base_channels=32`` the features are 32 channels
at full resolution, then 64, 128 and 256 channels at 1/2, 1/4 and 1/8: pytorch-3dunet's
``UNet3D(f_maps=32, num_levels=4)`` encoder, and the U-Net paper's with ``base_channels=64``
and ``encoder_depth=5``.

Inside a double-conv block each of the two "single conv" units applies the layers named by
``layer_order`` in that order (pytorch-3dunet's convention): ``c`` convolution (3 per axis,
padding 1), ``r`` ReLU, ``l`` LeakyReLU(0.01), ``e`` ELU, ``b`` batch norm, ``g`` group norm,
``i`` instance norm. A norm placed before the ``c`` normalises the unit's input channels,
after it its output channels. The convolution has a bias only when no norm follows it in the
unit (a norm after it would cancel the bias; pytorch-3dunet drops the bias for any batch or group
norm, even one placed before the convolution). ``num_groups`` is the group
count of group norm; a unit with fewer channels than that uses a single group, and a channel
count not divisible by it is refused. Both convolutions of a block output the block's width.

Strides: one per stage and per axis (``strides=((1, 1, 1), (2, 2, 1), 2, 2)``); a pool uses its
stride as kernel, so any positive stride works for pools; strided convolutions (kernel 3) take
1, 2 or 3. Sizes map to ``ceil(n / stride)``. There are no pretrained weights for this family.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn

from smp3d.encoders import Encoder, EncoderSpec, resolve_strides
from smp3d.layers import avg_pool, batch_norm, check_spatial_dims, conv, instance_norm, max_pool

__all__ = ["DOWNSAMPLING", "ENCODERS", "LAYER_LETTERS", "PlainEncoder", "parse_layer_order", "single_conv"]

#: What each letter of ``layer_order`` stands for.
LAYER_LETTERS = {
    "c": "convolution",
    "r": "ReLU",
    "l": "LeakyReLU(0.01)",
    "e": "ELU",
    "b": "BatchNorm",
    "g": "GroupNorm",
    "i": "InstanceNorm",
}
NORMS = "bgi"
ACTIVATIONS = "rle"
DOWNSAMPLING = ("max", "avg", "conv")


def parse_layer_order(layer_order: object) -> str:
    """Check ``layer_order``: letters from :data:`LAYER_LETTERS`, exactly one ``c``, at most one
    norm and one activation, no repeats. Returns it lower-cased."""
    allowed = ", ".join(f"{k}={v}" for k, v in LAYER_LETTERS.items())
    if not isinstance(layer_order, str) or not layer_order:
        raise ValueError(f"layer_order must be a non-empty string over {allowed}; got {layer_order!r}.")
    order = layer_order.lower()
    unknown = sorted(set(order) - set(LAYER_LETTERS))
    if unknown:
        raise ValueError(f"layer_order {layer_order!r} has unknown letter(s) {unknown}; allowed letters: {allowed}.")
    if order.count("c") != 1:
        raise ValueError(f"layer_order {layer_order!r} must contain exactly one 'c' (the convolution).")
    for kind, letters in (("normalisation", NORMS), ("activation", ACTIVATIONS)):
        used = [ch for ch in order if ch in letters]
        if len(used) > 1:
            raise ValueError(
                f"layer_order {layer_order!r} has {len(used)} {kind} layers ({''.join(used)}); use at most one of "
                f"{', '.join(f'{ch}={LAYER_LETTERS[ch]}' for ch in letters)}."
            )
    return order


def _group_count(channels: int, num_groups: int) -> int:
    groups = 1 if channels < num_groups else num_groups
    if channels % groups:
        raise ValueError(
            f"GroupNorm: {channels} channels are not divisible by num_groups={num_groups}; choose num_groups that "
            f"divides every block width (base_channels * 2**k) or use another norm in layer_order."
        )
    return groups


def single_conv(
    in_channels: int,
    out_channels: int,
    order: str,
    spatial_dims: int,
    num_groups: int = 8,
    stride: Sequence[int] | int = 1,
) -> nn.Sequential:
    """One unit of ``order``'s layers; its modules are named by their letter (``c``, ``g``, ``r``, ...)."""
    layers: dict[str, nn.Module] = {}
    conv_at = order.index("c")
    for position, letter in enumerate(order):
        channels = in_channels if position < conv_at else out_channels
        if letter == "c":
            has_bias = not any(ch in NORMS for ch in order[conv_at + 1 :])
            layers["c"] = conv(spatial_dims)(in_channels, out_channels, 3, stride=stride, padding=1, bias=has_bias)
        elif letter == "r":
            layers["r"] = nn.ReLU(inplace=True)
        elif letter == "l":
            layers["l"] = nn.LeakyReLU(0.01, inplace=True)
        elif letter == "e":
            layers["e"] = nn.ELU(inplace=True)
        elif letter == "b":
            layers["b"] = batch_norm(spatial_dims)(channels)
        elif letter == "g":
            layers["g"] = nn.GroupNorm(_group_count(channels, num_groups), channels)
        elif letter == "i":
            layers["i"] = instance_norm(spatial_dims)(channels, affine=True)
    return nn.Sequential(OrderedDict(layers))


class PlainEncoder(Encoder):
    """Double-conv levels with pooling (or strided convolutions) between them.

    ``levels[i]`` holds ``down`` (the pool, absent at stride 1 and with ``"conv"``) and
    ``block`` (``conv1``, ``conv2``: :func:`single_conv` units).
    """

    _is_torch_scriptable = True

    def __init__(
        self,
        in_channels: int = 3,
        depth: int = 5,
        spatial_dims: int = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
        base_channels: int = 32,
        layer_order: str = "cbr",
        num_groups: int = 8,
        downsampling: str = "max",
        name: str = "plain",
    ):
        spatial_dims = check_spatial_dims(spatial_dims)
        if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 5:
            raise ValueError(f"{name} supports encoder_depth 1..5, got {depth!r}.")
        if isinstance(base_channels, bool) or not isinstance(base_channels, int) or base_channels < 1:
            raise ValueError(f"{name}: base_channels must be a positive int, got {base_channels!r}.")
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"{name}: num_groups must be a positive int, got {num_groups!r}.")
        if downsampling not in DOWNSAMPLING:
            raise ValueError(f"{name}: downsampling must be one of {DOWNSAMPLING}, got {downsampling!r}.")
        order = parse_layer_order(layer_order)
        stage_strides = resolve_strides(
            strides,
            depth,
            spatial_dims,
            default=(1, 2, 2, 2, 2),
            max_stride=3 if downsampling == "conv" else None,
            name=name,
        )
        widths = [base_channels * 2**level for level in range(depth)]
        super().__init__((in_channels, *widths), stage_strides, spatial_dims)
        self.layer_order, self.downsampling = order, downsampling

        self.levels = nn.ModuleList()
        channels = in_channels
        for width, stride in zip(widths, stage_strides, strict=True):
            level = nn.Module()
            strided = any(s > 1 for s in stride)
            conv_stride: Sequence[int] | int = 1
            if strided and downsampling == "conv":
                conv_stride = stride
            elif strided:
                # The kernel is the stride, so no input is skipped at any stride; ceil_mode keeps odd borders.
                pool = max_pool if downsampling == "max" else avg_pool
                level.down = pool(spatial_dims)(tuple(stride), stride=tuple(stride), ceil_mode=True)
            level.block = nn.Sequential()
            level.block.conv1 = single_conv(channels, width, order, spatial_dims, num_groups, conv_stride)
            level.block.conv2 = single_conv(width, width, order, spatial_dims, num_groups)
            self.levels.append(level)
            channels = width

        for m in self.modules():
            if isinstance(m, conv(spatial_dims)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """Level ``stage``: its pool (if any) and its double-conv block."""
        level = self.levels[stage - 1]
        return [level.down, level.block] if hasattr(level, "down") else [level.block]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        for level in self.levels:
            if hasattr(level, "down"):
                x = level.down(x)
            x = level.block(x)
            features.append(x)
        return features


ENCODERS: dict[str, EncoderSpec] = {
    "plain": EncoderSpec(
        build=partial(PlainEncoder, name="plain"),
        out_channels=(3, 32, 64, 128, 256, 512),
        strides=(1, 2, 2, 2, 2),
        family="plain",
        license="MIT",
        description=(
            "plain: the classic U-Net / 3D U-Net contracting path (double convs, base_channels=32 doubling per level, "
            "layer_order, num_groups, downsampling max|avg|conv); no pretrained weights"
        ),
    )
}
