"""HRNet encoders (Wang et al., 2019, https://arxiv.org/abs/1908.07919), ``hrnet_w*``, for 2D and 3D.

The module layout is timm's ``hrnet_w*`` feature backbone (``timm.create_model(name, features_only=True)``):
a stem of two stride-2 3x3 convs (``conv1/bn1``, ``conv2/bn2``), ``layer1`` (bottlenecks), then
``transition1..3`` and ``stage2..4``, whose modules run parallel branches (``branches.b``) and fuse
them (``fuse_layers.i.j``), and, with ``feature_location="incre"`` (timm's default), one bottleneck
per branch (``incre_modules.b``) that widens it to 128/256/512/1024 channels. So timm's 2D ImageNet
checkpoints load key for key once their classification head (``downsamp_modules``, ``final_layer``,
``classifier``) is left out; in 3D every kernel gains a trailing depth axis.

Features: the input, the stem after ``conv1`` (reduction 2), then the four branches of the last
stage (reductions 4, 8, 16, 32 with the default strides). Only ``encoder_depth=5`` exists: every
branch comes out of the same final fusion, so a shallower HRNet would still run the whole network.

Strides: one per stage and per axis, 1 or 2. Stage 1 is ``conv1``, stage 2 ``conv2`` (then
``layer1`` at that resolution), stage ``k`` in 3..5 every 3x3 conv that goes from branch ``k - 3``
to branch ``k - 2``: the transition that creates the branch and the first conv of each strided
fusion path crossing that step. A strided axis of size ``n`` becomes ``ceil(n / 2)``. Fusion from a
coarser branch (1x1 conv, norm, nearest upsampling) goes to the finer branch's actual size, so odd
sizes and per-axis strides work; in 2D with even sizes this is timm's fixed x2/x4/x8 upsampling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from smp3d.encoders import Encoder, EncoderSpec, WeightSource, resolve_strides
from smp3d.layers import batch_norm, check_spatial_dims, conv
from smp3d_encoders.resnet import BasicBlock, Bottleneck

__all__ = ["ENCODERS", "HRNetConfig", "HRNetEncoder", "HighResolutionModule", "StageConfig"]

FEATURE_LOCATIONS = ("incre", "")
STEM_WIDTH = 64
# Bottleneck widths of the "incre" modules (x4 after expansion: 128, 256, 512, 1024 channels).
INCRE_WIDTHS = (32, 64, 128, 256)


class StageConfig(NamedTuple):
    """One HRNet stage: ``modules`` high-resolution modules, each with ``blocks`` blocks per branch."""

    modules: int
    blocks: tuple[int, ...]
    channels: tuple[int, ...]


class HRNetConfig(NamedTuple):
    layer1_blocks: int
    layer1_width: int  # bottleneck width of layer1 (x4 channels out)
    stages: tuple[StageConfig, StageConfig, StageConfig]  # stage2..stage4 (BasicBlock branches)


def _widths(width: int, modules: tuple[int, int, int] = (1, 4, 3), blocks: int = 4) -> HRNetConfig:
    channels = tuple(width * 2**i for i in range(4))
    stages = tuple(StageConfig(m, (blocks,) * (i + 2), channels[: i + 2]) for i, m in enumerate(modules))
    return HRNetConfig(layer1_blocks=4, layer1_width=64, stages=stages)


CONFIGS: dict[str, HRNetConfig] = {
    "hrnet_w18_small": HRNetConfig(1, 32, _widths(16, modules=(1, 1, 1), blocks=2).stages),
    "hrnet_w18": _widths(18),
    "hrnet_w32": _widths(32),
    "hrnet_w48": _widths(48),
}


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: Sequence[int] | int, spatial_dims: int):
    return [
        conv(spatial_dims)(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        batch_norm(spatial_dims)(out_channels),
    ]


def _make_layer(
    block: type[BasicBlock | Bottleneck], inplanes: int, planes: int, blocks: int, spatial_dims: int
) -> nn.Sequential:
    """``blocks`` residual blocks at stride 1; the first projects with a 1x1 conv if channels change."""
    out = planes * block.expansion
    downsample = nn.Sequential(*_conv_bn(inplanes, out, 1, 1, spatial_dims)) if inplanes != out else None
    layers = [block(inplanes, planes, 1, downsample, spatial_dims=spatial_dims)]
    layers += [block(out, planes, spatial_dims=spatial_dims) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches of basic blocks, then every output branch sums all inputs brought to its resolution.

    ``branch_strides[b]`` is the per-axis stride from branch ``b - 1`` to branch ``b`` (item 0 unused).
    From a finer branch ``j`` to a coarser ``i``: ``i - j`` strided 3x3 conv-norm (ReLU between them);
    from a coarser one: 1x1 conv-norm, then nearest upsampling to branch ``i``'s size.
    """

    def __init__(
        self,
        channels: Sequence[int],
        blocks: Sequence[int],
        branch_strides: Sequence[tuple[int, ...]],
        spatial_dims: int,
    ):
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(
            _make_layer(BasicBlock, c, c, b, spatial_dims) for c, b in zip(channels, blocks, strict=True)
        )
        fuse_layers = []
        for i in range(n):
            row: list[nn.Module] = []
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(*_conv_bn(channels[j], channels[i], 1, 1, spatial_dims)))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        out = channels[i] if last else channels[j]
                        layers = _conv_bn(channels[j], out, 3, branch_strides[j + k + 1], spatial_dims)
                        steps.append(nn.Sequential(*layers, *([] if last else [nn.ReLU(inplace=True)])))
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        # (TorchScript iterates ModuleLists, not zips with them)
        x = [branch(x[i]) for i, branch in enumerate(self.branches)]
        out: list[torch.Tensor] = []
        for i, row in enumerate(self.fuse_layers):
            y = x[i]
            size = y.shape[2:]
            for j, layer in enumerate(row):
                if j != i:
                    z = layer(x[j])
                    if j > i:
                        z = F.interpolate(z, size=size, mode="nearest")
                    y = y + z
            out.append(F.relu(y, inplace=True))  # y is a fresh sum here, never an input
        return out


