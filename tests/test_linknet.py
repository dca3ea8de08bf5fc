"""Linknet: smp 0.6.0 parity in 2D, training in 3D, per-axis transposed upsampling, fast paths, clear errors."""

from __future__ import annotations

import architecture_checks as checks
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn as nn

import smp3d
from smp3d.decoders.linknet import Linknet, LinknetDecoder, TransposedUpsample
from smp3d.decoders.linknet.decoder import transposed_geometry

PARITY_CASES = {
    "defaults": dict(encoder_name="resnet34"),
    "aux-1ch": dict(
        encoder_name="resnet18",
        in_channels=1,
        classes=4,
        aux_params=dict(classes=3, pooling="max", dropout=0.5, activation="sigmoid"),
    ),
    "depth3-bottleneck": dict(encoder_name="resnet50", encoder_depth=3, classes=2),
    "identity-norm-5ch": dict(encoder_name="resnet18", in_channels=5, decoder_use_norm=False),
    "norm-dict-sigmoid": dict(
        encoder_name="resnet18", decoder_use_norm={"type": "batchnorm", "momentum": 0.3}, activation="sigmoid"
    ),
    "dpn68": dict(encoder_name="dpn68", classes=3),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_2d_equals_smp(case):
    checks.assert_case_matches_smp(smp.Linknet, Linknet, PARITY_CASES[case])


def test_defaults_match_smp_except_weights():
    checks.assert_defaults_match_smp(Linknet, smp.Linknet)


@pytest.mark.parametrize(
    ("scale", "kernel", "padding"),
    [((2, 2), (4, 4), (1, 1)), ((2, 2, 1), (4, 4, 1), (1, 1, 0)), ((4, 3, 1), (8, 5, 1), (2, 1, 0))],
)
def test_transposed_upsampling_multiplies_sizes_by_the_ratio(scale, kernel, padding):
    assert transposed_geometry(scale) == (kernel, padding)
    layer = TransposedUpsample(4, 4, scale, spatial_dims=len(scale))
    assert tuple(layer[0].kernel_size) == kernel and tuple(layer[0].stride) == scale
    size = (3, 5, 2)[: len(scale)]
    out = layer(torch.randn(2, 4, *size))
    assert tuple(out.shape[2:]) == tuple(n * r for n, r in zip(size, scale, strict=True))


def test_transposed_kernels_follow_the_encoder_reductions():
    strides = ((2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2), 1)
    with torch.device("meta"):
        model = Linknet("resnet18", strides=strides)
    kernels = [tuple(block.block[1][0].kernel_size) for block in model.decoder.blocks]
    assert kernels == [(1, 1, 1), (4, 4, 4), (4, 4, 4), (4, 4, 1), (4, 4, 1)]


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(encoder_depth=3, decoder_use_norm="instancenorm", aux_params=dict(classes=2))],
    ids=["default", "depth3-instancenorm-aux"],
)
def test_3d_forward_backward(kwargs):
    model = Linknet("resnet18", in_channels=2, classes=3, **kwargs)
    checks.check_forward_backward(model, torch.randn(2, 2, 32, 32, 32), classes=3)


def test_3d_anisotropic_strides_give_the_input_shape():
    model = Linknet("resnet18", in_channels=1, classes=2, strides=((2, 2, 1), 2, (2, 2, 1), 2, 2))
    assert model.encoder.reductions[-1] == (32, 32, 8)
    checks.check_eval_shapes(model, 2, (1, 1, 64, 64, 16))


def test_3d_ratios_other_than_two():
    """Ratios 4, 3 and 1 between levels: kernel 8 / 5 / 1 transposed convolutions."""
    strides = ((2, 2, 2), (4, 2, 1), (2, 2, 2), (2, 2, 1), (1, 2, 3))
    checks.check_eval_shapes(Linknet("resnet18", in_channels=1, classes=2, strides=strides), 2, (1, 1, 64, 32, 12))


def test_2d_forward_backward():
    model = Linknet("resnet18", in_channels=1, classes=2, spatial_dims=2)
    checks.check_forward_backward(model, torch.randn(2, 1, 64, 64), classes=2)


def test_sizes_not_divisible_by_the_output_stride_are_refused_clearly():
    model = Linknet("resnet18", in_channels=1, spatial_dims=2, strides=((2, 1), 2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"\(70, 45\) is not divisible by the encoder's total reduction \(32, 16\)"):
        model(torch.randn(1, 1, 70, 45))


def test_channels_last_3d_and_bf16_autocast():
    model = Linknet("resnet18", in_channels=1, classes=2, encoder_depth=3)
    checks.check_channels_last_bf16(model, torch.randn(2, 1, 16, 16, 16), classes=2)


def test_compiles_without_graph_breaks():
    checks.check_compiles(Linknet("resnet18", in_channels=1, classes=2, encoder_depth=3), torch.randn(1, 1, 16, 16, 16))


def test_meta_device():
    model = checks.check_meta(Linknet, (1, 1, 64, 64, 64), encoder_name="resnet50", in_channels=1, classes=3)
    assert model.name == "link-resnet50"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(decoder_use_norm="groupnorm"), r"Unknown normalization 'groupnorm'"),
        (dict(classes=0), r"classes must be a positive int"),
        (dict(aux_params=dict(classes=2, dropout=1.5)), r"dropout'\] must be in \[0, 1\), got 1.5"),
    ],
    ids=["bad-norm", "classes", "bad-dropout"],
)
def test_refused_at_construction(kwargs, match):
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        Linknet("resnet18", **kwargs)


def test_too_few_channels_for_a_block_is_refused():
    with pytest.raises(ValueError, match=r"reduces its input channels by 4 and needs at least 4, got 2"):
        LinknetDecoder((3, 2, 16), ((1, 1), (2, 2), (4, 4)), spatial_dims=2)


def test_zero_channel_placeholder_feature(fresh_registry):
    smp3d.register_encoder("placeholder_resnet18", checks.placeholder_resnet18)
    model = Linknet("placeholder_resnet18", in_channels=1, encoder_depth=4)
    # As smp: the block outputting at the placeholder's level keeps the channels of the level below.
    assert model.decoder.blocks[2].block[2][0].out_channels == 64 and model.decoder.fused == [True] * 2 + [False] * 2
    out = model(torch.randn(2, 1, 16, 16, 16))
    assert out.shape == (2, 1, 16, 16, 16)
    out.mean().backward()


def test_deprecated_decoder_use_batchnorm():
    with torch.device("meta"), pytest.warns(DeprecationWarning, match="decoder_use_batchnorm is deprecated"):
        model = Linknet("resnet18", encoder_depth=2, decoder_use_batchnorm=False)
    assert isinstance(model.decoder.blocks[0].block[0][1], nn.Identity)
