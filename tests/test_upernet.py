"""UPerNet: smp 0.6.0 parity in 2D, training in 3D, per-axis strides, fast paths, clear refusals."""

from __future__ import annotations

import architecture_checks as checks
import pytest
import segmentation_models_pytorch as smp
import torch

from smp3d.decoders.upernet import UPerNet

PARITY_CASES = {
    "defaults": dict(encoder_name="resnet34"),
    "depth3-1ch-classes": dict(encoder_name="resnet18", encoder_depth=3, in_channels=1, classes=3, decoder_channels=32),
    "depth4-identity-norm-sigmoid-5ch": dict(
        encoder_name="resnet18",
        encoder_depth=4,
        in_channels=5,
        decoder_channels=64,
        decoder_use_norm=False,
        activation="sigmoid",
    ),
    "norm-dict-aux": dict(
        encoder_name="resnet18",
        decoder_channels=64,
        decoder_use_norm={"type": "batchnorm", "momentum": 0.3},
        aux_params=dict(classes=3, pooling="max", dropout=0.5, activation="softmax"),
    ),
    "bool-norm-explicit-upsampling": dict(
        encoder_name="resnet18", decoder_channels=32, decoder_use_norm=True, upsampling=2, classes=2
    ),
    "efficientnet-b0": dict(encoder_name="efficientnet-b0", decoder_channels=32),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_2d_upernet_equals_smp(case):
    checks.assert_case_matches_smp(smp.UPerNet, UPerNet, PARITY_CASES[case])


def test_defaults_match_smp_except_weights_and_upsampling():
    checks.assert_defaults_match_smp(UPerNet, smp.UPerNet, differing=checks.WEIGHTS_AND_UPSAMPLING)


def test_default_upsampling_is_smps_in_2d():
    model = UPerNet("resnet18", encoder_depth=3, decoder_channels=8, spatial_dims=2)
    assert model.segmentation_head[1].scale_factor == (4.0, 4.0)


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(encoder_depth=3, decoder_use_norm="layernorm", aux_params=dict(classes=2))],
    ids=["default", "depth3-layernorm-aux"],
)
def test_3d_forward_backward(kwargs):
    model = UPerNet("resnet18", in_channels=2, classes=3, decoder_channels=16, **kwargs)
    checks.check_forward_backward(model, torch.randn(2, 2, 32, 32, 32), classes=3)


def test_3d_anisotropic_strides_give_the_input_shape_back():
    strides = ((2, 2, 1), 2, (2, 2, 1), 2, 2)
    model = UPerNet("resnet18", in_channels=1, classes=2, decoder_channels=16, strides=strides)
    # Decoder output at level 2, reduction (4, 4, 2): the head upsamples by exactly that.
    assert model.segmentation_head[1].scale_factor == (4.0, 4.0, 2.0)
    checks.check_eval_shapes(model, 2, (1, 1, 64, 64, 16))


def test_2d_forward_backward():
    model = UPerNet("resnet18", in_channels=1, classes=2, decoder_channels=16, spatial_dims=2)
    checks.check_forward_backward(model, torch.randn(2, 1, 64, 64), classes=2)


def test_channels_last_3d_and_bf16_autocast():
    model = UPerNet("resnet18", encoder_depth=3, in_channels=1, classes=2, decoder_channels=16)
    checks.check_channels_last_bf16(model, torch.randn(2, 1, 32, 32, 32), classes=2)


def test_compiles_without_graph_breaks():
    model = UPerNet("resnet18", encoder_depth=3, in_channels=1, classes=2, decoder_channels=8)
    checks.check_compiles(model, torch.randn(1, 1, 32, 32, 16))


def test_meta_device():
    strides = ((2, 2, 1), 2, 2, 2, 2)
    checks.check_meta(UPerNet, (2, 1, 64, 64, 32), encoder_name="resnet50", in_channels=1, classes=4, strides=strides)


def test_deprecated_decoder_use_batchnorm_warns_and_applies():
    with pytest.warns(DeprecationWarning, match="decoder_use_batchnorm"):
        model = UPerNet("resnet18", encoder_depth=3, decoder_channels=8, decoder_use_batchnorm=False)
    assert isinstance(model.decoder.fusion_block[1], torch.nn.Identity)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(encoder_depth=2), r"UPerNet supports encoder_depth in 3\.\.5, got 2\. It uses the features from level 2"),
        (dict(encoder_depth=6), r"encoder_depth in 3\.\.5, got 6"),
        (dict(decoder_channels=0), r"decoder_channels must be a positive int, got 0"),
        (dict(decoder_channels=(64, 32)), r"decoder_channels must be a positive int, got \(64, 32\)"),
        (dict(decoder_use_norm="groupnorm"), r"Unknown normalization 'groupnorm'"),
        (dict(decoder_use_norm="instancenorm"), r"1 cell per axis, and instance norm .* got 'instancenorm'"),
        (dict(upsampling=(4, 4)), r"upsampling must be None .* tuple of 3 positive ints, got \(4, 4\)"),
        (dict(classes=0), r"classes"),
    ],
    ids=["depth2", "depth6", "channels0", "channels-list", "bad-norm", "instancenorm", "bad-upsampling", "classes0"],
)
def test_refused_configurations(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UPerNet("resnet18", **kwargs)


def test_batch_of_one_trains():
    """smp raises here: batch norm after the 1-cell pool sees one value per channel. Ours falls back to
    the running statistics for that branch (without updating them); every other norm trains as usual."""
    model = UPerNet("resnet18", encoder_depth=3, in_channels=1, classes=2, decoder_channels=8)
    single = model.decoder.psp.blocks[0][1][1]
    assert type(single).__name__ == "SingleCellBatchNorm"
    before = single.running_mean.clone()
    out = model(torch.randn(1, 1, 32, 32, 16))
    assert out.shape == (1, 2, 32, 32, 16)
    out.mean().backward()
    assert torch.equal(single.running_mean, before) and single.weight.grad is not None
    pooled = torch.randn(1, 8, 1, 1, 1)
    torch.testing.assert_close(single(pooled), single.eval()(pooled))
    # With more than one value per channel it is plain batch norm.
    single.train()
    pooled = torch.randn(2, 8, 1, 1, 1)
    expected = torch.nn.functional.batch_norm(pooled, None, None, single.weight, single.bias, True, 0.0, single.eps)
    torch.testing.assert_close(single(pooled), expected)
    assert not torch.equal(single.running_mean, before)