class HRNetEncoder(Encoder):
    """HRNet feature pyramid: the input, the stem (reduction 2) and the four final branches."""

    _is_torch_scriptable = True

    def __init__(
        self,
        config: HRNetConfig,
        in_channels: int = 3,
        depth: int = 5,
        spatial_dims: int = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
        **kwargs: Any,
    ):
        feature_location = kwargs.pop("feature_location", "incre")
        if kwargs:
            raise TypeError(
                f"HRNet encoders take the extra argument feature_location ('incre' or ''), got {sorted(kwargs)}."
            )
        if feature_location not in FEATURE_LOCATIONS:
            raise ValueError(
                f"feature_location must be 'incre' (timm's default: branches widened to 128..1024 channels) "
                f"or '' (the raw branches), got {feature_location!r}."
            )
        spatial_dims = check_spatial_dims(spatial_dims)
        if depth != 5:
            raise ValueError(
                f"HRNet encoders support only encoder_depth=5 (every branch comes out of the final fusion), "
                f"got {depth!r}."
            )
        stage_strides = resolve_strides(strides, depth, spatial_dims, max_stride=2, name="hrnet")
        branch_channels = config.stages[-1].channels
        incre = feature_location == "incre"
        widths = tuple(w * Bottleneck.expansion for w in INCRE_WIDTHS) if incre else branch_channels
        super().__init__((in_channels, STEM_WIDTH, *widths), stage_strides, spatial_dims)
        self.feature_location = feature_location

        self.conv1, self.bn1 = _conv_bn(in_channels, STEM_WIDTH, 3, stage_strides[0], spatial_dims)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(STEM_WIDTH, 64, 3, stage_strides[1], spatial_dims)
        self.act2 = nn.ReLU(inplace=True)
        self.layer1 = _make_layer(Bottleneck, 64, config.layer1_width, config.layer1_blocks, spatial_dims)

        branch_strides = ((1,) * spatial_dims, *stage_strides[2:])
        previous = [config.layer1_width * Bottleneck.expansion]
        for index, stage in enumerate(config.stages, start=1):
            self.add_module(f"transition{index}", self._transition(previous, stage.channels, branch_strides))
            modules = [
                HighResolutionModule(stage.channels, stage.blocks, branch_strides, spatial_dims)
                for _ in range(stage.modules)
            ]
            self.add_module(f"stage{index + 1}", nn.ModuleList(modules))
            previous = list(stage.channels)
        if incre:
            self.incre_modules = nn.ModuleList(
                _make_layer(Bottleneck, c, w, 1, spatial_dims)
                for c, w in zip(branch_channels, INCRE_WIDTHS, strict=True)
            )

        conv_nd = conv(spatial_dims)
        for m in self.modules():
            if isinstance(m, conv_nd):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _transition(
        self, previous: Sequence[int], current: Sequence[int], branch_strides: Sequence[tuple[int, ...]]
    ) -> nn.ModuleList:
        """Keep existing branches (3x3 conv-norm-ReLU where channels change); create new ones from the last."""
        layers: list[nn.Module] = []
        for i, out in enumerate(current):
            if i < len(previous):
                if previous[i] == out:
                    layers.append(nn.Identity())
                else:
                    conv_bn = _conv_bn(previous[i], out, 3, 1, self.spatial_dims)
                    layers.append(nn.Sequential(*conv_bn, nn.ReLU(inplace=True)))
                continue
            steps = []
            for k in range(len(previous), i + 1):
                c_in = previous[-1]
                c_out = out if k == i else c_in
                conv_bn = _conv_bn(c_in, c_out, 3, branch_strides[k], self.spatial_dims)
                steps.append(nn.Sequential(*conv_bn, nn.ReLU(inplace=True)))
            layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        x = self.act1(self.bn1(self.conv1(x)))
        features.append(x)
        x = self.act2(self.bn2(self.conv2(x)))
        branches = [self.layer1(x)]
        # Stages spelled out (TorchScript takes no getattr by a computed name, nor a module argument).
        new: list[torch.Tensor] = []
        for i, layer in enumerate(self.transition1):
            new.append(layer(branches[i] if i < len(branches) else branches[-1]))
        branches = new
        for module in self.stage2:
            branches = module(branches)
        new = []
        for i, layer in enumerate(self.transition2):
            new.append(layer(branches[i] if i < len(branches) else branches[-1]))
        branches = new
        for module in self.stage3:
            branches = module(branches)
        new = []
        for i, layer in enumerate(self.transition3):
            new.append(layer(branches[i] if i < len(branches) else branches[-1]))
        branches = new
        for module in self.stage4:
            branches = module(branches)
        if hasattr(self, "incre_modules"):  # feature_location == "incre"
            new = []
            for i, incre in enumerate(self.incre_modules):
                new.append(incre(branches[i]))
            branches = new
        return features + branches

    def source_state_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """timm's whole-model HRNet checkpoint without its classification head, for strict loading.

        Only the head's keys (and ``incre_modules`` when ``feature_location=""``) are dropped; any other
        difference is left for the strict loading to report.
        """
        head = ("downsamp_modules.", "final_layer.", "classifier.", "incre_modules.")
        own = self.state_dict()
        return {k: v for k, v in state.items() if k in own or not k.startswith(head)}


