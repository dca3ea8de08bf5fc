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

nnU-Net's ``PlainConvEncoder`` (its default 3d_fullres and 2d networks) is the option set
``layer_order="cil"`` (conv, InstanceNorm, LeakyReLU), ``downsampling="conv"``, ``conv_bias=True``
(nnU-Net keeps the bias before the norm), ``max_channels=320`` in 3D (512 in 2D) and per-stage
``kernel_sizes``; the name ``plain_nnunet`` builds it with those defaults and allows ``encoder_depth``
up to 8 (nnU-Net's 3d_fullres usually has 6 stages, its 2D plans 7 or 8).

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
from smp3d.layers import avg_pool, batch_norm, check_kernel_sizes, check_spatial_dims, conv, instance_norm, max_pool

__all__ = [
    "DOWNSAMPLING",
    "ENCODERS",
    "LAYER_LETTERS",
    "PlainEncoder",
    "nnunet_plain_encoder",
    "parse_layer_order",
    "single_conv",
]

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
MAX_DEPTH = 8
DEFAULT_STRIDES = (1, 2, 2, 2, 2, 2, 2, 2)


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
    kernel_size: Sequence[int] = (3, 3, 3),
    bias: bool | None = None,
) -> nn.Sequential:
    """One unit of ``order``'s layers; its modules are named by their letter (``c``, ``g``, ``r``, ...).

    ``kernel_size`` has one odd int per axis (padding keeps the size); ``bias=None`` gives the
    convolution a bias only when no norm follows it in the unit.
    """
    layers: dict[str, nn.Module] = {}
    conv_at = order.index("c")
    for position, letter in enumerate(order):
        channels = in_channels if position < conv_at else out_channels
        if letter == "c":
            has_bias = not any(ch in NORMS for ch in order[conv_at + 1 :]) if bias is None else bias
            padding = tuple((k - 1) // 2 for k in kernel_size)
            layers["c"] = conv(spatial_dims)(
                in_channels, out_channels, tuple(kernel_size), stride=stride, padding=padding, bias=has_bias
            )
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

    ``kernel_sizes``: kernel per level (an int or ``depth`` items, each an int or a per-axis tuple of
    odd ints; default 3). ``max_channels`` caps the widths (``None``: no cap). ``conv_bias``: ``None``
    gives a convolution a bias only when no norm follows it, True or False forces it.
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
        kernel_sizes: int | Sequence[int | Sequence[int]] | None = None,
        max_channels: int | None = None,
        conv_bias: bool | None = None,
        name: str = "plain",
    ):
        spatial_dims = check_spatial_dims(spatial_dims)
        if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"{name} supports encoder_depth 1..{MAX_DEPTH}, got {depth!r}.")
        if max_channels is not None and (
            isinstance(max_channels, bool) or not isinstance(max_channels, int) or max_channels < 1
        ):
            raise ValueError(f"{name}: max_channels must be None or a positive int, got {max_channels!r}.")
        if conv_bias not in (None, True, False):
            raise ValueError(f"{name}: conv_bias must be None (automatic), True or False, got {conv_bias!r}.")
        kernels = check_kernel_sizes(kernel_sizes, depth, spatial_dims, name)
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
            default=DEFAULT_STRIDES,
            max_stride=3 if downsampling == "conv" else None,
            name=name,
        )
        widths = [base_channels * 2**level for level in range(depth)]
        if max_channels is not None:
            widths = [min(width, max_channels) for width in widths]
        super().__init__((in_channels, *widths), stage_strides, spatial_dims)
        self.layer_order, self.downsampling, self.kernel_sizes = order, downsampling, kernels

        self.levels = nn.ModuleList()
        channels = in_channels
        for width, stride, kernel in zip(widths, stage_strides, kernels, strict=True):
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
            level.block.conv1 = single_conv(
                channels, width, order, spatial_dims, num_groups, conv_stride, kernel, conv_bias
            )
            level.block.conv2 = single_conv(width, width, order, spatial_dims, num_groups, 1, kernel, conv_bias)
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


def nnunet_plain_encoder(
    in_channels: int = 3,
    depth: int = 5,
    spatial_dims: int = 3,
    strides: Sequence[int | Sequence[int]] | None = None,
    kernel_sizes: int | Sequence[int | Sequence[int]] | None = None,
    base_channels: int = 32,
    max_channels: int | None = None,
    name: str = "plain_nnunet",
) -> PlainEncoder:
    """nnU-Net's ``PlainConvEncoder``: :class:`PlainEncoder` with conv-InstanceNorm-LeakyReLU units, conv
    biases, strided first convolutions and widths ``min(32 * 2**i, 320)`` in 3D (512 in 2D)."""
    if max_channels is None:
        max_channels = 320 if check_spatial_dims(spatial_dims) == 3 else 512
    return PlainEncoder(
        in_channels,
        depth,
        spatial_dims,
        strides,
        base_channels=base_channels,
        layer_order="cil",
        downsampling="conv",
        kernel_sizes=kernel_sizes,
        max_channels=max_channels,
        conv_bias=True,
        name=name,
    )


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
    ),
    "plain_nnunet": EncoderSpec(
        build=nnunet_plain_encoder,
        strides=DEFAULT_STRIDES,
        family="plain",
        max_depth=MAX_DEPTH,
        license="MIT",
        description=(
            "plain_nnunet: nnU-Net's PlainConvEncoder (two conv-InstanceNorm-LeakyReLU units per stage, strided "
            "first conv, conv biases, widths min(32 * 2**i, 320) in 3D / 512 in 2D, per-stage kernel_sizes); "
            "no pretrained weights"
        ),
    ),
}
