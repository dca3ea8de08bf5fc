"""FPN: smp 0.6.0 parity in 2D, 3D with per-axis strides, compile/autocast/meta, construction errors."""

from __future__ import annotations

import architecture_checks as checks
import pytest
import segmentation_models_pytorch as smp
import torch

from smp3d.decoders.fpn import FPN

PARITY_CASES = {
    "defaults": dict(encoder_name="resnet34"),
    "cat-bilinear-sigmoid-1ch": dict(
        encoder_name="resnet18",
        in_channels=1,
        classes=3,
        decoder_merge_policy="cat",
        decoder_interpolation="bilinear",
        decoder_pyramid_channels=64,
        decoder_segmentation_channels=64,
        activation="sigmoid",
    ),
    "depth4-area-aux-5ch": dict(
        encoder_name="resnet18",
        encoder_depth=4,
        in_channels=5,
        decoder_interpolation="area",
        decoder_dropout=0.5,
        upsampling=4,  # smp's default: from reduction 2 this gives twice the input size
        aux_params=dict(classes=3, pooling="max", dropout=0.5, activation="sigmoid"),
    ),
    "depth3-bicubic": dict(
        encoder_name="resnet18",
        encoder_depth=3,
        decoder_interpolation="bicubic",
        decoder_pyramid_channels=32,
        decoder_segmentation_channels=32,
        upsampling=2,
    ),
    "efficientnet-nearest-exact": dict(
        encoder_name="efficientnet-b0", classes=2, decoder_interpolation="nearest-exact", upsampling=(4, 4)
    ),
    "dpn68-aux": dict(encoder_name="dpn68", aux_params=dict(classes=2)),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_2d_fpn_equals_smp(case):
    checks.assert_case_matches_smp(smp.FPN, FPN, PARITY_CASES[case])


def test_defaults_match_smp_except_weights_and_upsampling():
    checks.assert_defaults_match_smp(FPN, smp.FPN, differing=checks.WEIGHTS_AND_UPSAMPLING)


def test_default_upsampling_returns_input_size_in_2d_at_every_depth():
    for depth in (3, 4):
        model = FPN("resnet18", encoder_depth=depth, spatial_dims=2, decoder_segmentation_channels=32)
        checks.check_eval_shapes(model, 1, (1, 3, 64, 64))


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(decoder_merge_policy="cat", decoder_interpolation="trilinear", aux_params=dict(classes=2))],
    ids=["default", "cat-trilinear-aux"],
)
def test_3d_forward_backward(kwargs):
    model = FPN("resnet18", in_channels=2, classes=3, decoder_segmentation_channels=64, **kwargs)
    checks.check_forward_backward(model, torch.randn(2, 2, 32, 32, 32), classes=3)


def test_3d_anisotropic_strides_give_input_shape():
    strides = ((2, 2, 1), 2, (2, 2, 1), 2, 2)
    model = FPN("resnet18", in_channels=1, classes=2, strides=strides, decoder_segmentation_channels=32)
    assert model.encoder.reductions[-1] == (32, 32, 8)
    assert model.segmentation_head[1].scale_factor == (4.0, 4.0, 2.0)
    checks.check_eval_shapes(model, 2, (1, 1, 64, 64, 16))


def test_keys_do_not_depend_on_strides():
    """A segmentation block has one conv block per pyramid level crossed, whatever the strides."""
    iso = FPN("resnet18", decoder_segmentation_channels=32)
    strides = ((2, 2, 1), (1, 1, 1), (2, 2, 1), 3, (4, 2, 1))
    aniso = FPN("resnet18", decoder_segmentation_channels=32, strides=strides)
    assert {k: v.shape for k, v in iso.state_dict().items()} == {k: v.shape for k, v in aniso.state_dict().items()}
    checks.check_eval_shapes(aniso, 1, (1, 3, 96, 48, 6))


def test_2d_forward_backward():
    model = FPN("resnet18", in_channels=1, classes=2, spatial_dims=2)
    checks.check_forward_backward(model, torch.randn(2, 1, 64, 64), classes=2)


def test_channels_last_3d_and_bf16_autocast():
    model = FPN("resnet18", in_channels=1, classes=2, decoder_segmentation_channels=32)
    checks.check_channels_last_bf16(model, torch.randn(2, 1, 32, 32, 32), classes=2)


def test_compiles_without_graph_breaks():
    model = FPN("resnet18", in_channels=1, classes=2, encoder_depth=3, decoder_segmentation_channels=32)
    checks.check_compiles(model, torch.randn(1, 1, 32, 32, 16))


def test_meta_device():
    strides = ((2, 2, 1), 2, 2, 2, 2)
    checks.check_meta(FPN, (1, 1, 64, 64, 32), encoder_name="resnet50", in_channels=1, classes=3, strides=strides)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(encoder_depth=2), r"FPN supports encoder_depth in 3\.\.5, got 2\. Its pyramid has 4 levels"),
        (dict(decoder_merge_policy="sum"), r"decoder_merge_policy must be one of \('add', 'cat'\), got 'sum'"),
        (dict(decoder_segmentation_channels=48), r"multiple of 32 \(GroupNorm with 32 groups\), got 48"),
        (dict(decoder_interpolation="cubic"), r"Unknown interpolation mode 'cubic'"),
        (dict(decoder_interpolation="bicubic"), r"'bicubic' exists only in 2D"),
        (dict(upsampling=(4, 4)), r"upsampling must be None .* a tuple of 3 positive ints, got \(4, 4\)"),
        (dict(classes=0), r"classes must be a positive int"),
    ],
)
def test_construction_errors(kwargs, match):
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        FPN("resnet18", **kwargs)
