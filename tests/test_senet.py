"""SE-Net encoders: behaviour specific to the family (the generic checks are in test_encoder_families.py)."""

from __future__ import annotations

import functools

import pytest
import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders import _senet
from segmentation_models_pytorch.encoders.senet import SENetEncoder as SmpSENetEncoder

import smp3d
from smp3d_encoders.senet import SEBottleneck, SEModule, SENetEncoder

# SENet-154's hyper-parameters (3-conv stem of width 128, 3x3 projections, 64 groups) with one
# block per layer: every code path of the 113M-parameter model at a fraction of its cost.
MINI_SENET154 = dict(layers=(1, 1, 1, 1), groups=64, inplanes=128, input_3x3=True)
MINI_SENET154_PROJECTION = dict(downsample_kernel_size=3, downsample_padding=1)


@functools.cache
def mini_senet154_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    """smp's and our 2D SENet-154 with one block per layer, ours holding smp's weights."""
    reference = SmpSENetEncoder(
        out_channels=[3, 128, 256, 512, 1024, 2048],
        block=_senet.SEBottleneck,
        reduction=16,
        dropout_p=0.2,
        num_classes=1000,
        **MINI_SENET154,
        **MINI_SENET154_PROJECTION,
    )
    ours = SENetEncoder(block=SEBottleneck, spatial_dims=2, **MINI_SENET154, **MINI_SENET154_PROJECTION)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@functools.cache
def smp_pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    reference = smp.encoders.get_encoder(name, weights=None).eval()
    ours = smp3d.get_encoder(name, spatial_dims=2).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def assert_features_equal(got: list[torch.Tensor], expected: list[torch.Tensor], x: torch.Tensor) -> None:
    assert len(got) == len(expected)
    torch.testing.assert_close(got[0], x)
    for b, a in zip(got[1:], expected[1:], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "size",
    [pytest.param((32, 64), id="32x64"), pytest.param((45, 37), id="odd-45x37"), pytest.param((7, 9), id="tiny-7x9")],
)
@pytest.mark.parametrize("model", ["se_resnet50", "mini_senet154"])
def test_2d_features_equal_smp(model, size):
    """Stride in the 1x1 (SE-ResNet), 3-conv stem and 3x3 projections (SENet-154), ceil-mode pool at odd sizes."""
    reference, ours = mini_senet154_pair() if model == "mini_senet154" else smp_pair(model)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert_features_equal(ours(x), reference(x), x)


def _embed_in_depth(weight_2d: torch.Tensor, weight_3d: torch.Tensor) -> torch.Tensor:
    """A 3D kernel whose centre depth slice is the 2D kernel; the other slices stay random."""
    out = weight_3d.clone()
    out[..., weight_3d.shape[-1] // 2] = weight_2d
    return out


@pytest.mark.parametrize("model", ["se_resnext50_32x4d", "mini_senet154"])
def test_3d_on_a_single_slice_equals_2d(model):
    """With depth 1 and no stride along depth, only the centre depth tap of each kernel sees data.

    So the 3D encoder must reproduce the 2D one exactly: the SE squeeze averages over every
    spatial axis, the pool leaves depth alone, grouped convolutions stay grouped.
    """
    if model == "mini_senet154":
        kwargs = dict(block=SEBottleneck, **MINI_SENET154, **MINI_SENET154_PROJECTION)
        encoder_2d = SENetEncoder(spatial_dims=2, depth=4, **kwargs).eval()
        encoder_3d = SENetEncoder(spatial_dims=3, depth=4, strides=((2, 2, 1),) * 4, **kwargs).eval()
    else:
        encoder_2d = smp3d.get_encoder(model, spatial_dims=2, depth=4).eval()
        encoder_3d = smp3d.get_encoder(model, spatial_dims=3, depth=4, strides=((2, 2, 1),) * 4).eval()
    state_2d, state_3d = encoder_2d.state_dict(), encoder_3d.state_dict()
    for key, tensor in state_2d.items():
        if tensor.ndim > 1:  # a convolution kernel
            state_3d[key] = _embed_in_depth(tensor, state_3d[key])
        elif tensor.is_floating_point():  # move norms and biases off their identity defaults
            state_2d[key] = state_3d[key] = tensor + 0.1 * torch.rand_like(tensor)
    encoder_2d.load_state_dict(state_2d, strict=True)
    encoder_3d.load_state_dict(state_3d, strict=True)
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        features_2d, features_3d = encoder_2d(x), encoder_3d(x.unsqueeze(-1))
    for f2, f3 in zip(features_2d, features_3d, strict=True):
        torch.testing.assert_close(f3.squeeze(-1), f2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "strided"), [("se_resnet50", "conv1"), ("se_resnext50_32x4d", "conv2"), ("senet154", "conv2")]
)
def test_stride_goes_where_the_original_puts_it(name, strided):
    strides = ((2, 2, 1), (1, 2, 2), (2, 1, 2), (2, 2, 1), (1, 1, 2))
    with torch.device("meta"):
        encoder = smp3d.get_encoder(name, spatial_dims=3, strides=strides)
    assert encoder.layer0.conv1.stride == (2, 2, 1)
    # The stem pool pools only along strided axes and keeps the Caffe ceil mode.
    assert encoder.layer0_pool.kernel_size == (1, 3, 3) and encoder.layer0_pool.stride == (1, 2, 2)
    assert encoder.layer0_pool.ceil_mode
    for layer, stride in zip((encoder.layer2, encoder.layer3, encoder.layer4), strides[2:], strict=True):
        block = layer[0]
        other = "conv2" if strided == "conv1" else "conv1"
        assert getattr(block, strided).stride == stride
        assert getattr(block, other).stride == (1, 1, 1)
        assert block.downsample[0].stride == stride
        assert all(b.downsample is None for b in layer[1:])


