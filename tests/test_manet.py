"""MAnet: smp 0.6.0 parity in 2D, training in 3D, per-axis strides, fast paths, clear errors."""

from __future__ import annotations

import architecture_checks as checks
import pytest
import segmentation_models_pytorch as smp
import torch

import smp3d
from smp3d.decoders.manet import MAnet, PositionAttention
from smp3d.decoders.unet import UnetDecoderBlock

PARITY_CASES = {
    "defaults": dict(encoder_name="resnet18"),
    "aux-1ch-pab32-bilinear": dict(
        encoder_name="resnet18",
        in_channels=1,
        classes=4,
        decoder_channels=(64, 32, 32, 16, 16),
        decoder_pab_channels=32,
        decoder_interpolation="bilinear",
        aux_params=dict(classes=3, pooling="max", dropout=0.5, activation="sigmoid"),
    ),
    "depth3-identity-norm": dict(
        encoder_name="resnet18", encoder_depth=3, decoder_channels=(64, 32, 16), decoder_use_norm=False
    ),
    "depth1-pab-on-a-large-map": dict(encoder_name="resnet18", encoder_depth=1, decoder_channels=(16,), classes=2),
    "norm-dict-sigmoid-5ch": dict(
        encoder_name="resnet18",
        in_channels=5,
        decoder_channels=(64, 32, 32, 16, 8),
        decoder_use_norm={"type": "batchnorm", "momentum": 0.3},
        activation="sigmoid",
    ),
    "densenet121-nearest-exact": dict(
        encoder_name="densenet121", decoder_channels=(64, 32, 32, 16, 8), decoder_interpolation="nearest-exact"
    ),
}
# Smaller decoders for the 3D tests.
CHANNELS = (32, 16, 16, 8, 8)
DEPTH3 = dict(encoder_depth=3, decoder_channels=(32, 16, 8))


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_2d_equals_smp(case):
    checks.assert_case_matches_smp(smp.MAnet, MAnet, PARITY_CASES[case])


def test_defaults_match_smp_except_weights():
    checks.assert_defaults_match_smp(MAnet, smp.MAnet)


def test_3d_position_attention_on_one_slice_equals_2d():
    """The N-D PAB flattens every spatial axis: a (H, W, 1) volume behaves like the (H, W) image."""
    flat = PositionAttention(16, pab_channels=8, spatial_dims=2).eval()
    volume = PositionAttention(16, pab_channels=8, spatial_dims=3).eval()
    with torch.no_grad():
        for name, weight in flat.state_dict().items():
            target = volume.state_dict()[name]
            if weight.ndim == 4:  # a kernel: put the 2D one in the middle depth slice
                target.zero_()
                target[..., target.shape[-1] // 2] = weight
            else:
                target.copy_(weight)
        x = torch.randn(2, 16, 5, 7)
        torch.testing.assert_close(volume(x.unsqueeze(-1)).squeeze(-1), flat(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(encoder_depth=4, decoder_channels=(64, 32, 16, 8)),
        dict(
            **DEPTH3,
            decoder_interpolation="trilinear",
            decoder_use_norm="instancenorm",
            aux_params=dict(classes=2),
        ),
    ],
    ids=["depth4", "trilinear-instancenorm-aux"],
)
def test_3d_forward_backward(kwargs):
    model = MAnet("resnet18", in_channels=2, classes=3, **kwargs)
    checks.check_forward_backward(model, torch.randn(2, 2, 32, 32, 32), classes=3)


def test_3d_anisotropic_strides_give_the_input_shape():
    strides = ((2, 2, 1), 2, (2, 2, 1), 2, 2)
    model = MAnet("resnet18", in_channels=1, classes=2, strides=strides, decoder_channels=CHANNELS)
    assert model.encoder.reductions[-1] == (32, 32, 8)
    checks.check_eval_shapes(model, 2, (1, 1, 64, 64, 16))


def test_3d_ratios_other_than_two_and_odd_sizes():
    """Ratios 4, 3 and 1 between levels, and a size not divisible by the output stride."""
    strides = ((2, 2, 2), (4, 2, 1), (2, 2, 2), (2, 2, 1), (1, 2, 3))
    model = MAnet("resnet18", in_channels=1, classes=2, strides=strides, decoder_channels=CHANNELS)
    checks.check_eval_shapes(model, 2, (1, 1, 64, 32, 12), (1, 1, 50, 27, 13))


def test_2d_forward_backward_and_sizes_not_divisible_by_32():
    model = MAnet("resnet18", in_channels=1, classes=2, spatial_dims=2, decoder_channels=(64, 32, 16, 16, 8))
    checks.check_forward_backward(model, torch.randn(2, 1, 64, 64), classes=2)
    checks.check_eval_shapes(model, 2, (1, 1, 70, 45))


def test_channels_last_3d_and_bf16_autocast():
    model = MAnet("resnet18", in_channels=1, classes=2, **DEPTH3)
    checks.check_channels_last_bf16(model, torch.randn(2, 1, 16, 16, 16), classes=2)


def test_compiles_without_graph_breaks():
    checks.check_compiles(MAnet("resnet18", in_channels=1, classes=2, **DEPTH3), torch.randn(1, 1, 32, 32, 32))


def test_meta_device():
    model = checks.check_meta(MAnet, (1, 1, 64, 64, 64), encoder_name="resnet50", in_channels=1, classes=3)
    assert model.name == "manet-resnet50"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(encoder_depth=3), r"decoder_channels has 5 items but the encoder has 3 stages"),
        (dict(decoder_interpolation="transposed"), r"does not support decoder_interpolation='transposed'"),
        (dict(decoder_interpolation="bicubic"), r"'bicubic' exists only in 2D"),
        (dict(decoder_interpolation="cubic"), r"Unknown interpolation mode 'cubic'"),
        (dict(decoder_pab_channels=0), r"decoder_pab_channels must be a positive int, got 0"),
        (dict(decoder_use_norm="groupnorm"), r"Unknown normalization 'groupnorm'"),
        (dict(aux_params=dict(classes=2, pooling="sum")), r"pooling'\] must be 'avg' or 'max', got 'sum'"),
    ],
    ids=["channels-length", "transposed", "bicubic-3d", "bad-mode", "pab-channels", "bad-norm", "bad-pooling"],
)
def test_refused_at_construction(kwargs, match):
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        MAnet("resnet18", **kwargs)


def test_zero_channel_placeholder_feature(fresh_registry):
    smp3d.register_encoder("placeholder_resnet18", checks.placeholder_resnet18)
    model = MAnet("placeholder_resnet18", in_channels=1, decoder_channels=CHANNELS)
    assert isinstance(model.decoder.blocks[3], UnetDecoderBlock) and model.decoder.fused == [True] * 3 + [False] * 2
    out = model(torch.randn(2, 1, 16, 16, 16))
    assert out.shape == (2, 1, 16, 16, 16)
    out.mean().backward()
