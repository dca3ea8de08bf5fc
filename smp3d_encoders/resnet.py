"""ResNet and ResNeXt encoders (He et al., 2016; Xie et al., 2017) for 2D and 3D.

The module layout is torchvision's ResNet without ``fc`` (``conv1``, ``bn1``, ``layer1``..``layer4``,
blocks with ``conv1/bn1/conv2/bn2[/conv3/bn3]`` and ``downsample.0/1``), so 2D checkpoints of
torchvision and segmentation_models_pytorch load key for key; in 3D every kernel gains a
trailing depth axis.

Strides: one per stage and per axis, any positive integer. Stage 1 is the stem convolution,
stage 2 the max pool (then ``layer1``), stages 3-5 the first block of ``layer2``..``layer4``.
Every strided layer maps a size ``n`` to ``ceil(n / stride)``; the max pool of stride ``s`` has
kernel ``2s - 1`` along that axis (torchvision's 3 for ``s = 2``, no pooling for ``s = 1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn

from smp3d.encoders import Encoder, EncoderSpec, WeightSource, resolve_strides
from smp3d.layers import batch_norm, check_spatial_dims, conv, max_pool

__all__ = ["ENCODERS", "BasicBlock", "Bottleneck", "ResNetEncoder"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection; the first carries the stride."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int | tuple[int, ...] = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        spatial_dims: int = 3,
    ):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64.")
        conv_nd, norm = conv(spatial_dims), batch_norm(spatial_dims)
        self.conv1 = conv_nd(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv_nd(planes, planes, 3, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place: saves a full-size allocation per block
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt, carries the stride), 1x1 expand by 4."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int | tuple[int, ...] = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        spatial_dims: int = 3,
    ):
        super().__init__()
        conv_nd, norm = conv(spatial_dims), batch_norm(spatial_dims)
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv_nd(inplanes, width, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = conv_nd(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = norm(width)
        self.conv3 = conv_nd(width, planes * self.expansion, 1, bias=False)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


def _pool(stride: tuple[int, ...], spatial_dims: int) -> nn.Module:
    kernel = tuple(2 * s - 1 for s in stride)
    return max_pool(spatial_dims)(kernel, stride=stride, padding=tuple(s - 1 for s in stride))


class ResNetEncoder(Encoder):
    """ResNet/ResNeXt feature pyramid: ``depth + 1`` features, item 0 the input.

    Only the stages that ``depth`` uses are built, so a shallow encoder carries no unused
    parameters.
    """

    _is_torch_scriptable = True

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        in_channels: int = 3,
        depth: int = 5,
        spatial_dims: int = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
        groups: int = 1,
        width_per_group: int = 64,
    ):
        spatial_dims = check_spatial_dims(spatial_dims)
        if not 1 <= depth <= 5:
            raise ValueError(f"ResNet encoders support encoder_depth 1..5, got {depth}.")
        stage_strides = resolve_strides(strides, depth, spatial_dims, name=type(self).__name__)
        widths = (64, 128, 256, 512)
        channels = (in_channels, 64, *(w * block.expansion for w in widths))
        super().__init__(channels[: depth + 1], stage_strides, spatial_dims)

        conv_nd, norm = conv(spatial_dims), batch_norm(spatial_dims)
        self._block_args = dict(groups=groups, base_width=width_per_group, spatial_dims=spatial_dims)
        self.inplanes = 64
        self.conv1 = conv_nd(in_channels, 64, 7, stride=stage_strides[0], padding=3, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        if depth >= 2:
            self.maxpool = _pool(stage_strides[1], spatial_dims)
        for stage in range(2, depth + 1):
            stride = stage_strides[stage - 1] if stage > 2 else (1,) * spatial_dims
            layer = self._make_layer(block, widths[stage - 2], layers[stage - 2], stride)
            self.add_module(f"layer{stage - 1}", layer)

        for m in self.modules():
            if isinstance(m, conv_nd):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: tuple[int, ...]
    ) -> nn.Sequential:
        spatial_dims = self.spatial_dims
        downsample = None
        if any(s != 1 for s in stride) or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv(spatial_dims)(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                batch_norm(spatial_dims)(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, **self._block_args)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **self._block_args) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        if stage == 1:
            return [self.conv1]
        return [self.maxpool, self.layer1] if stage == 2 else [getattr(self, f"layer{stage - 1}")]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Stages spelled out (TorchScript resolves hasattr at compile time): only the built ones run.
        features = [x]
        x = self.relu(self.bn1(self.conv1(x)))
        features.append(x)
        if hasattr(self, "layer1"):
            x = self.layer1(self.maxpool(x))
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


# Pretrained 2D sources (smp's Hub releases, keys already in this layout), the input of
# weight conversion. Licences: torchvision's ImageNet weights are BSD-3-Clause; the
# semi-supervised (ssl/swsl) and Instagram weakly-supervised releases are CC-BY-NC-4.0.
_LICENSES = {"imagenet": "BSD-3-Clause", "ssl": "CC-BY-NC-4.0", "swsl": "CC-BY-NC-4.0", "instagram": "CC-BY-NC-4.0"}


def _weights(name: str, **revisions: str) -> dict[str, WeightSource]:
    return {
        tag: WeightSource(repo_id=f"smp-hub/{name}.{tag}", revision=rev, license=_LICENSES[tag])
        for tag, rev in revisions.items()
    }


def _spec(
    name: str,
    block: type[BasicBlock | Bottleneck],
    layers: tuple[int, ...],
    groups: int = 1,
    width_per_group: int = 64,
    **revisions: str,
) -> EncoderSpec:
    family = "resnext" if groups > 1 else "resnet"
    e = block.expansion
    return EncoderSpec(
        build=partial(ResNetEncoder, block=block, layers=layers, groups=groups, width_per_group=width_per_group),
        out_channels=(3, 64, 64 * e, 128 * e, 256 * e, 512 * e),
        weights=_weights(name, **revisions),
        family=family,
        description=f"{name}: {block.__name__} x {list(layers)}"
        + (f", {groups}x{width_per_group}d" if groups > 1 else ""),
    )


ENCODERS: dict[str, EncoderSpec] = {
    "resnet18": _spec(
        "resnet18",
        BasicBlock,
        (2, 2, 2, 2),
        imagenet="3f2325ff978283d47aa6a1d6878ca20565622683",
        ssl="d600d5116aac2e6e595f99f40612074c723c00b2",
        swsl="0e3a35d4d8e344088c14a96eee502a88ac70eae1",
    ),
    "resnet34": _spec("resnet34", BasicBlock, (3, 4, 6, 3), imagenet="7a57b34f723329ff020b3f8bc41771163c519d0c"),
    "resnet50": _spec(
        "resnet50",
        Bottleneck,
        (3, 4, 6, 3),
        imagenet="00cb74e366966d59cd9a35af57e618af9f88efe9",
        ssl="d07daf5b4377f3700c6ac61906b0aafbc4eca46b",
        swsl="b9520cce124f91c6fe7eee45721a2c7954f0d8c0",
    ),
    "resnet101": _spec("resnet101", Bottleneck, (3, 4, 23, 3), imagenet="cd7c15e8c51da86ae6a084515fdb962d0c94e7d1"),
    "resnet152": _spec("resnet152", Bottleneck, (3, 8, 36, 3), imagenet="951dd835e9d086628e447b484584c8983f9e1dd0"),
    "resnext50_32x4d": _spec(
        "resnext50_32x4d",
        Bottleneck,
        (3, 4, 6, 3),
        32,
        4,
        imagenet="329793c85d62fd340ae42ae39fb905a63df872e7",
        ssl="9b67cff77d060c7044493a58c24d1007c1eb06c3",
        swsl="52e6e49da61b8e26ca691e1aef2cbb952884057d",
    ),
    "resnext101_32x4d": _spec(
        "resnext101_32x4d",
        Bottleneck,
        (3, 4, 23, 3),
        32,
        4,
        ssl="b39796c8459084d13523b7016c3ef13a2e9e472b",
        swsl="3f8355b4892a31f001a832b49b2b01484d48516a",
    ),
    "resnext101_32x8d": _spec(
        "resnext101_32x8d",
        Bottleneck,
        (3, 4, 23, 3),
        32,
        8,
        imagenet="221af6198d03a4ee88992f78a1ee81b46a52d339",
        instagram="44cd927aa6e64673ffe9d31230bad44abc18b823",
        ssl="723a95ddeed335c9488c37c6cbef13d779ac8f97",
        swsl="58cf0bb65f91365470398080d9588b187d1777c4",
    ),
    "resnext101_32x16d": _spec(
        "resnext101_32x16d",
        Bottleneck,
        (3, 4, 23, 3),
        32,
        16,
        instagram="64e8e320eeae6501185b0627b2429a68e52d050c",
        ssl="1283fe03fbb6aa2599b2df24095255acb93c3d5c",
        swsl="30ba61bbd4d6af0d955c513dbb4f557b84eb094f",
    ),
    "resnext101_32x32d": _spec(
        "resnext101_32x32d", Bottleneck, (3, 4, 23, 3), 32, 32, instagram="c9405de121fdaa275a89de470fb19409e3eeaa86"
    ),
    "resnext101_32x48d": _spec(
        "resnext101_32x48d", Bottleneck, (3, 4, 23, 3), 32, 48, instagram="53e61a962b824ad7027409821f9ac3e3336dd024"
    ),
}
