"""Every bad input gets an error that says what was expected and what came."""

from __future__ import annotations

import pytest
import torch

import smp3d
from smp3d.base import SegmentationModel, check_input, padded_size


@pytest.fixture(scope="module")
def model_3d():
    return smp3d.Unet("resnet18", encoder_depth=2, decoder_channels=(16, 8), in_channels=1, classes=2).eval()


@pytest.fixture(scope="module")
def model_2d():
    return smp3d.Unet("resnet18", encoder_depth=2, decoder_channels=(16, 8), in_channels=3, spatial_dims=2).eval()


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (
            (1, 16, 16, 16),
            r"expects a 5D input \(B, C, H, W, D\), got a 4D tensor of shape \(1, 16, 16, 16\)\. Add the batch axis",
        ),
        ((2, 1, 16, 16), r"got a 4D tensor .* build the model with spatial_dims=2"),
        ((1, 1, 1, 8, 8, 8), r"expects a 5D input .* got a 6D tensor"),
        ((1, 3, 16, 16, 16), r"expects 1 input channel\(s\) on axis 1 of \(B, C, H, W, D\), got 3"),
        ((1, 16, 16, 16, 1), r"got 16 .* look like the last axis: move them with x\.movedim\(-1, 1\)"),
    ],
)
def test_3d_model_input_errors(model_3d, shape, message):
    with pytest.raises(ValueError, match=message):
        model_3d(torch.randn(*shape))


def test_2d_model_rejects_volumes(model_2d):
    with pytest.raises(ValueError, match=r"expects a 4D input \(B, C, H, W\).*spatial_dims=3 \(the default\)"):
        model_2d(torch.randn(1, 3, 16, 16, 16))


def test_non_tensor_input(model_3d):
    with pytest.raises(TypeError, match="expects a torch.Tensor, got ndarray"):
        import numpy as np

        model_3d(np.zeros((1, 1, 8, 8, 8)))


def test_divisibility_is_checked_where_the_architecture_needs_it():
    model = smp3d.Unet("resnet18", strides=((2, 2, 1), 2, 2, 2, (2, 2, 1)), decoder_interpolation="transposed")
    assert model.requires_divisible_input_shape
    with pytest.raises(
        ValueError,
        match=r"input spatial size \(64, 50, 12\) is not divisible by the encoder's total reduction "
        r"\(32, 32, 8\) \(per axis\)\. Pad the input to e.g\. \(64, 64, 16\) or change `strides`",
    ):
        model(torch.randn(1, 3, 64, 50, 12))


def test_unet_with_interpolation_accepts_any_size():
    model = smp3d.Unet("resnet18", encoder_depth=3, decoder_channels=(32, 16, 8)).eval()
    assert not model.requires_divisible_input_shape
    with torch.no_grad():
        assert model(torch.randn(1, 3, 21, 13, 9)).shape == (1, 1, 21, 13, 9)


