"""DeepLabV3 / DeepLabV3+: smp 0.6.0 parity in 2D, training in 3D, per-axis strides and rates, fast paths."""

from __future__ import annotations

import inspect

import architecture_checks as checks
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn as nn

import smp3d
from smp3d.decoders.deeplabv3 import DeepLabV3, DeepLabV3Plus
from smp3d.decoders.deeplabv3.decoder import highres_level

ARCHS = {"DeepLabV3": (smp.DeepLabV3, DeepLabV3), "DeepLabV3Plus": (smp.DeepLabV3Plus, DeepLabV3Plus)}

AUX = dict(classes=3, pooling="max", dropout=0.5, activation="sigmoid")
PARITY_CASES = {
    "v3-defaults": ("DeepLabV3", dict(encoder_name="resnet34")),
    "v3-os16-separable-aux-1ch": (
        "DeepLabV3",
        dict(
            encoder_name="resnet18",
            encoder_output_stride=16,
            decoder_aspp_separable=True,
            in_channels=1,
            aux_params=AUX,
        ),
    ),
    "v3-depth4-os8-5ch-rates": (
        "DeepLabV3",
        dict(
            encoder_name="resnet18",
            encoder_depth=4,
            in_channels=5,
            classes=4,
            decoder_channels=64,
            decoder_atrous_rates=(6, 12, 18),
            decoder_aspp_dropout=0.1,
            activation="sigmoid",
        ),
    ),
    "v3-resnext-depth3": ("DeepLabV3", dict(encoder_name="resnext50_32x4d", encoder_depth=3, decoder_channels=32)),
    "v3-explicit-upsampling": ("DeepLabV3", dict(encoder_name="resnet18", encoder_depth=4, upsampling=4)),
    "v3-depth2": ("DeepLabV3", dict(encoder_name="resnet18", encoder_depth=2, decoder_channels=16)),
    # Other families, dilated by their own stage_modules (smp's get_stages) to output stride 8 / 16.
    "v3-efficientnet-os16": ("DeepLabV3", dict(encoder_name="efficientnet-b0", encoder_output_stride=16, classes=2)),
    "v3-se_resnext50-depth4": ("DeepLabV3", dict(encoder_name="se_resnext50_32x4d", encoder_depth=4)),
    "v3plus-defaults": ("DeepLabV3Plus", dict(encoder_name="resnet34")),
    "v3plus-os8-plain-aux": (
        "DeepLabV3Plus",
        dict(
            encoder_name="resnet18",
            encoder_output_stride=8,
            decoder_aspp_separable=False,
            decoder_aspp_dropout=0.2,
            classes=2,
            aux_params=AUX,
        ),
    ),
    "v3plus-depth4-os16-1ch": ("DeepLabV3Plus", dict(encoder_name="resnet18", encoder_depth=4, in_channels=1)),
    "v3plus-depth4-os8-rates": (
        "DeepLabV3Plus",
        dict(
            encoder_name="resnet18",
            encoder_depth=4,
            encoder_output_stride=8,
            decoder_channels=64,
            decoder_atrous_rates=(2, 4, 6),
        ),
    ),
    "v3plus-resnext-depth3-5ch": (
        "DeepLabV3Plus",
        dict(encoder_name="resnext50_32x4d", encoder_depth=3, in_channels=5, decoder_channels=32, activation="tanh"),
    ),
    "v3plus-explicit-upsampling": ("DeepLabV3Plus", dict(encoder_name="resnet18", encoder_depth=3, upsampling=2)),
    "v3plus-efficientnet-depth3": ("DeepLabV3Plus", dict(encoder_name="efficientnet-b0", encoder_depth=3)),
    "v3plus-dpn68": ("DeepLabV3Plus", dict(encoder_name="dpn68", classes=2)),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_2d_equals_smp(case):
    arch, kwargs = PARITY_CASES[case]
    smp_class, our_class = ARCHS[arch]
    reference = smp_class(encoder_weights=None, **kwargs)
    ours = our_class(spatial_dims=2, **kwargs)
    # Shallow encoders: smp keeps (and dilates) the unused deeper stages; we build only the used ones.
    ours_state = ours.state_dict()
    unused = sorted(k for k in reference.state_dict() if k.startswith("encoder.") and k not in ours_state)
    assert not unused or kwargs.get("encoder_depth", 5) < 5, unused[:5]
    x = torch.randn(1, kwargs.get("in_channels", 3), 64, 96)
    checks.assert_loads_and_matches_smp(reference, ours, x, drop_prefixes=unused)


def test_2d_training_mode_equals_smp():
    """Batch statistics (incl. the 1x1 pooling branch) and gradients match too (dropout off)."""
    kwargs = dict(encoder_name="resnet18", encoder_depth=3, decoder_channels=16, decoder_aspp_dropout=0.0)
    reference = smp.DeepLabV3Plus(encoder_weights=None, **kwargs)
    ours = DeepLabV3Plus(spatial_dims=2, **kwargs)
    unused = checks.smp_unused_stages(kwargs["encoder_depth"])
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith(unused)})
    x = torch.randn(2, 3, 32, 32)
    expected, got = reference(x), ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    expected.square().mean().backward()
    got.square().mean().backward()
    grads = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_defaults_match_smp_except_weights_and_upsampling(arch):
    smp_class, our_class = ARCHS[arch]
    ours = checks.assert_defaults_match_smp(our_class, smp_class, differing=checks.WEIGHTS_AND_UPSAMPLING)
    theirs = [n for n in inspect.signature(smp_class.__init__).parameters if n != "kwargs"]
    assert list(ours)[: len(theirs)] == theirs


