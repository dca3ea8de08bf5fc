"""Dims-agnostic layers: one table, chosen by spatial_dims."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from smp3d import layers


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_factories_follow_spatial_dims(spatial_dims):
    suffix = f"{spatial_dims}d"
    for factory in (
        layers.conv,
        layers.conv_transpose,
        layers.batch_norm,
        layers.instance_norm,
        layers.max_pool,
        layers.avg_pool,
        layers.adaptive_avg_pool,
        layers.adaptive_max_pool,
        layers.dropout,
    ):
        assert factory(spatial_dims).__name__.lower().endswith(suffix), factory


def test_bad_spatial_dims_and_kinds():
    with pytest.raises(ValueError, match="Got 0"):
        layers.conv(0)
    with pytest.raises(ValueError, match="Got True"):
        layers.conv(True)
    with pytest.raises(ValueError, match="Unknown layer kind 'convolution'"):
        layers.layer_type("convolution", 2)


def test_as_tuple():
    assert layers.as_tuple(2, 3) == (2, 2, 2)
    assert layers.as_tuple((1, 2), 2) == (1, 2)
    with pytest.raises(ValueError, match=r"stride must be an int or a tuple of 3 ints .* got \(1, 2\)"):
        layers.as_tuple((1, 2), 3, "stride")


@pytest.mark.parametrize(
    ("mode", "dims", "expected"),
    [
        ("bilinear", 3, "trilinear"),
        ("trilinear", 2, "bilinear"),
        ("linear", 3, "trilinear"),
        ("nearest", 3, "nearest"),
        ("bicubic", 2, "bicubic"),
        ("area", 1, "area"),
    ],
)
def test_interpolation_modes(mode, dims, expected):
    assert layers.interpolation_mode(mode, dims) == expected


def test_channel_layer_norm_normalizes_channels():
    x = torch.randn(2, 8, 4, 5, 3)
    norm = layers.create_norm("layernorm", 8, 3)
    expected = nn.functional.layer_norm(x.movedim(1, -1), (8,)).movedim(-1, 1)
    torch.testing.assert_close(norm(x), expected)
    assert set(norm.state_dict()) == {"weight", "bias"}


def test_create_norm_variants():
    assert isinstance(layers.create_norm(True, 4, 3), nn.BatchNorm3d)
    assert isinstance(layers.create_norm(False, 4, 3), nn.Identity)
    assert isinstance(layers.create_norm("instancenorm", 4, 2), nn.InstanceNorm2d)
    bn = layers.create_norm({"type": "batchnorm", "momentum": 0.5}, 4, 3)
    assert bn.momentum == 0.5
    with pytest.raises(ValueError, match="Unknown normalization"):
        layers.create_norm({"momentum": 0.5}, 4, 3)


def test_conv_norm_act_layout():
    block = layers.ConvNormAct(4, 8, use_norm="batchnorm", spatial_dims=3)
    assert [type(m) for m in block] == [layers.Conv3d, nn.BatchNorm3d, nn.ReLU] and block[0].bias is None
    assert isinstance(block[0], nn.Conv3d)  # torch's layer, with a faster CPU forward
    plain = layers.ConvNormAct(4, 8, use_norm="identity", spatial_dims=2)
    assert plain[0].bias is not None
    assert block(torch.randn(2, 4, 6, 6, 6)).shape == (2, 8, 6, 6, 6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_scse_matches_definition(spatial_dims):
    scse = layers.SCSE(32, spatial_dims=spatial_dims)
    x = torch.randn(2, 32, *(6,) * spatial_dims)
    torch.testing.assert_close(scse(x), x * scse.cSE(x) + x * scse.sSE(x))
    with pytest.raises(ValueError, match="needs at least 16 channels"):
        layers.SCSE(8)


def test_activations():
    x = torch.randn(2, 3, 4, 4, 4)
    torch.testing.assert_close(layers.create_activation("softmax")(x).sum(1), torch.ones(2, 4, 4, 4))
    assert layers.create_activation("argmax2d")(x).shape == (2, 4, 4, 4)
    assert isinstance(layers.create_activation(None), nn.Identity)
    assert isinstance(layers.create_activation(nn.Tanh), nn.Tanh)
    with pytest.raises(ValueError, match="Unknown activation 'gelu2'"):
        layers.create_activation("gelu2")
