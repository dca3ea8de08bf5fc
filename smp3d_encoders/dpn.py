"""Dual Path Network encoders (Chen et al., 2017) for 2D and 3D.

The module layout is pretrainedmodels' DPN without the classifier: ``features.conv1_1`` (stem:
``conv``, ``bn``, ``act``, ``pool``), then ``features.conv{stage}_{i}`` dual path blocks and
``features.conv5_bn_ac``, so 2D checkpoints of segmentation_models_pytorch load key for key; in
3D every kernel gains a trailing depth axis and the 3x3 convolutions stay grouped.

A dual path block carries two tensors: a residual path (summed, ResNeXt-like) and a dense path
(concatenated, DenseNet-like). Features follow smp: feature 1 is the stem activation before its
max pool; features 2-4 are ``ReLU(concat(residual, dense))`` of the stage's last block (no norm);
feature 5 is ``conv5_bn_ac`` (norm and ReLU of the concatenation).

Strides: one per stage and per axis, 1 or 2. Stage 1 is the stem convolution, stage 2 the stem
max pool (``conv2_1`` never strides), stages 3-5 the first block of ``conv3``..``conv5``, through
its grouped 3x3 convolution and its 1x1 projection. Every strided layer maps a size ``n`` to
``ceil(n / stride)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from smp3d.encoders import Encoder, EncoderSpec, WeightSource, check_depth, resolve_strides
from smp3d.layers import batch_norm, check_spatial_dims, conv, strided_pool

__all__ = ["ENCODERS", "BnActConv", "CatBnAct", "DPNConfig", "DPNEncoder", "DualPathBlock", "InputBlock"]

# Every norm of the original (MXNet-trained) networks uses this epsilon; the weights depend on it.
_EPS = 1e-3

DualPath = tuple[torch.Tensor, torch.Tensor]


def _cat(x: torch.Tensor | DualPath) -> torch.Tensor:
    return torch.cat(x, dim=1) if isinstance(x, tuple) else x


class CatBnAct(nn.Module):
    """Concatenate a dual path (if given one), then norm and ReLU: ``(B, C, *spatial)``."""

    def __init__(self, channels: int, spatial_dims: int = 3):
        super().__init__()
        self.bn = batch_norm(spatial_dims)(channels, eps=_EPS)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor | DualPath) -> torch.Tensor:
        return self.act(self.bn(_cat(x)))


class BnActConv(nn.Module):
    """Pre-activation unit: norm -> ReLU -> convolution (no bias)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int | tuple[int, ...] = 1,
        padding: int = 0,
        groups: int = 1,
        spatial_dims: int = 3,
    ):
        super().__init__()
        self.bn = batch_norm(spatial_dims)(in_channels, eps=_EPS)
        self.act = nn.ReLU(inplace=True)  # in place on the norm's fresh output
        self.conv = conv(spatial_dims)(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.bn(x)))


class InputBlock(nn.Module):
    """Stem: convolution -> norm -> ReLU; ``pool`` (the next stage's downsampling) is applied by the encoder.

    The pool is built only when ``pool_stride`` is given (encoders of depth >= 2).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: tuple[int, ...],
        pool_stride: tuple[int, ...] | None,
        spatial_dims: int = 3,
    ):
        super().__init__()
        self.conv = conv(spatial_dims)(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.bn = batch_norm(spatial_dims)(out_channels, eps=_EPS)
        self.act = nn.ReLU(inplace=True)
        if pool_stride is not None:
            self.pool = strided_pool("max", 3, pool_stride, padding=1, spatial_dims=spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *spatial)`` -> ``(B, out_channels, *ceil(spatial / stride))``, before the pool."""
        return self.act(self.bn(self.conv(x)))


