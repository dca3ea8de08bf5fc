"""Squeeze-and-Excitation network encoders (Hu et al., 2018) for 2D and 3D.

The module layout is pretrainedmodels' SENet without the classifier: ``layer0`` (the stem:
``conv1/bn1/relu1``, or three 3x3 ``conv{i}/bn{i}/relu{i}`` for SENet-154), then ``layer1`` ..
``layer4`` of SE bottlenecks (``conv1..3``, ``bn1..3``, ``se_module.fc1/fc2`` as 1x1
convolutions with bias, ``downsample.0/1``), so 2D checkpoints of segmentation_models_pytorch
load key for key; in 3D every kernel gains a trailing depth axis and grouped 3x3 convolutions
(32 groups for SE-ResNeXt, 64 for SENet-154) stay grouped.

Features follow smp: feature 1 is the stem activation before its max pool, features 2-5 the
outputs of ``layer1``..``layer4``.

Strides: one per stage and per axis, 1 or 2. Stage 1 is the first stem convolution, stage 2 the
stem max pool (``layer1`` never strides), stages 3-5 the first block of ``layer2``..``layer4``
(its strided convolution and its projection). Convolutions map a size ``n`` to ``ceil(n / 2)``;
the max pool (kernel 3, no padding, ``ceil_mode`` as in the Caffe original) maps ``n`` to
``floor(n / 2)``, so odd sizes at the pool lose their last row exactly as in smp.

Weights are initialised with PyTorch's defaults, as in the pretrainedmodels port.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn

from smp3d.encoders import Encoder, EncoderSpec, WeightSource, check_depth, resolve_strides
from smp3d.layers import batch_norm, check_spatial_dims, conv, strided_pool

__all__ = [
    "ENCODERS",
    "SEBottleneck",
    "SEModule",
    "SENetEncoder",
    "SEResNetBottleneck",
    "SEResNeXtBottleneck",
]

Stride = int | tuple[int, ...]


class SEModule(nn.Module):
    """Channel gate: global average (any number of spatial axes) -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid.

    ``(B, C, *spatial) -> (B, C, *spatial)``, each channel scaled by its gate in (0, 1).
    """

    def __init__(self, channels: int, reduction: int, spatial_dims: int = 3):
        super().__init__()
        conv_nd = conv(spatial_dims)
        self.fc1 = conv_nd(channels, channels // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = conv_nd(channels // reduction, channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A plain mean is what adaptive_avg_pool2d(x, 1) computes, and unlike AdaptiveAvgPool3d it
        # is a fast reduction for every memory format (channels_last_3d included).
        gate = x.mean(dim=[d for d in range(2, x.dim())], keepdim=True)
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(gate))))
        return x * gate


class _SEBottleneckBase(nn.Module):
    """1x1 -> grouped 3x3 -> 1x1 (to ``4 * planes``), SE gate, residual add, ReLU.

    Subclasses set the two inner widths and which convolution carries the stride.
    """

    expansion = 4
    #: Caffe's SE-ResNet strides in the first 1x1 convolution; the others in the 3x3.
    stride_in_1x1 = False

    @classmethod
    def widths(cls, planes: int, groups: int) -> tuple[int, int]:
        raise NotImplementedError

    def __init__(
        self,
        inplanes: int,
        planes: int,
        groups: int,
        reduction: int,
        stride: Stride = 1,
        downsample: nn.Module | None = None,
        spatial_dims: int = 3,
    ):
        super().__init__()
        conv_nd, norm = conv(spatial_dims), batch_norm(spatial_dims)
        reduce_width, inner_width = self.widths(planes, groups)
        out_width = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if self.stride_in_1x1 else (1, stride)
        self.conv1 = conv_nd(inplanes, reduce_width, 1, stride=stride_1x1, bias=False)
        self.bn1 = norm(reduce_width)
        self.conv2 = conv_nd(reduce_width, inner_width, 3, stride=stride_3x3, padding=1, groups=groups, bias=False)
        self.bn2 = norm(inner_width)
        self.conv3 = conv_nd(inner_width, out_width, 1, bias=False)
        self.bn3 = norm(out_width)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = SEModule(out_width, reduction, spatial_dims)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se_module(self.bn3(self.conv3(out)))
        out += residual  # in place: the gated tensor is a fresh one that autograd does not keep
        return self.relu(out)


class SEBottleneck(_SEBottleneckBase):
    """SENet-154's block: widths ``2 * planes`` then ``4 * planes``, stride in the 3x3."""

    @classmethod
    def widths(cls, planes: int, groups: int) -> tuple[int, int]:
        return planes * 2, planes * 4


