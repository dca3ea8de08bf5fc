"""UnetPlusPlus: smp 0.6.0 parity in 2D, training in 3D, per-axis strides, fast paths, clear errors."""

from __future__ import annotations

import architecture_checks as checks
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn as nn

import smp3d
from smp3d.decoders.unetplusplus import EmptyNode, UnetPlusPlus

PARITY_CASES = {
    "defaults": dict(encoder_name="resnet34"),
    "scse-aux-1ch": dict(
        encoder_name="resnet18",
        in_channels=1,
        classes=4,
        decoder_channels=(64, 32, 32, 16, 16),
        decoder_attention_type="scse",
        aux_params=dict(classes=3, pooling="max", dropout=0.5, activation="softmax"),
    ),
    "depth3-bilinear-identity-norm": dict(
        encoder_name="resnet18",
        encoder_depth=3,
        decoder_channels=(64, 32, 16),
        decoder_interpolation="bilinear",
        decoder_use_norm=False,
    ),
    "depth2-nearest-exact": dict(
        encoder_name="resnet18", encoder_depth=2, decoder_channels=(32, 16), decoder_interpolation="nearest-exact"
    ),
    "norm-dict-sigmoid-5ch": dict(
        encoder_name="resnet18",
        in_channels=5,
        decoder_use_norm={"type": "batchnorm", "momentum": 0.3},
        decoder_channels=(64, 32, 32, 16, 8),
        activation="sigmoid",
        classes=2,
    ),
    "vgg11-center-block": dict(encoder_name="vgg11", decoder_channels=(64, 32, 32, 16, 8)),
    "efficientnet-b0-area": dict(
        encoder_name="efficientnet-b0", decoder_channels=(64, 32, 32, 16, 8), decoder_interpolation="area"
    ),
}
# Smaller decoders for the 3D tests.
CHANNELS = (32, 16, 16, 8, 8)
DEPTH3 = dict(encoder_depth=3, decoder_channels=(32, 16, 8))


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_2d_equals_smp(case):
    checks.assert_case_matches_smp(smp.UnetPlusPlus, UnetPlusPlus, PARITY_CASES[case])


def test_2d_node_names_are_smps():
    ours = UnetPlusPlus("resnet18", spatial_dims=2, encoder_depth=4, decoder_channels=(64, 32, 16, 8))
    reference = smp.UnetPlusPlus("resnet18", encoder_weights=None, encoder_depth=4, decoder_channels=(64, 32, 16, 8))
    assert list(ours.decoder.blocks) == list(reference.decoder.blocks)


def test_defaults_match_smp_except_weights():
    checks.assert_defaults_match_smp(UnetPlusPlus, smp.UnetPlusPlus)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(encoder_depth=4, decoder_channels=(64, 32, 16, 8)),
        dict(
            encoder_depth=3,
            decoder_channels=(32, 16, 16),
            decoder_attention_type="scse",
            decoder_interpolation="trilinear",
        ),
        dict(
            encoder_depth=3, decoder_channels=(32, 16, 8), decoder_use_norm="instancenorm", aux_params=dict(classes=2)
        ),
    ],
    ids=["depth4", "scse-trilinear", "instancenorm-aux"],
)
def test_3d_forward_backward(kwargs):
    model = UnetPlusPlus("resnet18", in_channels=2, classes=3, **kwargs)
    # As in smp, the last node has no skip connection, so its attention1 is never applied.
    last = f"decoder.blocks.x_0_{model.encoder.depth - 1}.attention1."
    checks.check_forward_backward(model, torch.randn(2, 2, 32, 32, 32), classes=3, unused=lambda n: n.startswith(last))


def test_3d_anisotropic_strides_give_the_input_shape():
    strides = ((2, 2, 1), 2, (2, 2, 1), 2, 2)
    model = UnetPlusPlus("resnet18", in_channels=1, classes=2, strides=strides, decoder_channels=CHANNELS)
    assert model.encoder.reductions[-1] == (32, 32, 8)
    checks.check_eval_shapes(model, 2, (1, 1, 64, 64, 16))


