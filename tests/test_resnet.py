"""ResNet/ResNeXt encoders: smp 0.6.0 layout in 2D, inflated layout in 3D, metadata, strides."""

from __future__ import annotations

import math

import pytest
import segmentation_models_pytorch as smp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_registry import RESNETS

import smp3d


def build(name: str, device: str = "cpu", **kwargs) -> torch.nn.Module:
    with torch.device(device):
        return smp3d.get_encoder(name, **kwargs)


@pytest.mark.parametrize("name", RESNETS)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_metadata_matches_features(name, spatial_dims):
    encoder = build(name, "meta", spatial_dims=spatial_dims)
    size = (64, 96, 32)[:spatial_dims]
    features = encoder(torch.empty(1, 3, *size, device="meta"))
    assert len(features) == len(encoder.out_channels) == len(encoder.reductions) == 6
    assert encoder.spatial_dims == spatial_dims
    assert encoder.out_channels == smp3d.get_encoder_spec(name).out_channels
    for feature, channels, reduction in zip(features, encoder.out_channels, encoder.reductions, strict=True):
        assert feature.shape[1] == channels
        assert tuple(feature.shape[2:]) == tuple(s // r for s, r in zip(size, reduction, strict=True))


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d"])
def test_2d_features_equal_smp(name):
    reference = smp.encoders.get_encoder(name, weights=None).eval()
    ours = smp3d.get_encoder(name, spatial_dims=2).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(reference(x), ours(x), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_depth_builds_only_used_stages_and_trains(depth):
    encoder = smp3d.get_encoder("resnet18", in_channels=2, depth=depth, spatial_dims=3)
    layers = [n for n, _ in encoder.named_children() if n.startswith("layer")]
    assert layers == [f"layer{i}" for i in range(1, depth)]
    features = encoder(torch.randn(2, 2, 32, 32, 32))
    assert len(features) == depth + 1
    sum(f.float().mean() for f in features[1:]).backward()
    assert all(p.grad is not None for p in encoder.parameters())


@pytest.mark.parametrize("in_channels", [1, 2, 4, 7])
def test_any_in_channels(in_channels):
    encoder = smp3d.get_encoder("resnet18", in_channels=in_channels, depth=2)
    assert encoder.out_channels[0] == in_channels
    assert encoder.conv1.weight.shape == (64, in_channels, 7, 7, 7)
    assert encoder(torch.randn(1, in_channels, 16, 16, 16))[-1].shape == (1, 64, 4, 4, 4)


def test_resnext_convs_stay_grouped_in_3d():
    encoder = build("resnext50_32x4d", "meta", spatial_dims=3)
    block = encoder.layer1[0]
    assert block.conv2.groups == 32 and block.conv2.weight.shape == (128, 4, 3, 3, 3)


def test_issue_example_large_per_axis_strides():
    strides = ((2, 2, 2), (4, 2, 1), (2, 2, 2), (2, 2, 1), (1, 2, 3))
    encoder = smp3d.get_encoder("resnet34", in_channels=1, strides=strides)
    assert encoder.reductions == ((1, 1, 1), (2, 2, 2), (8, 4, 2), (16, 8, 4), (32, 16, 4), (32, 32, 12))
    with torch.no_grad():
        features = encoder(torch.randn(1, 1, 224, 128, 12))
    assert [tuple(f.shape[2:]) for f in features] == [
        (224, 128, 12),
        (112, 64, 6),
        (28, 32, 6),
        (14, 16, 3),
        (7, 8, 3),
        (7, 4, 1),
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    spatial_dims=st.sampled_from([2, 3]),
    depth=st.integers(1, 5),
    data=st.data(),
)
def test_feature_sizes_are_ceil_of_size_over_reduction(spatial_dims, depth, data):
    """Any positive per-axis strides, any size: feature i has ceil(size / reductions[i]) per axis."""
    strides = tuple(tuple(data.draw(st.integers(1, 4)) for _ in range(spatial_dims)) for _ in range(depth))
    size = tuple(data.draw(st.integers(1, 40)) for _ in range(spatial_dims))
    encoder = build("resnet18", "meta", depth=depth, spatial_dims=spatial_dims, strides=strides).eval()
    features = encoder(torch.empty(1, 3, *size, device="meta"))
    for feature, reduction in zip(features, encoder.reductions, strict=True):
        assert tuple(feature.shape[2:]) == tuple(math.ceil(s / r) for s, r in zip(size, reduction, strict=True))


def test_real_compute_with_anisotropic_strides_and_odd_sizes():
    strides = ((2, 2, 1), (2, 2, 1), (2, 2, 2), (3, 2, 2), (1, 1, 2))
    encoder = smp3d.get_encoder("resnet18", strides=strides)
    features = encoder(torch.randn(1, 3, 37, 30, 9))
    assert [tuple(f.shape[2:]) for f in features] == [
        (37, 30, 9),
        (19, 15, 9),
        (10, 8, 9),
        (5, 4, 5),
        (2, 2, 3),
        (2, 2, 2),
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(depth=0), "encoder_depth of 'resnet18' must be an int in 1..5, got 0"),
        (dict(depth=6), "encoder_depth of 'resnet18' must be an int in 1..5, got 6"),
        (dict(depth=2.0), "must be an int in 1..5"),
        (dict(strides=(2, 2, 2)), "`strides` has 3 items but encoder_depth is 5"),
        (dict(strides=2), "`strides` must be a sequence of per-stage strides"),
        (dict(strides=((2, 2),) * 5), r"item 1 is \(2, 2\).*tuple of 3 positive ints"),
        (dict(strides=(2, 2, 0, 2, 2)), "item 3 is 0: each stride must be a positive int"),
        (dict(strides=(2, 2, (2, -1, 2), 2, 2)), "item 3 is \\(2, -1, 2\\)"),
        (dict(in_channels=0), "in_channels must be a positive int, got 0"),
        (dict(spatial_dims=4), "spatial_dims must be 2 .* or 3 .* Got 4"),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        smp3d.get_encoder("resnet18", **kwargs)