class SEResNetBottleneck(_SEBottleneckBase):
    """SE-ResNet's block: widths ``planes``, stride in the first 1x1 (as in the Caffe model)."""

    stride_in_1x1 = True

    @classmethod
    def widths(cls, planes: int, groups: int) -> tuple[int, int]:
        return planes, planes


class SEResNeXtBottleneck(_SEBottleneckBase):
    """SE-ResNeXt's block: ``groups`` paths of width 4 per 64 planes, stride in the 3x3."""

    base_width = 4

    @classmethod
    def widths(cls, planes: int, groups: int) -> tuple[int, int]:
        width = math.floor(planes * cls.base_width / 64) * groups
        return width, width


class SENetEncoder(Encoder):
    """SENet / SE-ResNet / SE-ResNeXt feature pyramid: ``depth + 1`` features, item 0 the input.

    Input ``(B, in_channels, *spatial)``; feature ``i`` has ``out_channels[i]`` channels and is
    reduced by ``reductions[i]`` per axis. Only the stages that ``depth`` uses are built.
    """

    _is_torch_scriptable = True

    def __init__(
        self,
        block: type[_SEBottleneckBase],
        layers: Sequence[int],
        groups: int,
        reduction: int = 16,
        inplanes: int = 64,
        input_3x3: bool = False,
        downsample_kernel_size: int = 1,
        downsample_padding: int = 0,
        in_channels: int = 3,
        depth: int = 5,
        spatial_dims: int = 3,
        strides: Sequence[Stride] | None = None,
        name: str = "senet",
    ):
        spatial_dims = check_spatial_dims(spatial_dims)
        check_depth(depth, 5, name)
        stage_strides = resolve_strides(strides, depth, spatial_dims, max_stride=2, name=name)
        planes = (64, 128, 256, 512)
        channels = (in_channels, inplanes, *(p * block.expansion for p in planes))
        super().__init__(channels[: depth + 1], stage_strides, spatial_dims)

        conv_nd, norm = conv(spatial_dims), batch_norm(spatial_dims)
        if input_3x3:  # SENet-154: three 3x3 convolutions instead of one 7x7
            widths = (64, 64, inplanes)
            stem: list[tuple[str, nn.Module]] = []
            for i, width in enumerate(widths, start=1):
                source = in_channels if i == 1 else widths[i - 2]
                stride = stage_strides[0] if i == 1 else 1
                stem += [
                    (f"conv{i}", conv_nd(source, width, 3, stride=stride, padding=1, bias=False)),
                    (f"bn{i}", norm(width)),
                    (f"relu{i}", nn.ReLU(inplace=True)),
                ]
        else:
            stem = [
                ("conv1", conv_nd(in_channels, inplanes, 7, stride=stage_strides[0], padding=3, bias=False)),
                ("bn1", norm(inplanes)),
                ("relu1", nn.ReLU(inplace=True)),
            ]
        self.layer0 = nn.Sequential(OrderedDict(stem))
        if depth >= 2:
            # Kernel 3 without padding and ceil_mode, as the Caffe-trained weights expect.
            self.layer0_pool = strided_pool("max", 3, stage_strides[1], spatial_dims=spatial_dims, ceil_mode=True)

        self.inplanes = inplanes
        block_args = dict(groups=groups, reduction=reduction, spatial_dims=spatial_dims)
        for stage in range(2, depth + 1):
            first = stage == 2  # layer1 keeps its input size and always has a 1x1 projection
            layer = self._make_layer(
                block,
                planes[stage - 2],
                layers[stage - 2],
                stride=(1,) * spatial_dims if first else stage_strides[stage - 1],
                downsample_kernel_size=1 if first else downsample_kernel_size,
                downsample_padding=0 if first else downsample_padding,
                **block_args,
            )
            self.add_module(f"layer{stage - 1}", layer)

    def _make_layer(
        self,
        block: type[_SEBottleneckBase],
        planes: int,
        blocks: int,
        stride: tuple[int, ...],
        downsample_kernel_size: int,
        downsample_padding: int,
        **block_args: int,
    ) -> nn.Sequential:
        spatial_dims = self.spatial_dims
        out_width = planes * block.expansion
        downsample = None
        if any(s != 1 for s in stride) or self.inplanes != out_width:
            downsample = nn.Sequential(
                conv(spatial_dims)(
                    self.inplanes,
                    out_width,
                    downsample_kernel_size,
                    stride=stride,
                    padding=downsample_padding,
                    bias=False,
                ),
                batch_norm(spatial_dims)(out_width),
            )
        layer = [block(self.inplanes, planes, stride=stride, downsample=downsample, **block_args)]
        self.inplanes = out_width
        layer += [block(self.inplanes, planes, **block_args) for _ in range(1, blocks)]
        return nn.Sequential(*layer)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """Stage 1: the stem ``layer0``; stage 2: its max pool and ``layer1``; stages 3-5: ``layer2..4``."""
        if stage == 1:
            return [self.layer0]
        return [self.layer0_pool, self.layer1] if stage == 2 else [getattr(self, f"layer{stage - 1}")]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, *spatial)`` -> ``depth + 1`` tensors ``(B, out_channels[i], *spatial / reductions[i])``."""
        # Stages spelled out (TorchScript resolves hasattr at compile time): only the built ones run.
        features = [x]
        x = self.layer0(x)
        features.append(x)
        if hasattr(self, "layer1"):
            x = self.layer1(self.layer0_pool(x))
            features.append(x)
        if hasattr(self, "layer2"):
            x = self.layer2(x)
            features.append(x)
        if hasattr(self, "layer3"):
            x = self.layer3(x)
            features.append(x)
        if hasattr(self, "layer4"):
            x = self.layer4(x)
            features.append(x)
        return features


# Pretrained 2D sources: smp's Hub releases (keys already in this layout) of the Caffe models of
# the SENet authors (Apache-2.0), converted by pretrainedmodels.
_LICENSE = "Apache-2.0"


def _spec(
    name: str,
    block: type[_SEBottleneckBase],
    layers: tuple[int, int, int, int],
    groups: int,
    revision: str,
    senet154: bool = False,
) -> EncoderSpec:
    # SENet-154 has a 3-conv stem of width 128 and 3x3 projections; the others a 7x7 stem of
    # width 64 and 1x1 projections.
    stem = dict(inplanes=128, input_3x3=True, downsample_kernel_size=3, downsample_padding=1) if senet154 else {}
    stem_width = 128 if senet154 else 64
    return EncoderSpec(
        build=partial(SENetEncoder, block=block, layers=layers, groups=groups, name=name, **stem),
        out_channels=(3, stem_width, 256, 512, 1024, 2048),
        weights={"imagenet": WeightSource(repo_id=f"smp-hub/{name}.imagenet", revision=revision, license=_LICENSE)},
        family="senet",
        license=_LICENSE,
        description=f"{name}: {block.__name__} x {list(layers)}" + (f", {groups} groups" if groups > 1 else ""),
    )


ENCODERS: dict[str, EncoderSpec] = {
    "senet154": _spec(
        "senet154", SEBottleneck, (3, 8, 36, 3), 64, "249f45efc9881ba560a0c480128edbc34ab87e40", senet154=True
    ),
    "se_resnet50": _spec(
        "se_resnet50", SEResNetBottleneck, (3, 4, 6, 3), 1, "e6b4bc2dc85226c3d3474544410724a485455459"
    ),
    "se_resnet101": _spec(
        "se_resnet101", SEResNetBottleneck, (3, 4, 23, 3), 1, "71fe95cc0a27f444cf83671f354de02dc741b18b"
    ),
    "se_resnet152": _spec(
        "se_resnet152", SEResNetBottleneck, (3, 8, 36, 3), 1, "e79fc3d9d76f197bd76a2593c2054edf1083fe32"
    ),
    "se_resnext50_32x4d": _spec(
        "se_resnext50_32x4d", SEResNeXtBottleneck, (3, 4, 6, 3), 32, "73246406d879a2b0e3fdfe6fddd56347d38f38ae"
    ),
    "se_resnext101_32x4d": _spec(
        "se_resnext101_32x4d", SEResNeXtBottleneck, (3, 4, 23, 3), 32, "18808a4276f46421d358a9de554e0b93c2795df4"
    ),
}
