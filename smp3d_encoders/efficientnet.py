"""EfficientNet encoders (Tan & Le, 2019), ``efficientnet-b0`` .. ``efficientnet-b7``, for 2D and 3D.

The module layout is lukemelas' EfficientNet-PyTorch as segmentation_models_pytorch 0.6 exposes it
(``_conv_stem``, ``_bn0``, ``_blocks.N`` with ``_expand_conv/_bn0/_depthwise_conv/_bn1/_se_reduce/
_se_expand/_project_conv/_bn2``, then ``_conv_head``/``_bn1``), so smp's 2D checkpoints load key
for key; in 3D every kernel gains a trailing depth axis and depthwise convolutions stay depthwise.

Stages: stage 1 is the stem; stages 2-5 end after the blocks smp returns as features, and each
contains exactly one strided block (the first block of the 2nd, 3rd, 4th and 6th block group),
which takes that stage's per-axis stride (1 or 2).

Padding is TensorFlow's 'SAME', computed per axis from the input's size at run time: a strided
axis of size ``n`` becomes ``ceil(n / stride)``, the odd pixel of padding going right/bottom.
smp instead fixes the padding once for each model's ImageNet resolution (224 for b0, 240 for b1,
...); the two agree wherever the planned and the actual size have the same parity at every
strided layer. At sizes divisible by 32 that holds for b0 only: b1-b7 have strided depthwise
convs planned on odd sizes, which smp pads symmetrically, so their sampling grid sits one pixel
left of ours and features differ from stage 5 (b1, b6), 4 (b5, b7) or 3 (b2, b3, b4) on.

``_conv_head``/``_bn1`` (the classifier's 1x1 expansion) are never used by the features; they are
kept at depth 5 only so that smp's checkpoints load strictly, and frozen (``requires_grad=False``)
so that optimizers and DistributedDataParallel ignore them instead of failing on unused parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from smp3d.encoders import Encoder, EncoderSpec, WeightSource, resolve_strides
from smp3d.layers import as_tuple, batch_norm, check_spatial_dims, conv

__all__ = [
    "ENCODERS",
    "BlockArgs",
    "EfficientNetEncoder",
    "MBConvBlock",
    "drop_connect",
    "round_filters",
    "round_repeats",
    "same_pad",
]

# TensorFlow's batch-norm momentum 0.99 is PyTorch's 0.01 (the weight of the new batch).
_BN = {"momentum": 0.01, "eps": 1e-3}


class BlockArgs(NamedTuple):
    """One group of MBConv blocks; ``r1_k3_s11_e1_i32_o16_se0.25`` in the original's notation."""

    repeats: int
    kernel_size: int
    stride: int  # of the group's first block; the others have stride 1
    expand_ratio: int
    in_filters: int
    out_filters: int
    se_ratio: float = 0.25


# EfficientNet-B0; the other members scale widths and repeats.
_B0_GROUPS = (
    BlockArgs(1, 3, 1, 1, 32, 16),
    BlockArgs(2, 3, 2, 6, 16, 24),
    BlockArgs(2, 5, 2, 6, 24, 40),
    BlockArgs(3, 3, 2, 6, 40, 80),
    BlockArgs(3, 5, 1, 6, 80, 112),
    BlockArgs(4, 5, 2, 6, 112, 192),
    BlockArgs(1, 3, 1, 6, 192, 320),
)


def round_filters(filters: int, width_coefficient: float, divisor: int = 8) -> int:
    """Scale a channel count by the width coefficient, rounded to a multiple of ``divisor``."""
    scaled = filters * width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # never round down by more than 10%
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """Scale the number of blocks of a group by the depth coefficient (rounded up)."""
    return int(math.ceil(depth_coefficient * repeats))


def _block_plan(width_coefficient: float, depth_coefficient: float) -> list[BlockArgs]:
    """Every block of the scaled model in order, as ``BlockArgs`` with ``repeats=1``."""
    plan = []
    for group in _B0_GROUPS:
        in_filters = round_filters(group.in_filters, width_coefficient)
        out_filters = round_filters(group.out_filters, width_coefficient)
        for i in range(round_repeats(group.repeats, depth_coefficient)):
            plan.append(
                group._replace(
                    repeats=1,
                    stride=group.stride if i == 0 else 1,
                    in_filters=in_filters if i == 0 else out_filters,
                    out_filters=out_filters,
                )
            )
    return plan


