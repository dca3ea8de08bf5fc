"""Plain ViT encoders (``tu-vit_*``, DeiT, DINOv2, EVA ...) in 2D and N-D, and the single-scale metadata."""

from __future__ import annotations

import pytest
import torch.nn as nn

import smp3d
from smp3d.base.assembly import build_encoder
from smp3d.encoders import Encoder


class _OneScale(Encoder):
    """A toy single-scale encoder: one strided conv, then ``depth - 1`` features at the same reduction."""

    single_scale = True

    def __init__(self, in_channels=3, depth=3, spatial_dims=3, strides=None):
        super().__init__(
            (in_channels, *(8,) * depth), ((4,) * spatial_dims, *((1,) * spatial_dims,) * (depth - 1)), spatial_dims
        )
        conv = (nn.Conv2d, nn.Conv3d)[spatial_dims - 2]
        self.stem = conv(in_channels, 8, 4, stride=4)

    def forward(self, x):
        y = self.stem(x)
        return [x] + [y] * self.depth


def test_pyramid_architectures_refuse_single_scale_encoders(fresh_registry):
    smp3d.register_encoder("toy_one_scale", _OneScale)
    with pytest.raises(ValueError, match=r"single-scale.*\(4, 4, 4\).*smp3d\.DPT or smp3d\.UNETR"):
        smp3d.Unet("toy_one_scale", encoder_depth=3, decoder_channels=(32, 16, 8))
    encoder = build_encoder(
        "DPT",
        "toy_one_scale",
        in_channels=3,
        depth=3,
        weights=None,
        spatial_dims=3,
        strides=None,
        single_scale_ok=True,
    )
    assert encoder.reductions[1:] == ((4, 4, 4),) * 3
