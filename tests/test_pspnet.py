"""PSPNet: smp 0.6.0 parity in 2D, short axes and per-axis strides in 3D, compile/autocast/meta, errors."""

from __future__ import annotations

import warnings

import architecture_checks as checks
import pytest
import segmentation_models_pytorch as smp
import torch

from smp3d.decoders.pspnet import PSPNet

PARITY_CASES = {
    "defaults": dict(encoder_name="resnet34"),
    "depth5-no-norm-1ch": dict(
        encoder_name="resnet18",
        encoder_depth=5,
        decoder_use_norm=False,
        psp_out_channels=64,
        in_channels=1,
        classes=3,
        activation="sigmoid",
        upsampling=8,  # smp's default: a quarter of the input size at depth 5
    ),
    "norm-dict-aux-5ch": dict(
        encoder_name="resnet18",
        encoder_depth=4,
        decoder_use_norm={"type": "batchnorm", "eps": 1e-3, "momentum": 0.3},
        in_channels=5,
        upsampling=16,
        aux_params=dict(classes=2, pooling="max", dropout=0.3, activation="sigmoid"),
    ),
    "instancenorm-densenet": dict(
        encoder_name="densenet121",
        encoder_depth=5,
        upsampling=32,  # the deepest feature is 2x3: the 3- and 6-cell grids repeat voxels
        decoder_use_norm={"type": "instancenorm", "affine": True},
        psp_dropout=0.5,
        classes=2,
    ),
    "efficientnet-depth5": dict(encoder_name="efficientnet-b0", encoder_depth=5, upsampling=(32, 32)),
    "depth2": dict(encoder_name="resnet18", encoder_depth=2, upsampling=(4, 4), psp_out_channels=32),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_2d_pspnet_equals_smp(case):
    checks.assert_case_matches_smp(smp.PSPNet, PSPNet, PARITY_CASES[case], batch=2)


def test_deprecated_psp_use_batchnorm_and_empty_aux_params():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        reference = smp.PSPNet("resnet18", encoder_weights=None, psp_use_batchnorm=False, aux_params={})
    with pytest.warns(DeprecationWarning, match="^psp_use_batchnorm is deprecated; use decoder_use_norm"):
        ours = PSPNet("resnet18", spatial_dims=2, psp_use_batchnorm=False, aux_params={})
    assert ours.classification_head is None
    checks.assert_loads_and_matches_smp(reference, ours, torch.randn(1, 3, 64, 64), checks.smp_unused_stages(3))


def test_defaults_match_smp_except_weights_and_upsampling():
    checks.assert_defaults_match_smp(PSPNet, smp.PSPNet, differing=checks.WEIGHTS_AND_UPSAMPLING)


@pytest.mark.parametrize("length", [1, 2, 3])
def test_axis_shorter_than_bins_is_seen_voxel_by_voxel(length):
    """Pooling 1-3 voxels to a larger grid and resizing back gives the per-voxel projection."""
    model = PSPNet("resnet18", encoder_depth=1, psp_out_channels=16).eval()
    x = torch.randn(1, 64, 6, 6, length)
    with torch.no_grad():
        for block in model.decoder.psp.blocks:
            if block.pool_size > length:
                pooled_xy = torch.nn.functional.adaptive_avg_pool3d(x, (block.pool_size, block.pool_size, length))
                expected = block.pool[1](pooled_xy)
                expected = torch.nn.functional.interpolate(
                    expected, size=x.shape[2:], mode="trilinear", align_corners=True
                )
                torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(encoder_depth=5, decoder_use_norm="layernorm", aux_params=dict(classes=2))],
    ids=["default", "depth5-layernorm-aux"],
)
def test_3d_forward_backward(kwargs):
    model = PSPNet("resnet18", in_channels=2, classes=3, psp_out_channels=64, **kwargs)
    checks.check_forward_backward(model, torch.randn(2, 2, 32, 32, 32), classes=3)


def test_3d_anisotropic_strides_give_input_shape():
    model = PSPNet("resnet18", in_channels=1, classes=2, strides=((2, 2, 1), 2, (2, 2, 1)), psp_out_channels=64)
    assert model.encoder.reductions[-1] == (8, 8, 2)
    assert model.segmentation_head[1].scale_factor == (8.0, 8.0, 2.0)
    checks.check_eval_shapes(model, 2, (1, 1, 64, 64, 16), (1, 1, 64, 64, 4))  # the last: deepest (8, 8, 2)
    model.train()
    model(torch.randn(1, 1, 32, 32, 2)).mean().backward()  # deepest (4, 4, 1), batch 1


def test_2d_forward_backward():
    model = PSPNet("resnet18", in_channels=1, classes=2, spatial_dims=2)
    checks.check_forward_backward(model, torch.randn(2, 1, 64, 64), classes=2)


def test_channels_last_3d_and_bf16_autocast():
    model = PSPNet("resnet18", in_channels=1, classes=2, psp_out_channels=64)
    checks.check_channels_last_bf16(model, torch.randn(2, 1, 32, 32, 32), classes=2)


def test_compiles_without_graph_breaks():
    model = PSPNet("resnet18", in_channels=1, classes=2, psp_out_channels=64, strides=((2, 2, 1), 2, 2))
    checks.check_compiles(model, torch.randn(1, 1, 32, 32, 16))


def test_meta_device():
    strides = ((2, 2, 1), 2, 2)
    checks.check_meta(PSPNet, (1, 1, 64, 64, 32), encoder_name="resnet50", in_channels=1, classes=3, strides=strides)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(decoder_use_norm="groupnorm"), r"Unknown normalization 'groupnorm'"),
        (dict(upsampling=(8, 8)), r"PSPNet: upsampling must be None .* a tuple of 3 positive ints, got \(8, 8\)"),
        (dict(encoder_depth=6), r"encoder_depth"),
        (dict(classes=0), r"classes must be a positive int"),
    ],
)
def test_construction_errors(kwargs, match):
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        PSPNet("resnet18", **kwargs)
