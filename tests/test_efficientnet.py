"""EfficientNet: TF 'SAME' padding per axis, smp parity where smp's static padding agrees, drop-connect,
the frozen classifier head, and clear errors. Generic checks live in test_encoder_families.py."""

from __future__ import annotations

import math

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

import smp3d
from smp3d_encoders.efficientnet import _same_conv, same_pad


def build(name: str, device: str = "cpu", **kwargs) -> torch.nn.Module:
    with torch.device(device):
        return smp3d.get_encoder(name, **kwargs)


def smp_pair(name: str, calibrate: torch.Tensor | None = None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """smp's encoder and ours with the same weights. With ``calibrate``, batch-norm statistics are
    set from that batch first: at initialization, eval-mode features shrink ~100x per stage
    (deepest ~1e-12), which would make any absolute tolerance vacuous."""
    reference = smp.encoders.get_encoder(name, weights=None)
    if calibrate is not None:
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 1.0  # running statistics := this batch's
        with torch.no_grad():
            reference.train()(calibrate)
    ours = smp3d.get_encoder(name, spatial_dims=2)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def strided_sizes(n: int, count: int = 5) -> list[int]:
    """Input sizes of the 5 stride-2 layers (stem + one block per stage) for an input of size ``n``."""
    sizes = [n]
    while len(sizes) < count:
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


def matching_size(planned: int, start: int) -> int:
    """The smallest size >= start whose strided layers see sizes of the same parity as smp's plan,
    so that smp's static padding and the run-time rule coincide at every layer."""
    parities = [s % 2 for s in strided_sizes(planned)]
    return next(n for n in range(start, 1000) if [s % 2 for s in strided_sizes(n)] == parities)


@pytest.mark.parametrize(
    ("n", "kernel", "stride"),
    [(8, 3, 2), (9, 3, 2), (8, 5, 2), (7, 5, 2), (1, 5, 2), (6, 3, 1), (5, 5, 1)],
    ids=lambda v: str(v),
)
def test_same_pad_matches_the_tensorflow_rule(n, kernel, stride):
    layer = _same_conv(1, 1, kernel, stride=(stride, 1), spatial_dims=2)
    x = torch.randn(1, 1, n, 4)
    total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
    explicit = F.pad(x, [(kernel - 1) // 2, (kernel - 1) // 2, total // 2, total - total // 2])
    expected = F.conv2d(explicit, layer.weight, stride=(stride, 1))
    got = layer(same_pad(x, layer))
    assert got.shape == (1, 1, math.ceil(n / stride), 4)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnet-b1", "efficientnet-b3"])
def test_2d_features_equal_smp_where_padding_agrees(name):
    planned = smp.encoders.get_encoder(name, weights=None)._global_params.image_size
    size = (matching_size(planned, 40), matching_size(planned, 70))  # non-square
    x = torch.randn(2, 3, *size)
    reference, ours = smp_pair(name, calibrate=x)
    with torch.no_grad():
        expected, got = reference.eval()(x), ours.eval()(x)
    for a, b in zip(expected[1:], got[1:], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_b1_differs_from_smp_only_after_its_odd_planned_layer():
    """smp plans b1's last strided layer for size 15 (symmetric padding); at 64 it sees 4 (padded
    right): features 1-4 equal smp's, feature 5 is shifted by one pixel."""
    x = torch.randn(2, 3, 64, 64)
    reference, ours = smp_pair("efficientnet-b1", calibrate=x)
    with torch.no_grad():
        expected, got = reference.eval()(x), ours.eval()(x)
    for a, b in zip(expected[1:5], got[1:5], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert expected[5].abs().max() > 0.5  # calibrated: a difference would be visible
    assert got[5].shape == expected[5].shape and not torch.allclose(got[5], expected[5], atol=1e-2)


def test_training_mode_with_drop_connect_equals_smp():
    """Same random draws as smp (float32 mask per sample), same per-block rate schedule."""
    reference, ours = smp_pair("efficientnet-b0")
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    expected = reference.train()(x)
    torch.manual_seed(1)
    got = ours.train()(x)
    for a, b in zip(expected[1:], got[1:], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    rates = [block.drop_connect_rate for block in ours._blocks]
    assert rates == pytest.approx([0.2 * i / 16 for i in range(16)])


def test_drop_connect_rate_is_configurable_and_checked():
    encoder = build("efficientnet-b0", "meta", drop_connect_rate=0.0)
    assert all(block.drop_connect_rate == 0 for block in encoder._blocks)
    with pytest.raises(ValueError, match="drop_connect_rate"):
        build("efficientnet-b0", "meta", drop_connect_rate=1.0)


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_shallow_encoders_keep_the_full_drop_connect_schedule(depth):
    full = build("efficientnet-b0", "meta")
    shallow = build("efficientnet-b0", "meta", depth=depth)
    blocks = {1: 0, 3: 5, 5: 16}[depth]  # features 2-5 end after blocks 2, 4, 8, 15
    assert [b.drop_connect_rate for b in shallow._blocks] == [b.drop_connect_rate for b in full._blocks][:blocks]


def test_head_is_kept_frozen_at_depth_5_only():
    """smp's unused classifier expansion is kept for strict checkpoint loading but frozen, so every
    trainable parameter gets a gradient (DistributedDataParallel needs that)."""
    encoder = build("efficientnet-b0", in_channels=1, spatial_dims=3).train()
    assert not any(p.requires_grad for p in [*encoder._conv_head.parameters(), *encoder._bn1.parameters()])
    features = encoder(torch.randn(2, 1, 32, 32, 32))
    sum(f.float().mean() for f in features[1:]).backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)
    assert not hasattr(build("efficientnet-b0", "meta", depth=4), "_conv_head")


def test_depthwise_convolutions_stay_depthwise_in_3d():
    block = build("efficientnet-b2", "meta")._blocks[5]  # first k5 block
    conv = block._depthwise_conv
    assert conv.groups == conv.in_channels == conv.out_channels
    assert tuple(conv.weight.shape) == (conv.out_channels, 1, 5, 5, 5)


@pytest.mark.parametrize(
    ("strides", "size"),
    [(None, (33, 47, 20)), (((2, 2, 1), (2, 2, 1), 2, (2, 1, 2), 2), (31, 64, 9))],
    ids=["isotropic", "anisotropic"],
)
def test_odd_sizes_give_ceil_per_axis(strides, size):
    encoder = build("efficientnet-b0", "meta", strides=strides).eval()
    features = encoder(torch.empty(1, 3, *size, device="meta"))
    for feature, reduction in zip(features, encoder.reductions, strict=True):
        assert tuple(feature.shape[2:]) == tuple(math.ceil(s / r) for s, r in zip(size, reduction, strict=True))


def test_stride_1_axis_keeps_its_values_in_the_strided_depthwise_conv():
    """A stride-1 axis of a strided block is padded symmetrically by the conv itself."""
    encoder = build("efficientnet-b0", "meta", strides=(2, (2, 1, 2), 2, 2, 2))
    conv = encoder._blocks[1]._depthwise_conv
    assert conv.stride == (2, 1, 2) and conv.padding == (0, 1, 0)


@pytest.mark.parametrize("strides", [(3, 2, 2, 2, 2), (2, 2, 2, 2, (2, 3, 1))], ids=["stem", "per-axis"])
def test_stride_3_is_refused_naming_the_encoder(strides):
    with pytest.raises(ValueError, match=r"efficientnet-b0.*at most 2"):
        build("efficientnet-b0", "meta", strides=strides)