def test_legacy_sequential_decoder_keys_load():
    """smp's older DeepLabV3 stored its decoder as a Sequential: decoder.0/1/2 = aspp/conv/bn."""
    model = DeepLabV3("resnet18", encoder_depth=3, decoder_channels=16, spatial_dims=2).eval()
    state = model.state_dict()
    legacy = {
        k.replace("decoder.aspp.", "decoder.0.")
        .replace("decoder.conv.", "decoder.1.")
        .replace("decoder.bn.", "decoder.2."): v
        for k, v in state.items()
    }
    assert any(k.startswith("decoder.0.") for k in legacy)
    fresh = DeepLabV3("resnet18", encoder_depth=3, decoder_channels=16, spatial_dims=2).eval()
    given = dict(legacy)
    fresh.load_state_dict(given, strict=True)
    assert given == legacy  # the caller's dict is not modified
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
    # Also when the model is a submodule (keys carry a prefix).
    wrapper = nn.Sequential(DeepLabV3("resnet18", encoder_depth=3, decoder_channels=16, spatial_dims=2))
    wrapper.load_state_dict({f"0.{k}": v for k, v in legacy.items()}, strict=True)
    # And the same checkpoint through smp's own renaming gives the same model.
    reference = smp.DeepLabV3("resnet18", encoder_depth=3, decoder_channels=16, encoder_weights=None)
    reference.load_state_dict({**reference.state_dict(), **dict(legacy)}, strict=True)


@pytest.mark.parametrize(
    "arch, kwargs",
    [
        ("DeepLabV3", dict()),
        ("DeepLabV3", dict(encoder_depth=4, decoder_aspp_separable=True, aux_params=dict(classes=2))),
        ("DeepLabV3Plus", dict()),
        (
            "DeepLabV3Plus",
            dict(encoder_depth=4, encoder_output_stride=(8, 8, 4), decoder_atrous_rates=((6, 6, 2), 12, (18, 18, 3))),
        ),
    ],
    ids=["v3", "v3-depth4-separable-aux", "v3plus", "v3plus-per-axis-os-depth4-rates"],
)
def test_3d_forward_backward(arch, kwargs):
    model = ARCHS[arch][1]("resnet18", in_channels=2, classes=3, decoder_channels=32, **kwargs)
    checks.check_forward_backward(model, torch.randn(2, 2, 32, 32, 32), classes=3)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_anisotropic_strides_give_input_shape(arch):
    strides = ((2, 2, 1), 2, (2, 2, 1), 2, 2)  # reductions up to (32, 32, 8)
    model = ARCHS[arch][1]("resnet18", in_channels=1, classes=2, decoder_channels=32, strides=strides)
    checks.check_eval_shapes(model, 2, (1, 1, 64, 64, 16))
    if arch == "DeepLabV3":  # output stride 8 on the in-plane axes; the thick-slice axis was already at 8
        assert model.encoder.reductions[-1] == (8, 8, 8)
        assert model.segmentation_head[1].scale_factor == (8.0, 8.0, 8.0)
    else:  # output stride 16 in-plane, 8 across slices; fused with the (4, 4, 2) feature
        assert model.encoder.reductions[-1] == (16, 16, 8)
        assert model.decoder.highres_level == 2 and model.encoder.reductions[2] == (4, 4, 2)
        assert model.segmentation_head[1].scale_factor == (4.0, 4.0, 2.0)


def test_per_axis_atrous_rates_reach_the_convolutions():
    rates = ((12, 12, 2), (24, 24, 4), 3)
    model = DeepLabV3("resnet18", encoder_depth=3, decoder_channels=8, decoder_atrous_rates=rates)
    convs = [model.decoder.aspp.convs[i][0] for i in (1, 2, 3)]
    assert [c.dilation for c in convs] == [(12, 12, 2), (24, 24, 4), (3, 3, 3)]
    assert [c.padding for c in convs] == [(12, 12, 2), (24, 24, 4), (3, 3, 3)]
    separable = DeepLabV3Plus("resnet18", encoder_depth=3, decoder_channels=8, decoder_atrous_rates=rates)
    depthwise = separable.decoder.aspp[0].convs[1][0][0]
    assert depthwise.dilation == (12, 12, 2) and depthwise.groups == 128