def test_base_class_checks_divisibility_by_default():
    assert SegmentationModel.requires_divisible_input_shape
    check_input(torch.zeros(1, 2, 32, 16), 2, 2, (32, 16))
    with pytest.raises(ValueError, match=r"\(33, 16\) is not divisible .* \(32, 16\).* e\.g\. \(64, 16\)"):
        check_input(torch.zeros(1, 2, 33, 16), 2, 2, (32, 16))
    assert padded_size((33, 16, 1), (32, 16, 4)) == (64, 16, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(classes=0), ValueError, "classes must be a positive int .* got 0"),
        (dict(classes="3"), ValueError, "classes must be a positive int .* got '3'"),
        (dict(classes=True), ValueError, "classes must be a positive int"),
        (dict(encoder_depth=7), ValueError, "encoder_depth of 'resnet18' must be an int in 1..5, got 7"),
        (
            dict(encoder_depth=3),
            ValueError,
            r"decoder_channels has 5 items but the encoder has 3 stages .* e\.g\. decoder_channels=\(64, 32, 16\)",
        ),
        (dict(strides=((2, 2), 2, 2, 2, 2)), ValueError, r"`strides` item 1 is \(2, 2\)"),
        (dict(strides=(2, 2, 2)), ValueError, "`strides` has 3 items but encoder_depth is 5"),
        (dict(in_channels=-1), ValueError, "in_channels must be a positive int, got -1"),
        (dict(spatial_dims=4), ValueError, "spatial_dims must be 2"),
        (dict(decoder_interpolation="cubic"), ValueError, "Unknown interpolation mode 'cubic'"),
        (dict(decoder_interpolation="bicubic"), ValueError, "'bicubic' exists only in 2D"),
        (dict(decoder_attention_type="cbam"), ValueError, "Unknown attention type 'cbam'"),
        (dict(decoder_use_norm="groupnorm"), ValueError, "Unknown normalization 'groupnorm'"),
        (dict(decoder_use_norm=3.0), TypeError, "use_norm must be a bool"),
        (dict(decoder_use_norm="inplace"), RuntimeError, "needs the optional package inplace_abn"),
        (dict(aux_params=dict(clases=2)), ValueError, r"aux_params takes the keys .* got \['clases'\]"),
        (dict(aux_params=dict(classes=2, pooling="sum")), ValueError, "must be 'avg' or 'max', got 'sum'"),
        (dict(aux_params=dict(classes=2, dropout=1.5)), ValueError, r"must be in \[0, 1\), got 1.5"),
        (dict(activation="softmax3d"), ValueError, "Unknown activation 'softmax3d'"),
        (
            dict(encoder_weights="imagenet"),
            smp3d.encoders.PretrainedWeightsUnavailableError,
            "smp3d-convert-weights resnet18 --tag imagenet --output resnet18.imagenet",
        ),
        (dict(encoder_weights="no-such-tag"), ValueError, r"neither an existing file .* \(tags: imagenet, ssl, swsl\)"),
    ],
)
def test_constructor_errors(kwargs, error, message):
    if kwargs.get("decoder_use_norm") == "inplace":
        pytest.importorskip("smp3d")  # inplace_abn is optional; the message is what we test
        try:
            import inplace_abn  # noqa: F401

            pytest.skip("inplace_abn is installed here")
        except ImportError:
            pass
    arguments = dict(encoder_name="resnet18", encoder_depth=5) | kwargs
    with pytest.raises(error, match=message):
        smp3d.Unet(**arguments)


def _tiny_unet() -> smp3d.Unet:
    return smp3d.Unet("plain", encoder_depth=2, decoder_channels=(8, 4), base_channels=4, in_channels=1, classes=2)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return _tiny_unet().eval()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.uint8, torch.bool])
def test_input_dtype_other_than_the_model_s(tiny_model, dtype):
    x = torch.zeros(1, 1, 8, 8, 8, dtype=dtype)
    fix = r"x\.float\(\), or the model with model\.\w+\(\), or run it under torch\.autocast"
    message = rf"Unet's parameters are torch\.float32 but the input is {dtype}\. Convert the input with " + (
        fix if dtype.is_floating_point else r"x\.float\(\)\.$"
    )
    with pytest.raises(TypeError, match=message):
        tiny_model(x)


def test_matching_dtypes_and_autocast_pass(tiny_model):
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        reference = tiny_model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert tiny_model(x).dtype == torch.bfloat16  # float32 input, float32 model: autocast casts
            assert tiny_model(x.bfloat16()).dtype == torch.bfloat16
        double = _tiny_unet()
        double.load_state_dict(tiny_model.state_dict())
        double = double.double().eval()
        torch.testing.assert_close(double(x.double()).float(), reference, rtol=1e-4, atol=1e-4)
        assert double.bfloat16()(x.bfloat16()).dtype == torch.bfloat16


def test_input_on_another_device_than_the_model(tiny_model):
    with pytest.raises(ValueError, match=r"Unet's parameters are on cpu but the input is on meta\. Move the input"):
        tiny_model(torch.empty(1, 1, 8, 8, 8, device="meta"))
    with torch.device("meta"):
        meta_model = _tiny_unet()
    with pytest.raises(ValueError, match=r"parameters are on meta but the input is on cpu.*model\.to\('cpu'\)"):
        meta_model(torch.zeros(1, 1, 8, 8, 8))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 1, 0, 8, 8), r"\(1, 1, 0, 8, 8\): spatial axis 2 \(H\) is empty \(size 0\)"),
        ((1, 1, 8, 8, 0), r"spatial axis 4 \(D\) is empty"),
        ((1, 1, 0, 8, 0), r"spatial axis 2 \(H\), axis 4 \(D\) is empty"),
    ],
)
def test_empty_spatial_axis(tiny_model, shape, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(torch.zeros(shape))