def test_3d_ratios_other_than_two_and_odd_sizes():
    """Ratios 4, 3 and 1 between levels, and a size not divisible by the output stride."""
    strides = ((2, 2, 2), (4, 2, 1), (2, 2, 2), (2, 2, 1), (1, 2, 3))
    model = UnetPlusPlus("resnet18", in_channels=1, classes=2, strides=strides, decoder_channels=CHANNELS)
    checks.check_eval_shapes(model, 2, (1, 1, 64, 32, 12), (1, 1, 50, 27, 13))


def test_2d_forward_backward_and_sizes_not_divisible_by_32():
    model = UnetPlusPlus("resnet18", in_channels=1, classes=2, spatial_dims=2, decoder_channels=(64, 32, 16, 16, 8))
    checks.check_forward_backward(model, torch.randn(2, 1, 64, 64), classes=2)
    checks.check_eval_shapes(model, 2, (1, 1, 70, 45))


def test_vgg_center_block_is_built_but_not_applied_like_smp():
    model = UnetPlusPlus("vgg11", spatial_dims=2, encoder_depth=3, decoder_channels=(32, 16, 8))
    assert isinstance(model.decoder.center, nn.Sequential) and len(model.decoder.center) == 2
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    assert all(p.grad is None for p in model.decoder.center.parameters())


def test_channels_last_3d_and_bf16_autocast():
    model = UnetPlusPlus("resnet18", in_channels=1, classes=2, **DEPTH3)
    checks.check_channels_last_bf16(model, torch.randn(2, 1, 32, 32, 32), classes=2)


def test_compiles_without_graph_breaks():
    checks.check_compiles(UnetPlusPlus("resnet18", in_channels=1, classes=2, **DEPTH3), torch.randn(1, 1, 32, 32, 32))


def test_meta_device():
    model = checks.check_meta(UnetPlusPlus, (1, 1, 64, 64, 64), encoder_name="resnet50", in_channels=1, classes=3)
    assert model.name == "unetplusplus-resnet50"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            dict(encoder_depth=1, decoder_channels=(16,)),
            ValueError,
            r"UnetPlusPlus supports encoder_depth in 2\.\.5, got 1",
        ),
        (dict(encoder_depth=3), ValueError, r"decoder_channels has 5 items but the encoder has 3 stages"),
        (dict(decoder_interpolation="transposed"), ValueError, r"does not support decoder_interpolation='transposed'"),
        (dict(decoder_interpolation="bicubic"), ValueError, r"'bicubic' exists only in 2D"),
        (dict(decoder_interpolation="cubic"), ValueError, r"Unknown interpolation mode 'cubic'"),
        (dict(decoder_attention_type="cbam"), ValueError, r"Unknown attention type 'cbam'"),
        (dict(decoder_use_norm="groupnorm"), ValueError, r"Unknown normalization 'groupnorm'"),
        (dict(classes=0), ValueError, r"classes must be a positive int"),
    ],
    ids=["depth1", "channels-length", "transposed", "bicubic-3d", "bad-mode", "bad-attention", "bad-norm", "classes"],
)
def test_refused_at_construction(kwargs, error, match):
    with torch.device("meta"), pytest.raises(error, match=match):
        UnetPlusPlus("resnet18", **kwargs)


def test_zero_channel_placeholder_feature(fresh_registry):
    smp3d.register_encoder("placeholder_resnet18", checks.placeholder_resnet18)
    model = UnetPlusPlus("placeholder_resnet18", in_channels=1, decoder_channels=CHANNELS)
    assert isinstance(model.decoder.blocks["x_1_3"], EmptyNode)
    out = model(torch.randn(2, 1, 32, 32, 32))
    assert out.shape == (2, 1, 32, 32, 32)
    out.mean().backward()