class DualPathBlock(nn.Module):
    """Bottleneck with a grouped 3x3 convolution whose output feeds both paths.

    ``block_type``: ``"normal"`` (identity shortcuts), ``"proj"`` (1x1 projection ``c1x1_w_s1``
    of the input into both paths) or ``"down"`` (projection ``c1x1_w_s2`` carrying ``stride``,
    as does the 3x3 convolution). ``b=True`` (DPN-68b) splits the last 1x1 convolution into one
    per path (``c1x1_c1``, ``c1x1_c2``) after a shared norm and ReLU (``c1x1_c``).

    Input: a tensor or a dual path ``(residual, dense)``; output: ``(residual, dense)`` with
    ``residual_channels`` and ``dense + dense_increment`` channels.
    """

    def __init__(
        self,
        in_channels: int,
        bottleneck_channels: int,
        residual_channels: int,
        dense_increment: int,
        groups: int,
        block_type: Literal["normal", "proj", "down"] = "normal",
        stride: int | tuple[int, ...] = 1,
        b: bool = False,
        spatial_dims: int = 3,
    ):
        super().__init__()
        if block_type not in ("normal", "proj", "down"):
            raise ValueError(f"block_type must be 'normal', 'proj' or 'down', got {block_type!r}.")
        if block_type != "down" and stride not in (1, (1,) * spatial_dims):
            raise ValueError(f"Only a 'down' dual path block takes a stride, got stride={stride!r}.")
        self.residual_channels = residual_channels
        self.b = b
        unit = partial(BnActConv, spatial_dims=spatial_dims)
        # The projection's name depends on the block type only (not on the actual stride), so that
        # checkpoints load whatever per-axis strides an encoder is built with.
        projection_channels = residual_channels + 2 * dense_increment
        self.projection: str | None = None
        if block_type == "proj":
            self.c1x1_w_s1 = unit(in_channels, projection_channels, 1)
            self.projection = "c1x1_w_s1"
        elif block_type == "down":
            self.c1x1_w_s2 = unit(in_channels, projection_channels, 1, stride=stride)
            self.projection = "c1x1_w_s2"
        self.c1x1_a = unit(in_channels, bottleneck_channels, 1)
        self.c3x3_b = unit(bottleneck_channels, bottleneck_channels, 3, stride=stride, padding=1, groups=groups)
        if b:
            conv_nd = conv(spatial_dims)
            self.c1x1_c = CatBnAct(bottleneck_channels, spatial_dims)
            self.c1x1_c1 = conv_nd(bottleneck_channels, residual_channels, 1, bias=False)
            self.c1x1_c2 = conv_nd(bottleneck_channels, dense_increment, 1, bias=False)
        else:
            self.c1x1_c = unit(bottleneck_channels, residual_channels + dense_increment, 1)

    def forward(self, x: torch.Tensor | DualPath) -> DualPath:
        x_in = _cat(x)
        if self.projection is not None:
            shortcut = getattr(self, self.projection)(x_in)
            residual, dense = shortcut[:, : self.residual_channels], shortcut[:, self.residual_channels :]
        else:
            residual, dense = x
        out = self.c3x3_b(self.c1x1_a(x_in))
        if self.b:
            out = self.c1x1_c(out)
            out_residual, out_dense = self.c1x1_c1(out), self.c1x1_c2(out)
        else:
            out = self.c1x1_c(out)
            out_residual, out_dense = out[:, : self.residual_channels], out[:, self.residual_channels :]
        # In place into the block's own output (a fresh conv result or a view of one, which no
        # autograd node saved): one full-size allocation fewer per block.
        out_residual += residual
        return out_residual, torch.cat([dense, out_dense], dim=1)


@dataclass(frozen=True)
class DPNConfig:
    """Hyper-parameters of one DPN (pretrainedmodels' names in comments).

    ``small`` networks (DPN-68) have a 3x3 stem and residual widths 64..512 instead of 256..2048.
    """

    stem_channels: int  # num_init_features
    bottleneck_scale: int  # k_r: bottleneck width of stage 2 (later stages scale with the residual width)
    groups: int
    blocks: tuple[int, int, int, int]  # k_sec
    dense_increments: tuple[int, int, int, int]  # inc_sec
    small: bool = False
    b: bool = False

    def residual_channels(self, stage: int) -> int:
        """Residual-path width of stage 2..5."""
        return (64 if self.small else 256) << (stage - 2)

    def bottleneck_channels(self, stage: int) -> int:
        return self.bottleneck_scale << (stage - 2)

    def stage_channels(self, stage: int) -> int:
        """Channels of a stage's output (both paths): the residual width plus 3 increments for the
        first block's projection and output, and one more for every other block."""
        return self.residual_channels(stage) + (self.blocks[stage - 2] + 2) * self.dense_increments[stage - 2]

    def out_channels(self, in_channels: int = 3) -> tuple[int, ...]:
        return (in_channels, self.stem_channels, *(self.stage_channels(s) for s in range(2, 6)))


