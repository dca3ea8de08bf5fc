"""DenseNet-BC encoders (Huang et al., 2017) for 2D and 3D.

The module layout is torchvision's ``DenseNet.features`` without the classifier: ``conv0``,
``norm0``, ``relu0``, ``pool0``, ``denseblock1..4`` (``denselayerM`` with
``norm1/relu1/conv1/norm2/relu2/conv2``), ``transition1..3`` (``norm/relu/conv/pool``) and
``norm5``, so 2D checkpoints of torchvision and segmentation_models_pytorch load key for key;
in 3D every kernel gains a trailing depth axis.

Features (as smp): the stem activation ``relu0``; after dense block 1..3 the transition's
``relu(norm(x))``, taken before its 1x1 convolution and pooling; after block 4 ``norm5``
(no ReLU).

Strides: one per stage and per axis, 1 or 2. Stage 1 is ``conv0``, stage 2 the max pool
``pool0``, stages 3-5 the average pools of ``transition1..3``. ``conv0`` and ``pool0`` map a
size ``n`` to ``ceil(n / 2)``, the average pools to ``floor(n / 2)`` (torchvision's rounding);
an axis with stride 1 keeps its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint

from smp3d.encoders import Encoder, EncoderSpec, WeightSource, check_depth, resolve_strides
from smp3d.layers import batch_norm, check_spatial_dims, conv, strided_pool

__all__ = ["ENCODERS", "DenseBlock", "DenseLayer", "DenseNetEncoder", "Transition"]


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv bottleneck (``bn_size * growth_rate`` channels), then BN-ReLU-3x3 conv.

    Reads the list of all previous features of its block, each ``(B, C_i, *spatial)``, and
    returns the ``growth_rate`` new channels, ``(B, growth_rate, *spatial)``.
    """

    def __init__(
        self,
        in_channels: int,
        growth_rate: int,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
        spatial_dims: int = 3,
    ):
        super().__init__()
        conv_nd, norm = conv(spatial_dims), batch_norm(spatial_dims)
        width = bn_size * growth_rate
        self.norm1 = norm(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = conv_nd(in_channels, width, 1, bias=False)
        self.norm2 = norm(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = conv_nd(width, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def _bottleneck(self, *inputs: torch.Tensor) -> torch.Tensor:
        # One concatenation per layer: the only copy of the block's features this layer makes.
        return self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))

    def _concat_bottleneck(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if torch.jit.is_scripting():  # no activation checkpointing in a script: the same values, kept in memory
            out = self._concat_bottleneck(inputs)
        elif self.memory_efficient and torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            # Recompute the concatenation and bottleneck in backward instead of storing them
            # (torchvision's memory_efficient; in training, norm1's running statistics are then
            # updated twice per step, as in torchvision).
            out = checkpoint.checkpoint(self._bottleneck, *inputs, use_reentrant=False)
        else:
            out = self._bottleneck(*inputs)
        out = self.conv2(self.relu2(self.norm2(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers (``denselayer1..N``); every layer reads all previous features.

    ``(B, C, *spatial) -> (B, C + num_layers * growth_rate, *spatial)``.
    """

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, **layer_args: object):
        super().__init__()
        for i in range(num_layers):
            self[f"denselayer{i + 1}"] = DenseLayer(in_channels + i * growth_rate, growth_rate, **layer_args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Module):
    """BN-ReLU (the encoder feature), then, when the next stage is built, 1x1 conv and 2x avg pool.

    ``conv`` halves the channels; ``pool`` pools only along the axes its stride reduces.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: tuple[int, ...] | None, spatial_dims: int = 3
    ) -> None:
        super().__init__()
        self.norm = batch_norm(spatial_dims)(in_channels)
        self.relu = nn.ReLU(inplace=True)
        if stride is not None:  # None: the last built stage; its downsampling would go unused
            self.conv = conv(spatial_dims)(in_channels, out_channels, 1, bias=False)
            self.pool = _pool("avg", 2, stride, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-downsampling activation ``relu(norm(x))``, shape of ``x``."""
        return self.relu(self.norm(x))

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial) -> (B, C_out, *spatial / stride)``."""
        # The bias-free 1x1 conv and the average pool are both linear and commute; pooling first
        # runs the conv on 2**spatial_dims times fewer voxels (equal to torchvision's order up
        # to float rounding).
        return self.conv(self.pool(x))


def _pool(kind: str, kernel_size: int, stride: tuple[int, ...], spatial_dims: int, padding: int = 0) -> nn.Module:
    # A stage with stride 1 on every axis has nothing to pool: skip the copy.
    if all(s == 1 for s in stride):
        return nn.Identity()
    return strided_pool(kind, kernel_size, stride, padding, spatial_dims=spatial_dims)


def _feature_channels(num_init_features: int, growth_rate: int, block_config: Sequence[int]) -> tuple[int, ...]:
    """Channels of the five features (the input excluded)."""
    channels, width = [num_init_features], num_init_features
    for i, num_layers in enumerate(block_config):
        width += num_layers * growth_rate
        channels.append(width)
        if i < len(block_config) - 1:
            width //= 2  # transition conv
    return tuple(channels)


class DenseNetEncoder(Encoder):
    """DenseNet feature pyramid: ``depth + 1`` features, item 0 the input.

    Only the stages that ``depth`` uses are built (the last built transition keeps just its
    ``norm``), so a shallow encoder carries no unused parameters. ``memory_efficient`` trades
    compute for memory by recomputing each layer's concatenation in backward; ``bn_size`` and
    ``drop_rate`` are torchvision's.
    """

    _is_torch_scriptable = True

    def __init__(
        self,
        block_config: Sequence[int],
        growth_rate: int = 32,
        num_init_features: int = 64,
        in_channels: int = 3,
        depth: int = 5,
        spatial_dims: int = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
        name: str = "densenet",
    ):
        spatial_dims = check_spatial_dims(spatial_dims)
        check_depth(depth, 5, name)
        if len(block_config) != 4:
            raise ValueError(f"{name}: block_config must list 4 dense blocks, got {tuple(block_config)}.")
        stage_strides = resolve_strides(strides, depth, spatial_dims, max_stride=2, name=name)
        channels = _feature_channels(num_init_features, growth_rate, block_config)
        super().__init__((in_channels, *channels[:depth]), stage_strides, spatial_dims)

        conv_nd, norm = conv(spatial_dims), batch_norm(spatial_dims)
        layer_args = dict(
            bn_size=bn_size, drop_rate=drop_rate, memory_efficient=memory_efficient, spatial_dims=spatial_dims
        )
        # A named container (never called as a whole) so keys read ``features.<torchvision name>``.
        self.features = nn.ModuleDict()
        f = self.features
        f["conv0"] = conv_nd(in_channels, num_init_features, 7, stride=stage_strides[0], padding=3, bias=False)
        f["norm0"] = norm(num_init_features)
        f["relu0"] = nn.ReLU(inplace=True)
        if depth >= 2:
            f["pool0"] = _pool("max", 3, stage_strides[1], spatial_dims, padding=1)
        width = num_init_features
        for stage in range(2, depth + 1):
            block = stage - 1
            f[f"denseblock{block}"] = DenseBlock(block_config[block - 1], width, growth_rate, **layer_args)
            width = channels[block]
            if block < 4:
                stride = stage_strides[stage] if stage < depth else None
                f[f"transition{block}"] = Transition(width, width // 2, stride, spatial_dims)
                width //= 2
            else:
                f["norm5"] = norm(width)

        # torchvision's initialization.
        for m in self.modules():
            if isinstance(m, conv_nd):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, norm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """Stage 1: ``conv0`` (and ``norm0``); stage ``i >= 2``: the downsampling that opens it (``pool0``, or
        the previous transition's ``conv`` and ``pool``, never its ``norm``, which makes feature ``i - 1``),
        dense block ``i - 1`` and the norm that makes feature ``i`` (transition ``i - 1``'s or ``norm5``)."""
        f = self.features
        if stage == 1:
            return [f.conv0, f.norm0]
        block = stage - 1
        if block == 1:
            modules = [f.pool0]
        else:
            previous = f[f"transition{block - 1}"]
            modules = [previous.conv, previous.pool]
        modules.append(f[f"denseblock{block}"])
        modules.append(f[f"transition{block}"].norm if block < 4 else f.norm5)
        return modules

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C_in, *spatial)`` -> ``depth + 1`` tensors ``(B, out_channels[i], *spatial / reductions[i])``."""
        if torch.jit.is_scripting():
            return self._scripted_forward(x)
        f = self.features
        features = [x]
        x = f.relu0(f.norm0(f.conv0(x)))
        features.append(x)
        for stage in range(2, self.depth + 1):
            block = stage - 1
            x = f.pool0(x) if block == 1 else f[f"transition{block - 1}"].downsample(x)
            x = f[f"denseblock{block}"](x)
            x = f[f"transition{block}"](x) if block < 4 else f.norm5(x)
            features.append(x)
        return features

    def _scripted_forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`forward` with the stages spelled out (TorchScript indexes a ModuleDict only by a literal and
        resolves hasattr at compile time): only the built ones run."""
        f = self.features
        features = [x]
        x = f["relu0"](f["norm0"](f["conv0"](x)))
        features.append(x)
        if hasattr(f, "denseblock1"):
            x = f["transition1"](f["denseblock1"](f["pool0"](x)))
            features.append(x)
        if hasattr(f, "denseblock2"):
            x = f["transition2"](f["denseblock2"](f["transition1"].downsample(x)))
            features.append(x)
        if hasattr(f, "denseblock3"):
            x = f["transition3"](f["denseblock3"](f["transition2"].downsample(x)))
            features.append(x)
        if hasattr(f, "denseblock4"):
            x = f["norm5"](f["denseblock4"](f["transition3"].downsample(x)))
            features.append(x)
        return features


# Pretrained 2D sources: smp's Hub releases of torchvision's ImageNet weights (BSD-3-Clause).
def _spec(
    name: str, block_config: tuple[int, ...], growth_rate: int, num_init_features: int, imagenet: str
) -> EncoderSpec:
    return EncoderSpec(
        build=partial(
            DenseNetEncoder,
            block_config=block_config,
            growth_rate=growth_rate,
            num_init_features=num_init_features,
            name=name,
        ),
        out_channels=(3, *_feature_channels(num_init_features, growth_rate, block_config)),
        weights={
            "imagenet": WeightSource(repo_id=f"smp-hub/{name}.imagenet", revision=imagenet, license="BSD-3-Clause")
        },
        family="densenet",
        license="BSD-3-Clause",
        description=f"{name}: DenseNet-BC, dense blocks {list(block_config)}, growth rate {growth_rate}",
    )


ENCODERS: dict[str, EncoderSpec] = {
    "densenet121": _spec("densenet121", (6, 12, 24, 16), 32, 64, "a17c96896a265b61338f66f61d3887b24f61995a"),
    "densenet169": _spec("densenet169", (6, 12, 32, 32), 32, 64, "8facfba9fc72f7750879dac9ac6ceb3ab990de8d"),
    "densenet201": _spec("densenet201", (6, 12, 48, 32), 32, 64, "ed5deb355d71659391d46fae5e7587460fbb5f84"),
    "densenet161": _spec("densenet161", (6, 12, 36, 24), 48, 96, "9afe0fec51ab2a627141769d97d6f83756d78446"),
}