def test_highres_level_follows_the_reductions():
    # A stride-1 first stage: reduction 4 is reached one feature later than smp's fixed features[2].
    model = DeepLabV3Plus("resnet18", encoder_depth=4, decoder_channels=16, strides=(1, 2, 2, 2))
    assert model.decoder.highres_level == 3 and model.encoder.reductions[3] == (4, 4, 4)
    checks.check_eval_shapes(model, 1, (1, 3, 32, 32, 32))
    # 0-channel placeholder features are skipped; nothing reaching 4 -> the coarsest intermediate one.
    assert highres_level((3, 0, 16, 32, 64), ((1,), (2,), (4,), (8,), (16,))) == 2
    assert highres_level((3, 8, 16, 32), ((1,), (1,), (2,), (2,))) == 2
    with pytest.raises(ValueError, match="intermediate encoder feature with channels"):
        highres_level((3, 0, 0, 64), ((1,), (2,), (4,), (8,)))


def test_2d_forward_backward():
    for cls in (DeepLabV3, DeepLabV3Plus):
        model = cls("resnet18", in_channels=1, classes=2, decoder_channels=32, spatial_dims=2)
        checks.check_forward_backward(model, torch.randn(2, 1, 32, 32), classes=2)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_channels_last_3d_and_bf16_autocast(arch):
    model = ARCHS[arch][1]("resnet18", in_channels=1, classes=2, encoder_depth=3, decoder_channels=16)
    checks.check_channels_last_bf16(model, torch.randn(2, 1, 16, 16, 16), classes=2)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_compiles_without_graph_breaks(arch):
    depth = 3 if arch == "DeepLabV3Plus" else 2
    model = ARCHS[arch][1]("resnet18", in_channels=1, classes=2, encoder_depth=depth, decoder_channels=16)
    checks.check_compiles(model, torch.randn(1, 1, 32, 32, 32))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_meta_device(arch):
    strides = ((2, 2, 1), 2, 2, 2, 2)
    checks.check_meta(
        ARCHS[arch][1], (2, 1, 64, 64, 32), encoder_name="resnet50", in_channels=1, classes=4, strides=strides
    )


@pytest.mark.parametrize(
    "arch, kwargs, match",
    [
        ("DeepLabV3Plus", dict(encoder_depth=2), r"encoder_depth in 3\.\.5, got 2\. .*at least 3 encoder stages"),
        ("DeepLabV3Plus", dict(encoder_depth=6), r"encoder_depth in 3\.\.5, got 6"),
        ("DeepLabV3", dict(encoder_output_stride=12), r"cannot reach an output stride of 12 along axis 0"),
        ("DeepLabV3", dict(encoder_output_stride="8"), r"encoder_output_stride must be a positive int .* got '8'"),
        ("DeepLabV3Plus", dict(encoder_output_stride=(8, 8)), r"tuple of 3 positive ints .* got \(8, 8\)"),
        ("DeepLabV3", dict(decoder_atrous_rates=(12, 24)), r"must be 3 dilation rates.*got \(12, 24\)"),
        ("DeepLabV3", dict(decoder_atrous_rates=((12, 12), 24, 36)), r"tuple of 3\s+positive ints"),
        ("DeepLabV3Plus", dict(decoder_atrous_rates=(0, 24, 36)), r"must be 3 dilation rates.*got \(0, 24, 36\)"),
        ("DeepLabV3", dict(decoder_channels=0), r"DeepLabV3: decoder_channels must be a positive int, got 0"),
        ("DeepLabV3Plus", dict(decoder_channels=(256,)), r"decoder_channels must be a positive int"),
        ("DeepLabV3", dict(decoder_aspp_dropout=1.5), r"decoder_aspp_dropout must be a probability .* got 1\.5"),
        ("DeepLabV3Plus", dict(upsampling=0), r"DeepLabV3Plus: upsampling must be None .* got 0"),
        ("DeepLabV3", dict(upsampling=(4, 4)), r"DeepLabV3: upsampling must be None .* got \(4, 4\)"),
    ],
)
def test_construction_errors(arch, kwargs, match):
    kwargs = {"encoder_name": "resnet18", **kwargs}
    with pytest.raises(ValueError, match=match), torch.device("meta"):
        ARCHS[arch][1](**kwargs)


def test_encoder_without_dilation_hook(fresh_registry):
    smp3d.register_encoder("undilatable", checks.StridedConvEncoder)
    with pytest.raises(ValueError, match=r"DeepLabV3\('undilatable'\) needs encoder_output_stride=8.*make_dilated"):
        DeepLabV3("undilatable")
    # Works where no dilation is needed: a shallow encoder, or the encoder's own output stride.
    shallow = DeepLabV3("undilatable", encoder_depth=3, decoder_channels=8)
    assert shallow(torch.randn(2, 3, 16, 16, 16)).shape == (2, 1, 16, 16, 16)
    checks.check_eval_shapes(
        DeepLabV3Plus("undilatable", encoder_output_stride=32, decoder_channels=8), 1, (1, 3, 32, 32, 32)
    )


def test_names_and_divisibility():
    model = DeepLabV3("resnet18", encoder_depth=3, decoder_channels=8, spatial_dims=2)
    plus = DeepLabV3Plus("resnet18", encoder_depth=3, decoder_channels=8, spatial_dims=2)
    assert model.name == "deeplabv3-resnet18" and plus.name == "deeplabv3plus-resnet18"
    assert model.output_stride == (8, 8)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 3, 36, 36))
