"""nnU-Net's residual encoder (ResEnc; Isensee et al., "nnU-Net Revisited", MICCAI 2024), 2D and 3D.

The layout is that of ``ResidualEncoder`` in the ``dynamic-network-architectures`` package, which
nnU-Net's ResEnc presets build:

- ``stem``: one conv-norm-act unit (:func:`~smp3d.layers.conv_norm_act`) to the first stage's width,
  with the first stage's kernel and no stride;
- ``stages[i]``: ``blocks[i]`` ResNet-D basic blocks of ``features[i]`` channels; the first block of
  a stage carries the stage's stride in its first convolution. A block is conv-norm-act ->
  conv-norm, plus the shortcut, then LeakyReLU. The shortcut is the identity, or (when the block
  strides or widens) an average pool by the stride followed by a 1x1 conv-norm;
- norm InstanceNorm (affine, eps 1e-5), activation LeakyReLU(0.01), conv biases on (nnU-Net's plans).

Feature ``i`` is the output of stage ``i``; nnU-Net's first stage has stride 1, so feature 1 is at
full resolution. Defaults: widths ``min(32 * 2**i, 320)`` in 3D (cap 512 in 2D), blocks
``(1, 3, 4, 6, 6, 6, 6, 6)``, kernel 3 and stride 2 on every axis after the first stage. Every
stage takes its own kernel and stride per axis: nnU-Net's plans for thick-slice volumes use e.g.
kernel ``(1, 3, 3)`` with stride ``(1, 2, 2)``. nnU-Net's usual 3d_fullres network has 6 stages
(``encoder_depth=6``); 2D plans reach 7 or 8.

The presets ``resenc_m``, ``resenc_l`` and ``resenc_xl`` all build this topology. nnU-Net's M, L and
XL planners differ in the GPU memory they plan for (8, 24 and 40 GB), which buys larger patches
and therefore sometimes more stages: pick ``encoder_depth``, ``strides`` and ``kernel_sizes`` from
your plan (or use :func:`smp3d.from_nnunet`, which reads them from ``plans.json``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn

from smp3d.encoders import Encoder, EncoderSpec, resolve_strides
from smp3d.layers import avg_pool, check_kernel_sizes, check_spatial_dims, conv, conv_norm_act

__all__ = ["ENCODERS", "BasicBlockD", "ResidualEncoder", "default_features"]

MAX_DEPTH = 8
DEFAULT_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6)
DEFAULT_STRIDES = (1, 2, 2, 2, 2, 2, 2, 2)


def default_features(depth: int, spatial_dims: int, base: int = 32) -> tuple[int, ...]:
    """nnU-Net's stage widths: ``min(base * 2**i, cap)``, cap 320 in 3D and 512 in 2D."""
    cap = 320 if spatial_dims == 3 else 512
    return tuple(min(base * 2**i, cap) for i in range(depth))


