"""VGG encoders: what the registry-generated family tests do not cover."""

from __future__ import annotations

import math

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn as nn

import smp3d


def build(name: str, device: str = "cpu", **kwargs) -> torch.nn.Module:
    with torch.device(device):
        return smp3d.get_encoder(name, **kwargs)


def smp_twin(factory, state: dict[str, torch.Tensor], strict: bool = True):
    """smp's model built on ``meta`` (skips its slow random init), then given our weights.

    Returns the model and the load result (``None`` from smp's encoders); shapes must match key for
    key (loading raises otherwise).
    """
    with torch.device("meta"):
        reference = factory()
    reference.to_empty(device="cpu")
    return reference.eval(), reference.load_state_dict(state, strict=strict)


@pytest.mark.parametrize("name", ["vgg13_bn"])
def test_2d_features_equal_smp_with_batch_norm(name):
    ours = smp3d.get_encoder(name, spatial_dims=2).eval()
    with torch.no_grad():  # non-trivial running statistics, so eval-mode batch norm is exercised
        for m in ours.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    reference, _ = smp_twin(lambda: smp.encoders.get_encoder(name, weights=None), ours.state_dict())
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert got[0] is x
    for a, b in zip(expected[1:], got[1:], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("depth", [1, 4])
def test_2d_unet_equals_smp_at_shallow_depth(depth):
    """smp adds the center block to VGG at every depth, and so do we; smp also keeps the unused deep
    convs (never run), we don't build them, so those are the only keys of smp's that we lack."""
    kwargs = dict(encoder_depth=depth, decoder_channels=(64, 32, 16, 8, 4)[:depth], classes=2)
    ours = smp3d.Unet("vgg11", spatial_dims=2, **kwargs).eval()
    assert "decoder.center.0.0.weight" in ours.state_dict()
    reference, result = smp_twin(
        lambda: smp.Unet("vgg11", encoder_weights=None, **kwargs), ours.state_dict(), strict=False
    )
    assert not result.unexpected_keys
    deepest_used = max(int(k.split(".")[2]) for k in ours.state_dict() if k.startswith("encoder."))
    assert all(k.startswith("encoder.features.") and int(k.split(".")[2]) > deepest_used for k in result.missing_keys)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["vgg11", "vgg19_bn"])
def test_shallow_encoder_is_a_prefix_of_the_deep_one(name):
    deep = list(build(name, "meta").state_dict())
    previous = 0
    for depth in range(1, 6):
        encoder = build(name, "meta", depth=depth)
        keys = list(encoder.state_dict())
        # Depth 5 adds only the last (parameter-free) pool.
        assert keys == deep[: len(keys)] and (len(keys) > previous or depth == 5)
        previous = len(keys)
        pools = [m for m in encoder.features if isinstance(m, nn.MaxPool3d)]
        assert len(pools) == depth  # no unused stage is built


@pytest.mark.parametrize("spatial_dims", [2, 3], ids=["2d", "3d"])
def test_stride_one_pools_keep_their_index(spatial_dims):
    default = build("vgg11_bn", "meta", spatial_dims=spatial_dims)
    flat = build("vgg11_bn", "meta", spatial_dims=spatial_dims, strides=(1, 2, 1, 2, 1))
    assert [type(m) for m in flat.features] == [type(m) for m in default.features]
    assert {k: v.shape for k, v in flat.state_dict().items()} == {k: v.shape for k, v in default.state_dict().items()}


def test_stride_one_pools_are_identities():
    encoder = build("vgg11", spatial_dims=2, depth=5, strides=(1, 1, 2, 1, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        features = encoder(x)
    assert [tuple(f.shape[2:]) for f in features] == [(8, 8)] * 3 + [(4, 4)] * 3
    # The last stage is a lone pool of stride 1: its output is the previous feature, untouched.
    torch.testing.assert_close(features[5], features[4], rtol=0, atol=0)


def test_per_axis_pool_leaves_unstrided_axis_alone():
    encoder = build("vgg11", "meta", spatial_dims=3, in_channels=1, depth=5, strides=((2, 2, 1),) * 5)
    pool = encoder.features[-1]
    assert pool.kernel_size == (2, 2, 1) and pool.stride == (2, 2, 1)
    features = encoder(torch.empty(1, 1, 32, 32, 3, device="meta"))
    assert [tuple(f.shape[2:]) for f in features] == [(32 // 2**i, 32 // 2**i, 3) for i in range(6)]


@pytest.mark.parametrize("strides", [(2, 2, 3, 2, 2), (2, 2, 2, 2, (1, 1, 4))], ids=["stride-3", "per-axis-stride-4"])
def test_strides_above_two_are_refused_naming_the_encoder(strides):
    with pytest.raises(ValueError, match=r"'vgg16_bn'.*at most 2"):
        build("vgg16_bn", "meta", strides=strides)


def test_odd_sizes_round_up():
    encoder = build("vgg11", "meta", in_channels=1, depth=5)
    size = (33, 17, 5)
    features = encoder(torch.empty(1, 1, *size, device="meta"))
    for feature, reduction in zip(features, encoder.reductions, strict=True):
        assert tuple(feature.shape[2:]) == tuple(math.ceil(s / r) for s, r in zip(size, reduction, strict=True))


def test_2d_unet_runs_on_odd_sizes():
    model = smp3d.Unet("vgg11", spatial_dims=2, encoder_depth=3, decoder_channels=(32, 16, 8), classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 35, 21)).shape == (1, 2, 35, 21)


def test_initialization_like_torchvision():
    encoder = build("vgg11_bn", spatial_dims=3, depth=2)
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv3d)]
    norms = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm3d)]
    assert convs and len(norms) == len(convs)
    for m in convs:
        assert torch.count_nonzero(m.bias) == 0
        fan_out = m.out_channels * math.prod(m.kernel_size)
        assert m.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
    for m in norms:
        assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
