"""PAN: smp 0.6.0 parity in 2D, small and anisotropic features in 3D, compile/autocast/meta, errors."""

from __future__ import annotations

import functools

import architecture_checks as checks
import pytest
import segmentation_models_pytorch as smp
import torch

import smp3d
from smp3d.decoders.pan import PAN

# smp's Feature Pyramid Attention needs >= 8 pixels per axis of the deepest feature.
PARITY_CASES = {
    "defaults": (dict(encoder_name="resnet34"), (128, 128)),
    "not-multiple-of-8-deepest": (dict(encoder_name="resnet18", decoder_channels=16), (160, 208)),
    "depth4-nearest-1ch": (
        dict(encoder_name="resnet18", encoder_depth=4, in_channels=1, classes=3, decoder_interpolation="nearest"),
        (128, 128),
    ),
    "depth3-area-aux-5ch": (
        dict(
            encoder_name="resnet18",
            encoder_depth=3,
            in_channels=5,
            decoder_interpolation="area",
            activation="sigmoid",
            aux_params=dict(classes=2, pooling="max", dropout=0.3),
        ),
        (64, 96),
    ),
    "os32-efficientnet-bicubic": (
        dict(encoder_name="efficientnet-b0", encoder_output_stride=32, decoder_interpolation="bicubic", classes=2),
        (256, 256),
    ),
    "resnext-os16-upsampling2": (
        dict(encoder_name="resnext50_32x4d", decoder_channels=64, upsampling=2, aux_params=dict(classes=4)),
        (128, 128),
    ),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_2d_pan_equals_smp(case):
    kwargs, size = PARITY_CASES[case]
    checks.assert_case_matches_smp(smp.PAN, PAN, kwargs, size=size)


def test_defaults_match_smp_except_weights_and_upsampling():
    checks.assert_defaults_match_smp(PAN, smp.PAN, differing=checks.WEIGHTS_AND_UPSAMPLING)


def test_deprecated_upscale_mode():
    with pytest.warns(DeprecationWarning, match="upscale_mode is deprecated"):
        model = PAN("resnet18", encoder_depth=3, spatial_dims=2, upscale_mode="nearest")
    assert model.decoder.gau1.interpolation_mode == "nearest"


def test_small_inputs_where_smp_fails():
    """64x64 at output stride 16: a 4x4 deepest feature, too small for smp's three halvings."""
    model = PAN("resnet18", spatial_dims=2)
    checks.check_eval_shapes(model, 1, (1, 3, 64, 64), (1, 3, 16, 32))  # the last: deepest feature 1x2


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(encoder_depth=4, decoder_interpolation="trilinear", aux_params=dict(classes=2))],
    ids=["default", "depth4-trilinear-aux"],
)
def test_3d_forward_backward(kwargs):
    model = PAN("resnet18", in_channels=2, classes=3, **kwargs)
    checks.check_forward_backward(model, torch.randn(2, 2, 32, 32, 32), classes=3)


def test_3d_anisotropic_strides_give_input_shape():
    strides = ((2, 2, 1), 2, (2, 2, 1), 2, 2)
    model = PAN("resnet18", in_channels=1, classes=2, strides=strides)
    assert model.encoder.reductions[-1] == (16, 16, 8)  # dilated only along the axes above 16
    assert model.segmentation_head[1].scale_factor == (4.0, 4.0, 2.0)
    checks.check_eval_shapes(model, 2, (1, 1, 64, 64, 16))  # deepest (4, 4, 2)


def test_per_axis_output_stride():
    model = PAN("resnet18", encoder_output_stride=(16, 16, 32), encoder_depth=5)
    assert model.encoder.reductions[-1] == (16, 16, 32)
    checks.check_eval_shapes(model, 1, (1, 3, 32, 32, 32))


def test_2d_forward_backward():
    model = PAN("resnet18", in_channels=1, classes=2, spatial_dims=2)
    checks.check_forward_backward(model, torch.randn(2, 1, 64, 64), classes=2)


def test_channels_last_3d_and_bf16_autocast():
    model = PAN("resnet18", in_channels=1, classes=2)
    checks.check_channels_last_bf16(model, torch.randn(2, 1, 32, 32, 32), classes=2)


def test_bf16_channels_last_single_voxel_pyramid_reads_no_garbage():
    """Regression: oneDNN's CPU bf16 convolution reads uninitialised memory for a channels_last_3d 1-channel
    kernel on a single voxel (FPA at 32^3). Freed NaN-filled buffers make such reads visible."""
    for i in range(6):
        torch.manual_seed(i % 3)
        junk = [torch.full((100_000 * (j + 1),), float("nan")) for j in range(i % 7)]
        del junk
        model = PAN("resnet18", in_channels=1, classes=2).to(memory_format=torch.channels_last_3d)
        x = torch.randn(2, 1, 32, 32, 32).to(memory_format=torch.channels_last_3d)
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            assert torch.isfinite(model(x)).all(), i


def test_compiles_without_graph_breaks():
    model = PAN("resnet18", in_channels=1, classes=2, strides=((2, 2, 1), 2, 2, 2, 2))
    checks.check_compiles(model, torch.randn(1, 1, 32, 32, 16))


def test_meta_device():
    with torch.device("meta"):
        model = PAN(encoder_name="resnet50", in_channels=1, classes=3, strides=((2, 2, 1), 2, 2, 2, 2))
        train_out = model(torch.empty(2, 1, 64, 64, 32))
        # The global branches batch-normalize one value per sample; with a batch of one they fall back to
        # their running statistics (smp raises there).
        assert model(torch.empty(1, 1, 64, 64, 32)).shape == (1, 3, 64, 64, 32)
        out = model.eval()(torch.empty(1, 1, 64, 64, 32))
    assert train_out.shape == (2, 3, 64, 64, 32)
    assert out.shape == (1, 3, 64, 64, 32) and out.device.type == "meta"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(encoder_depth=2), r"PAN supports encoder_depth in 3\.\.5, got 2\. It decodes down to encoder feature 2"),
        (dict(encoder_output_stride=12), r"cannot reach an output stride of 12 along axis 0"),
        (dict(encoder_output_stride=(16, 16)), r"encoder_output_stride must be .* a tuple of 3 positive ints"),
        (dict(decoder_interpolation="cubic"), r"Unknown interpolation mode 'cubic'"),
        (dict(upsampling=0), r"upsampling must be None"),
    ],
)
def test_construction_errors(kwargs, match):
    kwargs = {"encoder_name": "resnet18", **kwargs}
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        PAN(**kwargs)


def test_encoder_without_dilation_hook(fresh_registry):
    smp3d.register_encoder("strided_conv_tiny", functools.partial(checks.StridedConvEncoder, width=4))
    with pytest.raises(ValueError, match=r"PAN\('strided_conv_tiny'\) needs encoder_output_stride=16.*make_dilated"):
        PAN("strided_conv_tiny")
    # Fine where no dilation is needed: its own output stride, or a shallow encoder.
    for kwargs in (dict(encoder_output_stride=32), dict(encoder_depth=4)):
        checks.check_eval_shapes(PAN("strided_conv_tiny", decoder_channels=8, **kwargs), 1, (1, 3, 32, 32, 32))
