"""Unet: smp 0.6.0 parity in 2D, training in 3D, per-axis strides, fast paths."""

from __future__ import annotations

import architecture_checks as checks
import pytest
import segmentation_models_pytorch as smp
import torch

import smp3d

PARITY_CASES = {
    "defaults": dict(encoder_name="resnet34"),
    "resnext-scse-aux-1ch": dict(
        encoder_name="resnext50_32x4d",
        in_channels=1,
        classes=4,
        decoder_attention_type="scse",
        aux_params=dict(classes=3, pooling="max", dropout=0.5, activation="softmax"),
    ),
    "bilinear-identity-norm": dict(encoder_name="resnet18", decoder_interpolation="bilinear", decoder_use_norm=False),
    "norm-dict-sigmoid-5ch": dict(
        encoder_name="resnet18",
        in_channels=5,
        decoder_use_norm={"type": "batchnorm", "momentum": 0.3},
        activation="sigmoid",
    ),
    "depth3": dict(encoder_name="resnet50", encoder_depth=3, decoder_channels=(64, 32, 16), classes=2),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_2d_unet_equals_smp(case):
    checks.assert_case_matches_smp(smp.Unet, smp3d.Unet, PARITY_CASES[case], batch=2)


def test_2d_unet_equals_smp_on_sizes_not_divisible_by_32():
    reference = smp.Unet("resnet18", encoder_weights=None)
    ours = smp3d.Unet("resnet18", spatial_dims=2)
    ours.load_state_dict(reference.state_dict(), strict=True)
    checks.assert_eval_outputs_match(reference, ours, torch.randn(1, 3, 70, 45), rtol=1e-5, atol=1e-5)


def test_defaults_match_smp_except_weights():
    checks.assert_defaults_match_smp(smp3d.Unet, smp.Unet)


def test_readme_example_shape():
    model = smp3d.Unet(encoder_name="resnet34", in_channels=1, classes=3)
    assert model(torch.randn(1, 1, 64, 64, 64)).shape == (1, 3, 64, 64, 64)


def test_issue_example_large_per_axis_strides():
    strides = ((2, 2, 2), (4, 2, 1), (2, 2, 2), (2, 2, 1), (1, 2, 3))
    model = smp3d.Unet(encoder_name="resnet18", in_channels=1, classes=3, strides=strides).eval()
    with torch.no_grad():
        assert model(torch.randn(4, 1, 224, 128, 12)).shape == (4, 3, 224, 128, 12)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(decoder_attention_type="scse", decoder_interpolation="trilinear"),
        dict(decoder_interpolation="transposed", strides=((2, 2, 1), (2, 2, 1), 2, 2, (2, 2, 1))),
        dict(decoder_use_norm="instancenorm", aux_params=dict(classes=2)),
        dict(decoder_use_norm="layernorm", encoder_depth=3, decoder_channels=(64, 32, 16)),
        dict(strides=((1, 1, 1), (2, 2, 1), (2, 2, 2), (1, 2, 2), (2, 1, 1))),
    ],
    ids=[
        "default",
        "scse-trilinear",
        "transposed-anisotropic",
        "instancenorm-aux",
        "layernorm-depth3",
        "stride1-stages",
    ],
)
def test_3d_forward_backward(kwargs):
    model = smp3d.Unet("resnet18", in_channels=2, classes=3, **kwargs)
    # As in smp, the last block has no skip connection, so its attention1 is never applied.
    checks.check_forward_backward(
        model, torch.randn(2, 2, 32, 32, 32), classes=3, unused=lambda n: ".4.attention1." in n
    )


def test_transposed_upsamples_by_the_ratio_of_reductions():
    strides = ((2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    model = smp3d.Unet("resnet18", strides=strides, decoder_interpolation="transposed")
    kernels = [tuple(block.upsample.kernel_size) for block in model.decoder.blocks]
    assert kernels == [(2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 1), (2, 2, 1)]


def test_2d_model_forward_backward():
    model = smp3d.Unet("resnet18", in_channels=1, classes=2, spatial_dims=2)
    checks.check_forward_backward(model, torch.randn(2, 1, 64, 64), classes=2)


def test_channels_last_3d_and_bf16_autocast():
    model = smp3d.Unet("resnet18", in_channels=1, classes=2)
    checks.check_channels_last_bf16(model, torch.randn(2, 1, 32, 32, 32), classes=2)


def test_compiles_without_graph_breaks():
    model = smp3d.Unet("resnet18", in_channels=1, classes=2, encoder_depth=3, decoder_channels=(32, 16, 8))
    checks.check_compiles(model, torch.randn(1, 1, 32, 32, 32))


def test_create_model_by_name():
    model = smp3d.create_model("UNet", encoder_name="resnet18", in_channels=1, classes=2, spatial_dims=2)
    assert isinstance(model, smp3d.Unet)
    with pytest.raises(KeyError, match="Unknown architecture 'unte'.*did you mean \\['unet'"):
        smp3d.create_model("unte")


def test_freeze_encoder_keeps_statistics_and_gradients_off():
    model = smp3d.Unet("resnet18", encoder_depth=2, decoder_channels=(16, 8), in_channels=1, classes=1)
    model.freeze_encoder()
    model.train()
    assert not model.encoder.bn1.training and model.decoder.training
    before = model.encoder.bn1.running_mean.clone()
    model(torch.randn(2, 1, 16, 16, 16)).mean().backward()
    assert torch.equal(before, model.encoder.bn1.running_mean)
    assert all(p.grad is None for p in model.encoder.parameters())
    model.unfreeze_encoder()
    assert model.encoder.bn1.training and all(p.requires_grad for p in model.encoder.parameters())


def test_decoder_and_head_are_initialized_in_3d():
    """smp's 3D fork checks Conv2d/BatchNorm2d only, leaving 3D decoders at torch defaults."""
    torch.manual_seed(0)
    model = smp3d.Unet("resnet18", encoder_depth=2, decoder_channels=(16, 8), decoder_use_norm={"type": "batchnorm"})
    conv = model.decoder.blocks[0].conv1[0]
    fan_in = conv.weight[0].numel()
    bound = (6 / fan_in) ** 0.5  # kaiming-uniform with ReLU gain
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    head = model.segmentation_head[0]
    assert torch.count_nonzero(head.bias) == 0


def test_predict_switches_to_eval():
    model = smp3d.Unet("resnet18", encoder_depth=2, decoder_channels=(16, 8))
    out = model.predict(torch.randn(1, 3, 16, 16, 16))
    assert not model.training and out.shape == (1, 1, 16, 16, 16) and not out.requires_grad