def test_senet154_stem_groups_and_projections_in_3d():
    with torch.device("meta"):
        encoder = smp3d.get_encoder("senet154", in_channels=1, spatial_dims=3)
    stem = [encoder.layer0.conv1, encoder.layer0.conv2, encoder.layer0.conv3]
    assert [tuple(c.weight.shape) for c in stem] == [(64, 1, 3, 3, 3), (64, 64, 3, 3, 3), (128, 64, 3, 3, 3)]
    assert encoder.layer1[0].conv2.groups == 64
    assert tuple(encoder.layer1[0].conv2.weight.shape) == (256, 2, 3, 3, 3)
    # layer1 projects with a 1x1 kernel, the strided layers with 3x3 (kernel_size == 3, padding 1).
    assert encoder.layer1[0].downsample[0].kernel_size == (1, 1, 1)
    for layer in (encoder.layer2, encoder.layer3, encoder.layer4):
        assert layer[0].downsample[0].kernel_size == (3, 3, 3) and layer[0].downsample[0].padding == (1, 1, 1)
    assert tuple(encoder.layer4[0].se_module.fc1.weight.shape) == (128, 2048, 1, 1, 1)


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_only_used_stages_are_built(depth):
    with torch.device("meta"):
        encoder = smp3d.get_encoder("se_resnet50", depth=depth)
    children = [n for n, _ in encoder.named_children()]
    expected = ["layer0"] + (["layer0_pool"] if depth >= 2 else []) + [f"layer{i}" for i in range(1, depth)]
    assert children == expected


@pytest.mark.parametrize(
    "size", [pytest.param((45, 37, 20), id="odd-45x37x20"), pytest.param((9, 8, 3), id="small-9x8x3")]
)
def test_odd_sizes_follow_the_documented_rounding(size):
    """Convolutions give ceil(n / 2); the ceil-mode pool (kernel 3, no padding) gives floor(n / 2)."""
    with torch.device("meta"):
        encoder = smp3d.get_encoder("se_resnext50_32x4d", strides=(2, 2, 2, 2, (2, 2, 1))).eval()
    features = encoder(torch.empty(1, 3, *size, device="meta"))
    expected = [size]
    expected.append(tuple(-(-n // 2) for n in expected[-1]))  # stem convolution
    expected.append(tuple(n // 2 for n in expected[-1]))  # pool (layer1 keeps sizes)
    for stride in encoder.strides[2:]:
        expected.append(tuple(-(-n // s) for n, s in zip(expected[-1], stride, strict=True)))
    assert [tuple(f.shape[2:]) for f in features] == expected


@pytest.mark.parametrize(
    "memory_format",
    [pytest.param(torch.contiguous_format, id="contiguous"), pytest.param(torch.channels_last_3d, id="cl3d")],
)
def test_se_gate_squeezes_every_spatial_axis_and_keeps_the_layout(memory_format):
    se = SEModule(32, reduction=4, spatial_dims=3).eval()
    x = torch.randn(2, 32, 6, 5, 4).to(memory_format=memory_format)
    with torch.no_grad():
        gate = torch.sigmoid(se.fc2(torch.relu(se.fc1(torch.nn.AdaptiveAvgPool3d(1)(x)))))
        out = se(x)
    torch.testing.assert_close(out, x * gate)
    assert out.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize(
    ("strides", "match"),
    [
        pytest.param((2, 3, 2, 2, 2), "'se_resnet101'.*at most 2", id="stride-3"),
        pytest.param(((2, 2, 4), 2, 2, 2, 2), "'se_resnet101'.*at most 2", id="per-axis-4"),
        pytest.param((2, 2, 2, 2), "4 items but encoder_depth is 5", id="too-few"),
    ],
)
def test_unsupported_strides_are_refused_naming_the_encoder(strides, match):
    with pytest.raises(ValueError, match=match):
        SENetEncoder(block=SEBottleneck, layers=(1, 1, 1, 1), groups=1, strides=strides, name="se_resnet101")
    with pytest.raises(ValueError, match=match), torch.device("meta"):
        smp3d.get_encoder("se_resnet101", strides=strides)


def test_depth_6_is_refused():
    with pytest.raises(ValueError, match="encoder_depth of 'senet154' must be an int in 1..5"):
        smp3d.get_encoder("senet154", depth=6)
