"""Segformer: smp 0.6.0 parity in 2D (CNN and MiT encoders), training in 3D, per-axis strides,
0-channel placeholder features, fast paths, clear refusals."""

from __future__ import annotations

import architecture_checks as checks
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn as nn

import smp3d
from smp3d.decoders.segformer import Segformer

PARITY_CASES = {
    "defaults": dict(encoder_name="resnet34"),
    "depth3-1ch-classes": dict(
        encoder_name="resnet18", encoder_depth=3, in_channels=1, classes=3, decoder_segmentation_channels=32
    ),
    "depth4-sigmoid-5ch": dict(
        encoder_name="resnet18", encoder_depth=4, in_channels=5, decoder_segmentation_channels=64, activation="sigmoid"
    ),
    "aux-explicit-upsampling": dict(
        encoder_name="resnet18",
        decoder_segmentation_channels=32,
        upsampling=2,
        aux_params=dict(classes=3, pooling="max", dropout=0.5, activation="softmax"),
    ),
    "vgg11": dict(encoder_name="vgg11", encoder_depth=4, decoder_segmentation_channels=32),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_2d_segformer_equals_smp(case):
    checks.assert_case_matches_smp(smp.Segformer, Segformer, PARITY_CASES[case])


def _smp_mit_b0(in_channels: int = 3, depth: int = 5, spatial_dims: int = 2, strides=None) -> nn.Module:
    """smp's own 2D MiT-B0 encoder, given our protocol's metadata: its feature 1 is a 0-channel placeholder."""
    if spatial_dims != 2 or strides is not None:
        raise ValueError("this test encoder is 2D with the default strides only")
    encoder = smp.encoders.get_encoder("mit_b0", in_channels=in_channels, depth=depth, weights=None)
    encoder.reductions = tuple((2**i, 2**i) for i in range(depth + 1))
    encoder.spatial_dims = 2
    return encoder


def test_2d_segformer_with_mit_placeholder_feature_equals_smp(fresh_registry):
    smp3d.register_encoder("smp_mit_b0", _smp_mit_b0)
    depth = 4
    reference = smp.Segformer("mit_b0", encoder_depth=depth, encoder_weights=None, decoder_segmentation_channels=32)
    ours = Segformer("smp_mit_b0", encoder_depth=depth, spatial_dims=2, decoder_segmentation_channels=32)
    assert ours.encoder.out_channels[1] == 0 and ours.decoder.levels == tuple(range(depth, 1, -1))
    checks.assert_loads_and_matches_smp(reference, ours, torch.randn(1, 3, 64, 96))


def test_3d_placeholder_feature_is_skipped(fresh_registry):
    smp3d.register_encoder("placeholder_resnet18", checks.placeholder_resnet18)
    model = Segformer("placeholder_resnet18", encoder_depth=3, in_channels=1, decoder_segmentation_channels=8)
    assert len(model.decoder.mlp_stage) == 2
    out = model(torch.randn(2, 1, 16, 16, 16))
    assert out.shape == (2, 1, 16, 16, 16)
    out.mean().backward()


def test_defaults_match_smp_except_weights_and_upsampling():
    checks.assert_defaults_match_smp(Segformer, smp.Segformer, differing=checks.WEIGHTS_AND_UPSAMPLING)


def test_default_upsampling_is_smps_in_2d():
    model = Segformer("resnet18", encoder_depth=3, decoder_segmentation_channels=8, spatial_dims=2)
    assert model.segmentation_head[1].scale_factor == (4.0, 4.0)


@pytest.mark.parametrize(
    "kwargs", [dict(), dict(encoder_depth=3, aux_params=dict(classes=2))], ids=["default", "depth3-aux"]
)
def test_3d_forward_backward(kwargs):
    model = Segformer("resnet18", in_channels=2, classes=3, decoder_segmentation_channels=16, **kwargs)
    checks.check_forward_backward(model, torch.randn(2, 2, 32, 32, 32), classes=3)


def test_3d_anisotropic_strides_give_the_input_shape_back():
    strides = ((2, 2, 1), 2, (2, 2, 1), 2, 2)
    model = Segformer("resnet18", in_channels=1, classes=2, decoder_segmentation_channels=16, strides=strides)
    # Decoder output at level 2, reduction (4, 4, 2): the head upsamples by exactly that.
    assert model.segmentation_head[1].scale_factor == (4.0, 4.0, 2.0)
    checks.check_eval_shapes(model, 2, (1, 1, 64, 64, 16))


def test_2d_forward_backward():
    model = Segformer("resnet18", in_channels=1, classes=2, decoder_segmentation_channels=16, spatial_dims=2)
    checks.check_forward_backward(model, torch.randn(2, 1, 64, 64), classes=2)


def test_channels_last_3d_and_bf16_autocast():
    model = Segformer("resnet18", encoder_depth=3, in_channels=1, classes=2, decoder_segmentation_channels=16)
    checks.check_channels_last_bf16(model, torch.randn(2, 1, 32, 32, 32), classes=2)
    # The per-voxel linear projections keep the channels-last layout.
    mlp = model.decoder.mlp_stage[0]
    feature = torch.zeros(1, mlp.linear.in_features, 4, 4, 4).to(memory_format=torch.channels_last_3d)
    assert mlp(feature).is_contiguous(memory_format=torch.channels_last_3d)


def test_compiles_without_graph_breaks():
    model = Segformer("resnet18", encoder_depth=3, in_channels=1, classes=2, decoder_segmentation_channels=8)
    checks.check_compiles(model, torch.randn(1, 1, 32, 32, 16))


def test_meta_device():
    strides = ((2, 2, 1), 2, 2, 2, 2)
    checks.check_meta(Segformer, (2, 1, 64, 64, 32), encoder_name="resnet50", in_channels=1, classes=4, strides=strides)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(encoder_depth=2), r"encoder_depth in 3\.\.5, got 2\. Its output is at encoder level 2"),
        (dict(decoder_segmentation_channels=0), r"segmentation_channels must be a positive int, got 0"),
        (dict(decoder_segmentation_channels=64.0), r"segmentation_channels must be a positive int, got 64\.0"),
        (dict(upsampling=0), r"upsampling must be None .* got 0"),
        (dict(classes=0), r"classes"),
    ],
    ids=["depth2", "channels0", "channels-float", "upsampling0", "classes0"],
)
def test_refused_configurations(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Segformer("resnet18", **kwargs)
