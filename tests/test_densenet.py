"""DenseNet encoders: family-specific checks (the generic ones live in test_encoder_families.py)."""

from __future__ import annotations

import math

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn as nn

import smp3d

DENSENETS = ["densenet121", "densenet169", "densenet201", "densenet161"]


def build(name: str, device: str = "cpu", **kwargs) -> nn.Module:
    with torch.device(device):
        return smp3d.get_encoder(name, **kwargs)


@pytest.mark.parametrize("name", DENSENETS)
def test_channels_equal_smp(name):
    """smp's feature taps: stem, transitions' pre-conv activations, norm5."""
    with torch.device("meta"):
        reference = smp.encoders.get_encoder(name, weights=None)
    spec = smp3d.get_encoder_spec(name)
    assert spec.out_channels == tuple(reference.out_channels)
    assert build(name, "meta").out_channels == spec.out_channels


@pytest.mark.parametrize(
    ("name", "size", "train"),
    [("densenet161", (37, 45), False), ("densenet121", (64, 64), True)],
    ids=["densenet161-odd-eval", "densenet121-train"],
)
def test_2d_features_equal_smp(name, size, train):
    """The widest member (growth rate 48) at an odd size; batch statistics and running stats in training."""
    torch.manual_seed(0)
    reference = smp.encoders.get_encoder(name, weights=None).train(train)
    ours = smp3d.get_encoder(name, spatial_dims=2).train(train)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert len(got) == len(expected) == 6
    for a, b in zip(expected[1:], got[1:], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    if train:
        torch.testing.assert_close(ours.state_dict(), reference.state_dict(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_depth_builds_only_used_stages(depth):
    full = build("densenet121", "meta", spatial_dims=2).state_dict()
    encoder = build("densenet121", "meta", spatial_dims=2, depth=depth)
    keys = list(encoder.state_dict())
    assert keys == [k for k in full if k in set(keys)]  # a subset of the depth-5 keys, same order
    children = list(encoder.features)
    expected = ["conv0", "norm0", "relu0"]
    for block in range(1, depth):
        expected += (["pool0"] if block == 1 else []) + [f"denseblock{block}"]
        expected.append(f"transition{block}" if block < 4 else "norm5")
    assert children == expected
    if 2 <= depth <= 4:  # the last built transition keeps only norm/relu: its conv would go unused
        last = encoder.features[f"transition{depth - 1}"]
        assert not hasattr(last, "conv") and not hasattr(last, "pool")


def test_shallow_3d_encoder_trains_every_parameter():
    encoder = build("densenet121", in_channels=2, depth=3)
    features = encoder(torch.randn(2, 2, 16, 16, 16))
    assert [tuple(f.shape[1:]) for f in features] == [(2, 16, 16, 16), (64, 8, 8, 8), (256, 4, 4, 4), (512, 2, 2, 2)]
    sum(f.mean() for f in features[1:]).backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_memory_efficient_matches_default_in_3d():
    torch.manual_seed(0)
    default = build("densenet121", depth=2, in_channels=1)
    efficient = build("densenet121", depth=2, in_channels=1, memory_efficient=True)
    efficient.load_state_dict(default.state_dict())
    x = torch.randn(2, 1, 16, 16, 8)
    outs = []
    for encoder in (default, efficient):
        features = encoder(x)
        sum(f.square().mean() for f in features[1:]).backward()
        outs.append((features[-1].detach(), [p.grad for p in encoder.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0])
    for g_efficient, g_default in zip(outs[1][1], outs[0][1], strict=True):
        torch.testing.assert_close(g_efficient, g_default, rtol=1e-4, atol=1e-5)


def test_pools_follow_per_axis_strides():
    strides = ((2, 2, 1), (2, 2, 1), (1, 2, 2), 1, 2)
    encoder = build("densenet121", "meta", strides=strides)
    f = encoder.features
    assert f.conv0.stride == (2, 2, 1)
    assert (f.pool0.kernel_size, f.pool0.stride, f.pool0.padding) == ((3, 3, 1), (2, 2, 1), (1, 1, 0))
    assert (f.transition1.pool.kernel_size, f.transition1.pool.stride) == ((1, 2, 2), (1, 2, 2))
    assert isinstance(f.transition2.pool, nn.Identity)  # stride 1 everywhere: nothing to pool
    assert encoder.reductions[-1] == (8, 16, 4)


@pytest.mark.parametrize(
    "strides",
    [None, ((2, 2, 1), (2, 2, 1), 2, (2, 1, 2), (1, 2, 2))],
    ids=["default", "anisotropic"],
)
def test_odd_sizes_follow_documented_rounding(strides):
    """conv0 and pool0 round up, the transitions' average pools round down (torchvision's)."""
    encoder = build("densenet121", "meta", strides=strides).eval()
    size = (67, 45, 70)
    features = encoder(torch.empty(1, 3, *size, device="meta"))
    expected = [size]
    for stage, stride in enumerate(encoder.strides, start=1):
        rounding = math.ceil if stage <= 2 else math.floor
        expected.append(tuple(rounding(n / s) for n, s in zip(expected[-1], stride, strict=True)))
    assert [tuple(f.shape[2:]) for f in features] == expected


def test_torchvision_initialization_in_3d():
    torch.manual_seed(0)
    encoder = build("densenet121", depth=2)
    conv0 = encoder.features.conv0.weight
    fan_in = conv0[0].numel()  # kaiming_normal_ with fan_in: std = sqrt(2 / fan_in)
    assert conv0.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    norms = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm3d)]
    assert norms and all(bool((m.weight == 1).all()) and bool((m.bias == 0).all()) for m in norms)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strides": (3, 2, 2, 2, 2)}, "'densenet169'.*at most 2"),
        ({"strides": ((2, 2, 4), 2, 2, 2, 2)}, "'densenet169'.*at most 2"),
        ({"strides": (2, 2, 2)}, "3 items but encoder_depth is 5"),
        ({"depth": 6}, "'densenet169'.*1..5"),
    ],
    ids=["stride-3", "per-axis-stride-4", "wrong-length", "depth-6"],
)
def test_unsupported_options_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build("densenet169", "meta", **kwargs)


def test_unknown_keyword_names_the_encoder():
    with pytest.raises(TypeError, match="densenet121"):
        build("densenet121", "meta", growth=12)
