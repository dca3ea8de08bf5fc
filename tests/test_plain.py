"""The plain U-Net encoder: layer orders, downsampling modes, per-axis strides, and the classic U-Net."""

from __future__ import annotations

import math

import pytest
import torch

import smp3d
from smp3d_encoders.plain import parse_layer_order


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def encoder(**kwargs):
    kwargs.setdefault("base_channels", 4)
    kwargs.setdefault("in_channels", 1)
    return smp3d.get_encoder("plain", **kwargs)


def check_metadata(enc, x):
    features = enc(x)
    assert len(features) == enc.depth + 1
    assert tuple(f.shape[1] for f in features) == enc.out_channels
    for f, reduction in zip(features, enc.reductions, strict=True):
        expected = tuple(math.ceil(n / r) for n, r in zip(x.shape[2:], reduction, strict=True))
        assert tuple(f.shape[2:]) == expected
    return features


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_metadata_equals_features(spatial_dims, depth):
    enc = encoder(depth=depth, spatial_dims=spatial_dims)
    assert enc.out_channels == (1, 4, 8, 16, 32, 64)[: depth + 1]
    assert enc.reductions[1] == (1,) * spatial_dims  # level 1 works at full resolution
    check_metadata(enc, torch.randn(1, 1, *(32,) * spatial_dims))


@pytest.mark.parametrize("downsampling", ["max", "avg", "conv"])
def test_downsampling_modes_and_per_axis_strides(downsampling):
    strides = ((1, 1, 1), (2, 2, 1), (2, 3, 2), 2)
    enc = encoder(depth=4, strides=strides, downsampling=downsampling)
    assert enc.reductions[-1] == (8, 12, 4)
    features = check_metadata(enc, torch.randn(2, 1, 33, 20, 9))
    features[-1].mean().backward()
    pools = [m for m in enc.modules() if isinstance(m, torch.nn.MaxPool3d | torch.nn.AvgPool3d)]
    assert len(pools) == (0 if downsampling == "conv" else 3)


def test_strided_convolutions_refuse_strides_above_three():
    with pytest.raises(ValueError, match="stride"):
        encoder(depth=2, strides=(1, 4), downsampling="conv")
    enc = encoder(depth=2, strides=(1, 4), downsampling="max")  # a pool takes any stride
    assert enc.reductions[-1] == (4, 4, 4)


@pytest.mark.parametrize(
    "order,expected",
    [
        ("crg", ["c", "r", "g"]),
        ("cbr", ["c", "b", "r"]),
        ("gcr", ["g", "c", "r"]),
        ("CIL", ["c", "i", "l"]),
        ("ce", ["c", "e"]),
        ("c", ["c"]),
    ],
)
def test_layer_order_builds_the_units_in_order(order, expected):
    enc = encoder(depth=2, layer_order=order, spatial_dims=2)
    unit = enc.levels[1].block.conv1
    assert list(unit._modules) == expected
    conv = unit.c
    assert (conv.bias is not None) == (not any(ch in "bgi" for ch in order.lower()[order.lower().index("c") + 1 :]))
    if "g" in order:  # before the conv a norm sees the input's channels, after it the output's
        assert unit.g.num_channels == (4 if order.index("g") < order.index("c") else 8)
    check_metadata(enc, torch.randn(2, 1, 16, 16))


@pytest.mark.parametrize(
    "order,message",
    [
        ("crx", r"unknown letter\(s\) \['x'\]; allowed letters: c=convolution, r=ReLU"),
        ("rg", "exactly one 'c'"),
        ("ccr", "exactly one 'c'"),
        ("cbg", "2 normalisation layers"),
        ("crl", "2 activation layers"),
        ("", "non-empty string"),
        (3, "non-empty string"),
    ],
)
def test_bad_layer_order_is_refused(order, message):
    with pytest.raises(ValueError, match=message):
        parse_layer_order(order)
    with pytest.raises(ValueError, match=message):
        encoder(layer_order=order)


def test_group_norm_groups():
    enc = encoder(depth=2, layer_order="gcr", num_groups=4, spatial_dims=2)
    assert enc.levels[0].block.conv1.g.num_groups == 1  # 1 input channel < 4 groups: one group
    assert enc.levels[1].block.conv2.g.num_groups == 4
    with pytest.raises(ValueError, match="not divisible by num_groups=3"):
        encoder(depth=2, layer_order="crg", num_groups=3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"depth": 6}, "must be an int in 1..5, got 6"),
        ({"base_channels": 0}, "base_channels must be a positive int"),
        ({"num_groups": 0}, "num_groups must be a positive int"),
        ({"downsampling": "lanczos"}, "downsampling must be one of"),
        ({"max_channels": 0}, "max_channels must be None or a positive int"),
        ({"conv_bias": "yes"}, "conv_bias must be None"),
        ({"depth": 2, "kernel_sizes": (3, 4)}, "odd positive ints"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        encoder(**kwargs)


def _classic_encoder_parameters(in_channels, widths, kernel_volume):
    """Hand count for layer_order "crg": bias-free convs, each followed by a GroupNorm (weight and bias)."""
    total, channels = 0, in_channels
    for width in widths:
        total += channels * width * kernel_volume + 2 * width
        total += width * width * kernel_volume + 2 * width
        channels = width
    return total


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_classic_unet(spatial_dims):
    model = smp3d.Unet(
        encoder_name="plain",
        encoder_depth=4,
        decoder_channels=(256, 128, 64, 32),
        base_channels=32,
        layer_order="crg",
        decoder_interpolation="transposed",
        in_channels=1,
        classes=2,
        spatial_dims=spatial_dims,
    )
    assert model.encoder.out_channels == (1, 32, 64, 128, 256)
    encoder_parameters = sum(p.numel() for p in model.encoder.parameters())
    assert encoder_parameters == _classic_encoder_parameters(1, (32, 64, 128, 256), 3**spatial_dims)
    x = torch.randn(1, 1, *(16,) * spatial_dims)
    y = model(x)
    assert y.shape == (1, 2, *(16,) * spatial_dims)
    y.mean().backward()


def test_meta_construction_and_dilation():
    with torch.device("meta"):
        enc = smp3d.get_encoder("plain", in_channels=1, depth=5, base_channels=64)
    assert enc.out_channels == (1, 64, 128, 256, 512, 1024)
    assert sum(p.numel() for p in enc.parameters()) > 0
    small = encoder(depth=4)
    small.make_dilated(4)
    assert small.reductions[-1] == (4, 4, 4)
    check_metadata(small, torch.randn(1, 1, 16, 16, 16))


def test_any_input_channels_and_deeplab():
    enc = encoder(depth=3, in_channels=5, spatial_dims=2)
    assert enc.levels[0].block.conv1.c.in_channels == 5
    model = smp3d.DeepLabV3Plus(encoder_name="plain", in_channels=2, classes=3, base_channels=4, encoder_depth=5)
    assert model(torch.randn(2, 2, 32, 32, 32)).shape == (2, 3, 32, 32, 32)