def same_pad(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Pad ``x`` (B, C, *spatial) for TensorFlow 'SAME' convolution by ``layer``, per axis.

    Axes where ``layer`` has its own (symmetric) padding are left alone; along the others the
    total padding makes the output ``ceil(n / stride)`` long, with the odd pixel on the right.
    Only shapes enter the computation, so it traces under torch.compile.
    """
    pads: list[int] = []
    # F.pad lists (left, right) pairs from the last axis backwards.
    for n, k, s, d, p in reversed(
        list(zip(x.shape[2:], layer.kernel_size, layer.stride, layer.dilation, layer.padding, strict=True))
    ):
        total = 0 if p else max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


def same_pad_geometry(
    x: torch.Tensor, kernel: list[int], stride: list[int], dilation: list[int], padding: list[int]
) -> torch.Tensor:
    """:func:`same_pad` with the conv's geometry given as lists (TorchScript takes no module argument)."""
    pads: list[int] = []
    size = x.shape[2:]
    for axis in range(len(size) - 1, -1, -1):  # F.pad lists (left, right) pairs from the last axis backwards
        n, k, s, d = size[axis], kernel[axis], stride[axis], dilation[axis]
        total = 0 if padding[axis] else max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads += [total // 2, total - total // 2]
    for p in pads:
        if p:
            return F.pad(x, pads)
    return x


def _same_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int | Sequence[int] = 1,
    groups: int = 1,
    spatial_dims: int = 3,
) -> nn.Module:
    """A bias-free conv for :func:`same_pad`: 'SAME' is static and symmetric along unstrided axes
    (odd kernel), so the conv pads those itself and ``same_pad`` handles only the strided ones."""
    stride = as_tuple(stride, spatial_dims, "stride")
    padding = tuple((kernel_size - 1) // 2 if s == 1 and kernel_size % 2 else 0 for s in stride)
    return conv(spatial_dims)(
        in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups, bias=False
    )


def drop_connect(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``rate``."""
    if not training or rate <= 0:
        return x
    keep = 1.0 - rate
    # The mask is drawn in float32 (as the original does for float32 inputs): in bf16,
    # keep + U(0, 1) would round up to 1 too often and bias the mask.
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = torch.floor(keep + torch.rand(shape, dtype=torch.float32, device=x.device))
    return x / keep * mask.to(x.dtype)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k (carries the stride), squeeze-excite, 1x1 project.

    ``(B, in_filters, *spatial) -> (B, out_filters, *ceil(spatial / stride))``; the residual (with
    drop-connect in training) applies when the stride is 1 on every axis and channels are kept.
    """

    def __init__(self, args: BlockArgs, stride: Sequence[int], drop_connect_rate: float = 0.0, spatial_dims: int = 3):
        super().__init__()
        conv_nd, norm = conv(spatial_dims), batch_norm(spatial_dims)
        expanded = args.in_filters * args.expand_ratio
        self.has_expansion = args.expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = conv_nd(args.in_filters, expanded, 1, bias=False)
            self._bn0 = norm(expanded, **_BN)
        self._depthwise_conv = _same_conv(expanded, expanded, args.kernel_size, stride, expanded, spatial_dims)
        self._bn1 = norm(expanded, **_BN)
        squeezed = max(1, int(args.in_filters * args.se_ratio))  # of the block's input, not the expansion
        self._se_reduce = conv_nd(expanded, squeezed, 1)
        self._se_expand = conv_nd(squeezed, expanded, 1)
        self._project_conv = conv_nd(expanded, args.out_filters, 1, bias=False)
        self._bn2 = norm(args.out_filters, **_BN)
        self.has_residual = all(s == 1 for s in stride) and args.in_filters == args.out_filters
        self.drop_connect_rate = float(drop_connect_rate)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if hasattr(self, "_expand_conv"):  # has_expansion (TorchScript resolves hasattr at compile time)
            x = F.silu(self._bn0(self._expand_conv(x)))
        if torch.jit.is_scripting():
            dw = self._depthwise_conv
            x = same_pad_geometry(x, list(dw.kernel_size), list(dw.stride), list(dw.dilation), list(dw.padding))
        else:
            x = same_pad(x, self._depthwise_conv)
        x = F.silu(self._bn1(self._depthwise_conv(x)))
        scale = x.mean(dim=list(range(2, x.dim())), keepdim=True)  # global average pool, any spatial_dims
        scale = self._se_expand(F.silu(self._se_reduce(scale)))
        x = x * torch.sigmoid(scale)
        x = self._bn2(self._project_conv(x))
        if self.has_residual:
            x = drop_connect(x, self.drop_connect_rate, self.training)
            x += inputs  # in place: x is a fresh tensor that backward does not need
        return x


class EfficientNetEncoder(Encoder):
    """EfficientNet feature pyramid: ``depth + 1`` features ``(B, C_i, *ceil(spatial / reductions[i]))``.

    ``feature_blocks`` are the indices of the blocks whose outputs are features 2-5 (smp's
    ``out_indexes``); only the blocks that ``depth`` uses are built. ``drop_connect_rate`` is the
    stochastic-depth rate of the last block of the full model, growing linearly from 0 at block 0.
    """

    _is_torch_scriptable = True

    def __init__(
        self,
        width_coefficient: float,
        depth_coefficient: float,
        feature_blocks: Sequence[int],
        in_channels: int = 3,
        depth: int = 5,
        spatial_dims: int = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
        drop_connect_rate: float = 0.2,
        name: str = "efficientnet",
    ):
        spatial_dims = check_spatial_dims(spatial_dims)
        if not 1 <= depth <= 5:
            raise ValueError(f"Encoder {name!r} supports encoder_depth 1..5, got {depth}.")
        if not 0.0 <= drop_connect_rate < 1.0:
            raise ValueError(f"drop_connect_rate of {name!r} must be in [0, 1), got {drop_connect_rate!r}.")
        stage_strides = resolve_strides(strides, depth, spatial_dims, max_stride=2, name=name)
        plan = _block_plan(width_coefficient, depth_coefficient)
        stem = round_filters(32, width_coefficient)
        channels = (in_channels, stem, *(plan[i].out_filters for i in feature_blocks))
        super().__init__(channels[: depth + 1], stage_strides, spatial_dims)

        self._conv_stem = _same_conv(in_channels, stem, 3, stage_strides[0], spatial_dims=spatial_dims)
        self._bn0 = batch_norm(spatial_dims)(stem, **_BN)
        self._feature_blocks = tuple(feature_blocks[: depth - 1])
        self._feature_block_list = list(self._feature_blocks)  # (TorchScript tests membership in a list)
        self._blocks = nn.ModuleList()
        first = 0
        for stage, last in enumerate(self._feature_blocks, start=2):
            strided = [i for i in range(first, last + 1) if plan[i].stride != 1]
            if len(strided) != 1:
                raise ValueError(f"{name}: stage {stage} (blocks {first}..{last}) must hold exactly one strided block.")
            for i in range(first, last + 1):
                stride = stage_strides[stage - 1] if i in strided else (1,) * spatial_dims
                rate = drop_connect_rate * i / len(plan)  # the full model's schedule, whatever the depth
                self._blocks.append(MBConvBlock(plan[i], stride, rate, spatial_dims))
            first = last + 1

        if depth == 5:  # unused by the features; kept (frozen) for checkpoint compatibility, see module docs
            head = round_filters(1280, width_coefficient)
            self._conv_head = conv(spatial_dims)(plan[-1].out_filters, head, 1, bias=False)
            self._bn1 = batch_norm(spatial_dims)(head, **_BN)
            self._conv_head.requires_grad_(False)
            self._bn1.requires_grad_(False)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """Stage 1: the stem; stage ``i >= 2``: the blocks after feature ``i - 1``'s block up to feature ``i``'s.

        Dilated depthwise convolutions get symmetric padding ``(k // 2) * rate`` from
        :func:`~smp3d.encoders.dilate_module`, which :func:`same_pad` then leaves alone (as smp drops
        its static 'SAME' padding); 1x1 convolutions need no padding either way.
        """
        if stage == 1:
            return [self._conv_stem, self._bn0]
        first = self._feature_blocks[stage - 3] + 1 if stage > 2 else 0
        return list(self._blocks[first : self._feature_blocks[stage - 2] + 1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        if torch.jit.is_scripting():
            c = self._conv_stem
            x = same_pad_geometry(x, list(c.kernel_size), list(c.stride), list(c.dilation), list(c.padding))
        else:
            x = same_pad(x, self._conv_stem)
        x = F.silu(self._bn0(self._conv_stem(x)))
        features.append(x)
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._feature_block_list:
                features.append(x)
        return features


# Pretrained 2D sources: smp's Hub releases (keys already in this layout) of lukemelas'
# conversions of the TensorFlow checkpoints, Apache-2.0 like the originals. "advprop" weights
# were trained on inputs scaled to [-1, 1] rather than ImageNet-normalized.
_REVISIONS = {
    "efficientnet-b0": ("1bbe7ecc1d5ea1d2058de1a2db063b8701aff314", "29043c08140d9c6ee7de1468d55923f2b06bcec2"),
    "efficientnet-b1": ("5d637466a5215de300a8ccb13a39357df2df2bf4", "2e518b8b0955bbab467f50525578dab6b6086afc"),
    "efficientnet-b2": ("a96d4f0295ffbae18ebba173bf7f3c0c8f21990e", "be788c20dfb0bbe83b4c439f9cfe0dd937c0783e"),
    "efficientnet-b3": ("074c54a6c473e0d294690d49cedb6cf463e7127d", "9ccc166d87bd9c08d6bed4477638c7f4bb3eec78"),
    "efficientnet-b4": ("05cd5dde5dab658f00c463f9b9aa0ced76784f40", "f04caa809ea4eb08ee9e7fd555f5514ebe2a9ef5"),
    "efficientnet-b5": ("69f4d28460a4e421b7860bc26ee7d832e03e01ca", "dabe78fc8ab7ce93ddc2bb156b01db227caede88"),
    "efficientnet-b6": ("8570752016f7c62ae149cffa058550fe44e21c8b", "c2dbb4d1359151165ec7b96cfe54a9cac2142a31"),
    "efficientnet-b7": ("5a5dbe687d612ebc3dca248274fd1191111deda6", "ce33edb4e80c0cde268f098ae2299e23f615577d"),
}


def _spec(name: str, width: float, depth: float, feature_blocks: tuple[int, ...]) -> EncoderSpec:
    plan = _block_plan(width, depth)
    imagenet, advprop = _REVISIONS[name]
    return EncoderSpec(
        build=partial(
            EfficientNetEncoder,
            width_coefficient=width,
            depth_coefficient=depth,
            feature_blocks=feature_blocks,
            name=name,
        ),
        out_channels=(3, round_filters(32, width), *(plan[i].out_filters for i in feature_blocks)),
        weights={
            tag: WeightSource(repo_id=f"smp-hub/{name}.{tag}", revision=revision, license="Apache-2.0", **stats)
            for tag, revision, stats in (
                ("imagenet", imagenet, {}),
                ("advprop", advprop, {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}),  # AdvProp maps to [-1, 1]
            )
        },
        family="efficientnet",
        license="Apache-2.0",
        description=f"{name}: width x{width}, depth x{depth}, {len(plan)} MBConv blocks, TF 'SAME' padding",
    )


# (width, depth) coefficients of the paper; feature blocks as smp 0.6 (its b0 ends stage 4 after
# the first 112-channel block rather than the third: kept, so that 2D features equal smp's).
ENCODERS: dict[str, EncoderSpec] = {
    "efficientnet-b0": _spec("efficientnet-b0", 1.0, 1.0, (2, 4, 8, 15)),
    "efficientnet-b1": _spec("efficientnet-b1", 1.0, 1.1, (4, 7, 15, 22)),
    "efficientnet-b2": _spec("efficientnet-b2", 1.1, 1.2, (4, 7, 15, 22)),
    "efficientnet-b3": _spec("efficientnet-b3", 1.2, 1.4, (4, 7, 17, 25)),
    "efficientnet-b4": _spec("efficientnet-b4", 1.4, 1.8, (5, 9, 21, 31)),
    "efficientnet-b5": _spec("efficientnet-b5", 1.6, 2.2, (7, 12, 26, 38)),
    "efficientnet-b6": _spec("efficientnet-b6", 1.8, 2.6, (8, 14, 30, 44)),
    "efficientnet-b7": _spec("efficientnet-b7", 2.0, 3.1, (10, 17, 37, 54)),
}