# timm's 2D ImageNet releases on the Hub (the checkpoint's default tag in timm); keys match ours
# once the classification head (downsamp_modules.*, final_layer.*, classifier.*) is dropped.
_TIMM_TAGS = {
    "hrnet_w18_small": ("gluon_in1k", "Apache-2.0"),
    "hrnet_w18": ("ms_aug_in1k", "MIT"),
    "hrnet_w32": ("ms_in1k", "MIT"),
    "hrnet_w48": ("ms_in1k", "MIT"),
}


def _spec(name: str) -> EncoderSpec:
    config = CONFIGS[name]
    tag, license_ = _TIMM_TAGS[name]
    return EncoderSpec(
        build=partial(HRNetEncoder, config=config),
        out_channels=(3, STEM_WIDTH, *(w * Bottleneck.expansion for w in INCRE_WIDTHS)),
        weights={"imagenet": WeightSource(repo_id=f"timm/{name}.{tag}", license=license_)},
        family="hrnet",
        license=license_,
        description=f"{name}: branches {list(config.stages[-1].channels)}, timm layout",
        extra={"weights_layout": "timm", "branch_channels": config.stages[-1].channels, "depths": (5,)},
    )


ENCODERS: dict[str, EncoderSpec] = {name: _spec(name) for name in CONFIGS}