def _positive_ints(value: object, depth: int, what: str, name: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * depth
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or len(value) != depth
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise ValueError(
            f"{name}: {what} must be a positive int or {depth} positive ints (one per stage), got {value!r}."
        )
    return tuple(value)


class BasicBlockD(nn.Module):
    """ResNet-D basic block: ``act(conv2(conv1(x)) + shortcut(x))``.

    ``conv1`` is conv-norm-act (carrying ``stride``), ``conv2`` conv-norm; ``shortcut`` is present
    when the block strides (``pool``: average pool by the stride) or widens (``conv`` 1x1 without
    bias, ``norm``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        spatial_dims: int,
        conv_bias: bool = True,
    ):
        super().__init__()
        self.conv1 = conv_norm_act(in_channels, out_channels, kernel_size, stride, spatial_dims, conv_bias)
        self.conv2 = conv_norm_act(out_channels, out_channels, kernel_size, 1, spatial_dims, conv_bias, False)
        shortcut: dict[str, nn.Module] = {}
        if any(s > 1 for s in stride):
            # ceil_mode matches the strided conv's ceil(n / s) output size on sizes the stride does not divide.
            shortcut["pool"] = avg_pool(spatial_dims)(stride, stride=stride, ceil_mode=True)
        if in_channels != out_channels:
            projection = conv_norm_act(in_channels, out_channels, 1, 1, spatial_dims, bias=False, activation=False)
            shortcut.update(projection.named_children())
        self.shortcut = nn.Sequential(OrderedDict(shortcut)) if shortcut else nn.Identity()
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResidualEncoder(Encoder):
    """Stem + ``depth`` stages of :class:`BasicBlockD` (see the module docstring).

    Args:
        features: width of each stage (``depth`` ints); default :func:`default_features`.
        blocks: blocks per stage (an int or ``depth`` ints); default ``(1, 3, 4, 6, 6, 6, 6, 6)[:depth]``.
        kernel_sizes: kernel per stage, an int or ``depth`` items each an int or a per-axis tuple of odd ints.
        conv_bias: biases on the stem's and blocks' convolutions (nnU-Net's plans: True).
    """

    _is_torch_scriptable = True

    def __init__(
        self,
        in_channels: int = 3,
        depth: int = 5,
        spatial_dims: int = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
        features: Sequence[int] | None = None,
        blocks: int | Sequence[int] | None = None,
        kernel_sizes: int | Sequence[int | Sequence[int]] | None = None,
        conv_bias: bool = True,
        name: str = "resenc",
    ):
        spatial_dims = check_spatial_dims(spatial_dims)
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"{name} supports encoder_depth 1..{MAX_DEPTH}, got {depth!r}.")
        if not isinstance(conv_bias, bool):
            raise ValueError(f"{name}: conv_bias must be True or False, got {conv_bias!r}.")
        widths = default_features(depth, spatial_dims) if features is None else features
        widths = _positive_ints(widths, depth, "features", name)
        counts = _positive_ints(DEFAULT_BLOCKS[:depth] if blocks is None else blocks, depth, "blocks", name)
        kernels = check_kernel_sizes(kernel_sizes, depth, spatial_dims, name)
        stage_strides = resolve_strides(strides, depth, spatial_dims, default=DEFAULT_STRIDES, name=name)
        super().__init__((in_channels, *widths), stage_strides, spatial_dims)
        self.features, self.blocks, self.kernel_sizes = widths, counts, kernels

        self.stem = conv_norm_act(in_channels, widths[0], kernels[0], 1, spatial_dims, conv_bias)
        self.stages = nn.ModuleList()
        channels = widths[0]
        for width, count, kernel, stride in zip(widths, counts, kernels, stage_strides, strict=True):
            stage = nn.Sequential()
            for index in range(count):
                first = index == 0
                stage.append(
                    BasicBlockD(
                        channels if first else width,
                        width,
                        kernel,
                        stride if first else (1,) * spatial_dims,
                        spatial_dims,
                        conv_bias,
                    )
                )
            self.stages.append(stage)
            channels = width
        self._initialize()

    def _initialize(self) -> None:
        # nnU-Net's rule: He-normal convolutions (LeakyReLU slope 0.01), zero biases, and each block's
        # last norm at zero so that every residual block starts as its shortcut. Meta tensors hold no values.
        if self.stem.conv.weight.is_meta:
            return
        for module in self.modules():
            if isinstance(module, conv(self.spatial_dims)):
                nn.init.kaiming_normal_(module.weight, a=1e-2)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, BasicBlockD):
                nn.init.zeros_(module.conv2.norm.weight)
                nn.init.zeros_(module.conv2.norm.bias)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """Stage ``stage`` (1-based); the stem belongs to stage 1."""
        return [self.stem, self.stages[0]] if stage == 1 else [self.stages[stage - 1]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def _spec(name: str, vram_gb: int) -> EncoderSpec:
    return EncoderSpec(
        build=partial(ResidualEncoder, name=name),
        out_channels=None,  # widths depend on spatial_dims (cap 320 in 3D, 512 in 2D): see default_features
        strides=DEFAULT_STRIDES,
        family="resenc",
        max_depth=MAX_DEPTH,
        license="Apache-2.0 (layout of dynamic-network-architectures); no pretrained weights",
        description=(
            f"{name}: nnU-Net's residual encoder (ResNet-D basic blocks, InstanceNorm + LeakyReLU, blocks "
            f"(1, 3, 4, 6, 6, 6, ...), widths min(32 * 2**i, 320) in 3D / 512 in 2D); nnU-Net plans it for "
            f"{vram_gb} GB of GPU memory; features, blocks, kernel_sizes, strides per stage"
        ),
        extra={"nnunet_planner": f"nnUNetPlannerResEnc{name.split('_')[1].upper()}", "vram_target_gb": vram_gb},
    )


ENCODERS: dict[str, EncoderSpec] = {
    "resenc_m": _spec("resenc_m", 8),
    "resenc_l": _spec("resenc_l", 24),
    "resenc_xl": _spec("resenc_xl", 40),
}