class DPNEncoder(Encoder):
    """DPN feature pyramid: ``depth + 1`` features of ``(B, C, *spatial)``, item 0 the input.

    Only the stages that ``depth`` uses are built. Weights keep PyTorch's default initialization,
    as in the original model (the default rules are the same for every ``spatial_dims``).
    """

    _torch_script_refusal = (
        "its dual-path blocks take either a tensor or a (residual, dense) pair and choose their projection by "
        "name at run time, which TorchScript cannot type (smp 0.6 does not script DPN either)"
    )

    def __init__(
        self,
        config: DPNConfig,
        in_channels: int = 3,
        depth: int = 5,
        spatial_dims: int = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
        name: str = "dpn",
    ):
        spatial_dims = check_spatial_dims(spatial_dims)
        check_depth(depth, 5, name)
        stage_strides = resolve_strides(strides, depth, spatial_dims, max_stride=2, name=name)
        super().__init__(config.out_channels(in_channels)[: depth + 1], stage_strides, spatial_dims)

        blocks: dict[str, nn.Module] = {
            "conv1_1": InputBlock(
                in_channels,
                config.stem_channels,
                3 if config.small else 7,
                stage_strides[0],
                stage_strides[1] if depth >= 2 else None,
                spatial_dims,
            )
        }
        self._stage_blocks: list[list[str]] = []
        channels = config.stem_channels
        for stage in range(2, depth + 1):
            increment = config.dense_increments[stage - 2]
            names = []
            for i in range(1, config.blocks[stage - 2] + 1):
                first = i == 1
                names.append(f"conv{stage}_{i}")
                blocks[names[-1]] = DualPathBlock(
                    channels,
                    config.bottleneck_channels(stage),
                    config.residual_channels(stage),
                    increment,
                    config.groups,
                    block_type=("proj" if stage == 2 else "down") if first else "normal",
                    # Stage 2 is downsampled by the stem pool; later stages by their first block.
                    stride=stage_strides[stage - 1] if first and stage > 2 else 1,
                    b=config.b,
                    spatial_dims=spatial_dims,
                )
                channels = config.residual_channels(stage) + (i + 2) * increment
            self._stage_blocks.append(names)
        if depth == 5:
            blocks["conv5_bn_ac"] = CatBnAct(channels, spatial_dims)
        self.features = nn.ModuleDict(blocks)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """Stage 1: the stem's ``conv``/``bn`` (not its pool); stage 2: the stem pool and ``conv2_*``;
        stages 3-5: ``conv{stage}_*`` (and ``conv5_bn_ac`` for stage 5)."""
        stem = self.features["conv1_1"]
        if stage == 1:
            return [stem.conv, stem.bn]
        modules = [stem.pool] if stage == 2 else []
        modules += [self.features[name] for name in self._stage_blocks[stage - 2]]
        if stage == 5:
            modules.append(self.features["conv5_bn_ac"])
        return modules

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, in_channels, *spatial)`` -> ``depth + 1`` features (see the module docs)."""
        features = [x]
        stem = self.features["conv1_1"]
        x = stem(x)
        features.append(x)
        path: torch.Tensor | DualPath = stem.pool(x) if self.depth >= 2 else x
        for stage, names in enumerate(self._stage_blocks, start=2):
            for name in names:
                path = self.features[name](path)
            if stage == 5:
                features.append(self.features["conv5_bn_ac"](path))
            else:
                # The concatenation is a fresh tensor, so the in-place ReLU cannot touch the paths.
                features.append(F.relu(_cat(path), inplace=True))
        return features


# Pretrained 2D sources: smp's Hub releases (keys already in this layout). The weights are
# Ross Wightman's PyTorch ports of the authors' MXNet models, released under Apache-2.0.
_LICENSE = "Apache-2.0"


def _spec(name: str, config: DPNConfig, tag: str, revision: str) -> EncoderSpec:
    # smp's tag "imagenet+5k" (ImageNet-5k pretraining, ImageNet-1k fine-tuning) lives in "<name>.imagenet-5k".
    source = WeightSource(
        repo_id=f"smp-hub/{name}.{tag.replace('+', '-')}",
        revision=revision,
        license=_LICENSE,
        mean=(124 / 255, 117 / 255, 104 / 255),  # the MXNet originals' input normalisation
        std=(1 / (0.0167 * 255),) * 3,
    )
    return EncoderSpec(
        build=partial(DPNEncoder, config=config, name=name),
        out_channels=config.out_channels(),
        weights={tag: source},
        family="dpn",
        license=_LICENSE,
        description=f"{name}: dual path blocks x {list(config.blocks)}, {config.groups} groups"
        + (", separate 1x1 per path (b)" if config.b else ""),
    )


_DPN68 = DPNConfig(10, 128, 32, (3, 4, 12, 3), (16, 32, 32, 64), small=True)

ENCODERS: dict[str, EncoderSpec] = {
    "dpn68": _spec("dpn68", _DPN68, "imagenet", "c209aefdeae6bc93937556629e974b44d4e58535"),
    "dpn68b": _spec(
        "dpn68b",
        DPNConfig(10, 128, 32, (3, 4, 12, 3), (16, 32, 32, 64), small=True, b=True),
        "imagenet+5k",
        "6c6615e77688e390ae0eaa81e26821fbd83cee4b",
    ),
    "dpn92": _spec(
        "dpn92",
        DPNConfig(64, 96, 32, (3, 4, 20, 3), (16, 32, 24, 128)),
        "imagenet+5k",
        "d231f51ce4ad2c84ed5fcaf4ef0cfece6814a526",
    ),
    "dpn98": _spec(
        "dpn98",
        DPNConfig(96, 160, 40, (3, 6, 20, 3), (16, 32, 32, 128)),
        "imagenet",
        "b2836c86216c1ddce980d832f7deaa4ca22babd3",
    ),
    "dpn107": _spec(
        "dpn107",
        DPNConfig(128, 200, 50, (4, 8, 20, 3), (20, 64, 64, 128)),
        "imagenet+5k",
        "dab4cd6b8b79de3db970f2dbff85359a8847db05",
    ),
    "dpn131": _spec(
        "dpn131",
        DPNConfig(128, 160, 40, (4, 8, 28, 3), (16, 32, 32, 128)),
        "imagenet",
        "04bbb9f415ca2bb59f3d8227857967b74698515e",
    ),
}
