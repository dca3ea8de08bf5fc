"""VGG encoders (Simonyan and Zisserman, 2015) for 2D and 3D, with and without batch norm.

The module layout is torchvision's ``VGG.features`` without the classifier: one flat
``nn.Sequential`` of ``conv[, bn], relu`` triples (pairs without batch norm) and a max pool
after each of the five conv blocks, so 2D checkpoints of torchvision and
segmentation_models_pytorch load key for key (``features.<index>.weight``); in 3D every kernel
gains a trailing depth axis. Every module keeps its torchvision index, pools included, even
when a stride of 1 makes a pool a no-op along some or all axes.

Features (smp's features 1..5): stage 1 is conv block 1, pool 1 and conv block 2; stages 2-4
are pool ``i`` then conv block ``i + 1``; stage 5 is the last pool alone, so the deepest
feature is a bare pooling output (``last_feature_pooled``: U-Net adds a center block on it).

Strides: one per stage and per axis, 1 or 2; stage ``i``'s stride is that of pool ``i``.
Pools map a size ``n`` to ``ceil(n / stride)`` (convolutions keep sizes), so odd sizes keep
their border row instead of dropping it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn

from smp3d.encoders import Encoder, EncoderSpec, WeightSource, resolve_strides
from smp3d.layers import batch_norm, check_spatial_dims, conv, strided_pool

__all__ = ["CONFIGS", "ENCODERS", "VGGEncoder"]

# Output widths of the convolutions of each of the five blocks (torchvision's configs A, B, D, E).
CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def stage_channels(blocks: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Channels of features 1..5: the last widths of blocks 2..5, then block 5's again (after the last pool)."""
    return (*(block[-1] for block in blocks[1:]), blocks[-1][-1])


class VGGEncoder(Encoder):
    """VGG feature pyramid: ``depth + 1`` features, item 0 the input ``(B, C, *spatial)``.

    Only the modules that ``depth`` uses are built: conv blocks ``1..min(depth + 1, 5)`` and pools
    ``1..depth``; their indices in ``features`` are those of the full network, so a shallow
    encoder's state dict is a prefix of the deep one's.
    """

    _is_torch_scriptable = True

    # True at every depth, as smp adds U-Net's center block to VGG whatever the depth (strict 2D parity).
    last_feature_pooled = True

    def __init__(
        self,
        blocks: Sequence[Sequence[int]],
        batch_norm_layers: bool = False,
        in_channels: int = 3,
        depth: int = 5,
        spatial_dims: int = 3,
        strides: Sequence[int | Sequence[int]] | None = None,
        name: str = "vgg",
    ):
        spatial_dims = check_spatial_dims(spatial_dims)
        if len(blocks) != 5:
            raise ValueError(f"{name}: a VGG config has 5 conv blocks, got {len(blocks)}.")
        if not 1 <= depth <= 5:
            raise ValueError(f"{name} supports encoder_depth 1..5, got {depth}.")
        # A pool of kernel 2 cannot stride further without skipping inputs.
        stage_strides = resolve_strides(strides, depth, spatial_dims, max_stride=2, name=name)
        super().__init__((in_channels, *stage_channels(blocks)[:depth]), stage_strides, spatial_dims)

        conv_nd, norm = conv(spatial_dims), batch_norm(spatial_dims)
        layers: list[nn.Module] = []
        stage_ends: list[int] = []  # index of the module whose output is feature i + 1
        channels = in_channels
        for block_index, widths in enumerate(blocks[: depth + 1]):
            if block_index > 0:
                # The pool opening stage `block_index`; a stage's feature is taken before the next pool.
                if block_index > 1:
                    stage_ends.append(len(layers) - 1)
                # ceil_mode: odd sizes round up (equal to torchvision's floor for even sizes).
                pool = strided_pool("max", 2, stage_strides[block_index - 1], spatial_dims=spatial_dims, ceil_mode=True)
                layers.append(pool)
            for width in widths:
                layers.append(conv_nd(channels, width, 3, padding=1))
                if batch_norm_layers:
                    layers.append(norm(width))
                layers.append(nn.ReLU(inplace=True))
                channels = width
        stage_ends.append(len(layers) - 1)
        if depth == 5:
            layers.append(strided_pool("max", 2, stage_strides[4], spatial_dims=spatial_dims, ceil_mode=True))
            stage_ends.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)
        self._stage_ends = tuple(stage_ends)

        # torchvision's VGG initialization.
        for m in self.modules():
            if isinstance(m, conv_nd):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, norm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """The modules of ``features`` after feature ``stage - 1`` up to feature ``stage`` (pool ``stage`` first,
        except stage 1, which opens with conv block 1)."""
        start = self._stage_ends[stage - 2] + 1 if stage > 1 else 0
        return list(self.features[start : self._stage_ends[stage - 1] + 1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        for index, module in enumerate(self.features):
            x = module(x)
            # A feature is a ReLU output followed by a pool (out of place) or the final output, so the
            # in-place ReLUs never overwrite a returned tensor.
            if index in self._stage_ends:
                features.append(x)
        return features


# Pretrained 2D sources: smp's Hub releases of torchvision's ImageNet weights (BSD-3-Clause).
_REVISIONS = {
    "vgg11": "ad8b90e1051c38fdbf399cf5016886a1be357390",
    "vgg11_bn": "59757f9215032c9f092977092d57d26a9df7fd9c",
    "vgg13": "1b70ff2580f101a8007a48b51e2b5d1e5925dc42",
    "vgg13_bn": "9be454515193af6612261b7614fe90607e27b143",
    "vgg16": "49d74b799006ee252b86e25acd6f1fd8ac9a99c1",
    "vgg16_bn": "2c186d02fb519e93219a99a1c2af6295aef0bf0d",
    "vgg19": "2853d00d7bca364dbb98be4d6afa347e5aeec1f6",
    "vgg19_bn": "f09a924cb0d201ea6f61601df9559141382271d7",
}


def _spec(layers: int, with_batch_norm: bool) -> EncoderSpec:
    name = f"vgg{layers}" + ("_bn" if with_batch_norm else "")
    blocks = CONFIGS[layers]
    return EncoderSpec(
        build=partial(VGGEncoder, blocks=blocks, batch_norm_layers=with_batch_norm, name=name),
        out_channels=(3, *stage_channels(blocks)),
        weights={
            "imagenet": WeightSource(
                repo_id=f"smp-hub/{name}.imagenet", revision=_REVISIONS[name], license="BSD-3-Clause"
            )
        },
        family="vgg",
        description=f"{name}: VGG-{layers} conv blocks {[len(b) for b in blocks]}"
        + (" with batch norm" if with_batch_norm else ""),
    )


ENCODERS: dict[str, EncoderSpec] = {
    f"vgg{layers}{suffix}": _spec(layers, bool(suffix)) for layers in CONFIGS for suffix in ("", "_bn")
}
