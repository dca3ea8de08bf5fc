"""The CPU batch-1 convolution split (smp3d.layers.conv) and the fused nearest-upsample -> conv
(smp3d.layers.upsample): the same function as the plain computation, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from architecture_checks import torch_keeps_channels_last_bf16

import smp3d
from smp3d import layers
from smp3d.decoders.unet import UnetDecoderBlock
from smp3d.layers.conv import splits_for_onednn

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _assert_same_grads(out, expected, inputs, tol):
    """The gradients of ``out`` and ``expected`` for one random upstream gradient match."""
    inputs = [t for t in inputs if t is not None]
    grad = torch.randn_like(out)
    got, want = torch.autograd.grad(out, inputs, grad), torch.autograd.grad(expected, inputs, grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


# --- the split convolution -------------------------------------------------------------------


@pytest.mark.parametrize(
    "channels, size, kernel, stride, padding, dilation",
    [
        (16, (16, 16, 16), 3, 1, 1, 1),  # the common case
        (16, (15, 16, 17), 3, 1, 1, 1),  # an odd number of output rows along the split axis
        (8, (17, 20, 16), 3, 2, 1, 1),  # strided
        (8, (16, 12, 12), (3, 1, 3), 1, (1, 0, 1), 1),  # anisotropic kernel and padding
        (8, (18, 14, 12), 3, 1, 2, 2),  # dilated
        (4, (12, 12, 12), 2, 1, 1, 1),  # an even kernel (the fused upsample's phase kernels)
    ],
)
def test_split_conv_equals_the_plain_conv(channels, size, kernel, stride, padding, dilation):
    torch.manual_seed(0)
    conv = layers.Conv3d(channels, 6, kernel, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(1, channels, *size, requires_grad=True)
    assert splits_for_onednn(x, conv.weight, conv.stride, conv.padding, conv.dilation, conv.groups)
    out = conv(x)
    expected = F.conv3d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    _assert_same_grads(out, expected, [x, conv.weight, conv.bias], 1e-4)


def test_split_conv_is_exact_in_float64_math():
    # The split is an exact rearrangement: run it in float64 by calling the private helper directly.
    from smp3d.layers.conv import _split_conv

    torch.manual_seed(0)
    x = torch.randn(1, 3, 9, 7, 8, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, 3, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    for stride in ((1, 1, 1), (2, 1, 2)):
        got = _split_conv(x, w, b, stride, (1, 1, 1), (1, 1, 1))
        torch.testing.assert_close(got, F.conv3d(x, w, b, stride, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "shape, weight, dtype, expected",
    [
        ((1, 64, 16, 16, 16), (64, 64, 3, 3, 3), torch.float32, True),
        ((2, 64, 16, 16, 16), (64, 64, 3, 3, 3), torch.float32, False),  # a batch: PyTorch uses oneDNN itself
        ((1, 32, 32, 32, 32), (32, 32, 3, 3, 3), torch.float32, False),  # large: oneDNN already
        ((1, 512, 2, 2, 2), (512, 512, 3, 3, 3), torch.float32, False),  # tiny output: native is as fast
        ((1, 64, 16, 16, 16), (64, 64, 3, 3, 3), torch.float64, False),
        ((1, 64, 16, 16), (64, 64, 3, 3), torch.float32, False),  # 2D: native is as fast (measured)
    ],
)
def test_split_rule(shape, weight, dtype, expected):
    x, w = torch.empty(shape, dtype=dtype), torch.empty(weight, dtype=dtype)
    n = x.dim() - 2
    assert splits_for_onednn(x, w, (1,) * n, (1,) * n, (1,) * n, 1) is expected


def test_conv_layers_are_torch_layers():
    for spatial_dims, torch_class in ((1, nn.Conv1d), (2, nn.Conv2d), (3, nn.Conv3d)):
        layer = layers.conv(spatial_dims)(2, 3, 3)
        assert isinstance(layer, torch_class) and list(layer.state_dict()) == ["weight", "bias"]
    # Other padding modes take torch's own path.
    circular = layers.Conv3d(2, 2, 3, padding=1, padding_mode="circular")
    x = torch.randn(1, 2, 16, 16, 16)
    torch.testing.assert_close(circular(x), nn.Conv3d._conv_forward(circular, x, circular.weight, circular.bias))


# --- the fused nearest-upsample -> conv ------------------------------------------------------


@pytest.mark.parametrize(
    "scale, skip_channels, bias",
    [
        ((2, 2, 2), 0, True),
        ((2, 2, 2), 5, False),
        ((1, 2, 2), 3, True),  # anisotropic: one axis is not upsampled
        ((2, 1, 2), 0, False),
        ((2, 2), 4, True),
        ((2, 1), 0, False),
        ((2,), 2, True),
    ],
)
def test_upsample_conv_equals_interpolate_cat_conv(scale, skip_channels, bias):
    torch.manual_seed(0)
    n = len(scale)
    f64 = dict(dtype=torch.float64)
    x = torch.randn(2, 4, *(5, 6, 7)[:n], **f64, requires_grad=True)
    w = torch.randn(3, 4 + skip_channels, *(3,) * n, **f64, requires_grad=True)
    b = torch.randn(3, **f64, requires_grad=True) if bias else None
    size = [s * k for s, k in zip(x.shape[2:], scale, strict=True)]
    skip = torch.randn(2, skip_channels, *size, **f64, requires_grad=True) if skip_channels else None
    up = F.interpolate(x, size=size, mode="nearest")
    expected = CONV[n](up if skip is None else torch.cat([up, skip], 1), w, b, padding=1)
    out = layers.upsample_conv(x, w, b, scale, skip)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    _assert_same_grads(out, expected, [x, w, b, skip], 1e-12)


@pytest.mark.parametrize("skip_channels", [0, 3])
def test_upsample_conv_keeps_channels_last(skip_channels):
    cl = torch.channels_last_3d
    x, w = torch.randn(1, 4, 8, 6, 8), torch.randn(6, 4 + skip_channels, 3, 3, 3)
    skip = torch.randn(1, skip_channels, 16, 12, 8) if skip_channels else None
    expected = layers.upsample_conv(x, w, None, (2, 2, 1), skip)
    out = layers.upsample_conv(
        x.contiguous(memory_format=cl), w, None, (2, 2, 1), None if skip is None else skip.contiguous(memory_format=cl)
    )
    assert out.is_contiguous(memory_format=cl) and not expected.is_contiguous(memory_format=cl)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_phase_kernels_count_the_taps():
    w = torch.ones(1, 1, 3, 3, 3)
    k = layers.phase_kernels(w, (2, 2, 2))
    assert k.shape == (8, 1, 2, 2, 2)
    # Every phase kernel still sums all 27 taps (each output voxel reads the same 27 products).
    assert torch.equal(k.sum((1, 2, 3, 4)), torch.full((8,), 27.0))
    assert layers.phase_kernels(w, (1, 2, 1)).shape == (2, 1, 3, 2, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(scale=(3, 2, 2)), "1 or 2"),
        (dict(scale=(2, 2)), "1 or 2"),
        (dict(weight=torch.randn(3, 4, 1, 1, 1)), "3\\^3 kernel"),
        (dict(weight=torch.randn(3, 5, 3, 3, 3)), "channels"),
        (dict(skip=torch.randn(1, 2, 8, 8, 7)), "spatial size"),
    ],
)
def test_upsample_conv_errors(kwargs, match):
    args = dict(x=torch.randn(1, 4, 4, 4, 4), weight=torch.randn(3, 4, 3, 3, 3), bias=None, scale=(2, 2, 2))
    with pytest.raises(ValueError, match=match):
        layers.upsample_conv(**{**args, **kwargs})


@pytest.mark.parametrize(
    "kwargs, fusable",
    [
        (dict(), True),
        (dict(attention_type="scse"), False),  # attention between the concatenation and the conv
        (dict(interpolation="transposed"), False),
        (dict(interpolation="trilinear"), False),
        (dict(interpolation="nearest-exact"), True),
        (dict(scale=(1, 1, 1)), False),
        (dict(scale=(4, 4, 4)), False),
    ],
)
def test_decoder_block_fuses_only_what_it_can(kwargs, fusable):
    args = dict(in_channels=16, skip_channels=16, out_channels=16, scale=(2, 2, 2)) | kwargs
    block = UnetDecoderBlock(**args).eval()
    assert block.fusable_upsample is fusable and block.fuse_upsample is fusable
    x = torch.randn(1, 16, 8, 8, 8)
    size = [8 * s for s in block.scale]
    skip = torch.randn(1, 16, *size)
    with torch.no_grad():
        fused = block(x, size, skip)
        block.fuse_upsample = False
        torch.testing.assert_close(fused, block(x, size, skip), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["Unet", "UnetPlusPlus"])
def test_models_fused_and_plain_agree(name):
    torch.manual_seed(0)
    # float64: in training mode the batch norms of Unet++'s deep nodes (few voxels each) amplify float32
    # rounding differences between the two (equal) computations past any fixed tolerance.
    model = getattr(smp3d, name)("resnet18", encoder_depth=3, decoder_channels=(32, 16, 8), in_channels=1, classes=2)
    model = model.double()
    x = torch.randn(1, 1, 32, 32, 32, dtype=torch.float64, requires_grad=True)
    fused = model(x)
    grad = torch.randn_like(fused)
    (fused_grad,) = torch.autograd.grad(fused, [x], grad)
    assert layers.set_fused_upsample(model, False) > 0
    plain = model(x)
    (plain_grad,) = torch.autograd.grad(plain, [x], grad)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-4, atol=1e-4)
    # The fused path executes fewer FLOPs for the same function.
    from torch.utils.flop_counter import FlopCounterMode

    def flops():
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        return counter.get_total_flops()

    plain_flops = flops()
    layers.set_fused_upsample(model, True)
    assert flops() < plain_flops


def test_fused_model_compiles_without_graph_breaks():
    torch._dynamo.reset()
    model = smp3d.Unet("resnet18", encoder_depth=3, decoder_channels=(32, 16, 8), in_channels=1, classes=2).eval()
    explanation = torch._dynamo.explain(model)(torch.randn(1, 1, 32, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons


# --- the model-level channels_last policy ----------------------------------------------------


def _encoder_input_is_channels_last(model, x):
    seen = {}
    handle = model.encoder.register_forward_pre_hook(
        lambda _, args: seen.update(cl=args[0].is_contiguous(memory_format=torch.channels_last_3d))
    )
    with torch.no_grad():
        out = model(x)
    handle.remove()
    return seen["cl"], out


def test_channels_last_policy():
    torch.manual_seed(0)
    model = smp3d.Unet("resnet18", encoder_depth=3, decoder_channels=(32, 16, 8), in_channels=2, classes=2).eval()
    x = torch.randn(1, 2, 32, 32, 32)
    weight = model.encoder.conv1.weight
    assert model.channels_last is None
    # Auto: channels_last_3d on CUDA only, so a CPU model keeps its layout.
    assert model._wants_channels_last(on_cuda=True) and not model._wants_channels_last(on_cuda=False)
    converted, plain = _encoder_input_is_channels_last(model.to("cpu"), x)
    assert not converted and weight.is_contiguous()
    # On: the weights now, the input once per forward; the same function.
    assert model.set_channels_last(True) is model
    assert weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous()
    assert model.encoder.conv1.weight is weight  # converted in place: optimizers keep their parameters
    converted, out = _encoder_input_is_channels_last(model, x)
    assert converted
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)
    model.to(torch.float64)  # a later move keeps the layout
    assert model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    model.set_channels_last(False)
    assert model.encoder.conv1.weight.is_contiguous()
    with pytest.raises(ValueError, match="None \\(auto: CUDA\\), True or False"):
        model.set_channels_last("yes")


def test_channels_last_2d_and_compile():
    model = smp3d.Unet("resnet18", encoder_depth=3, decoder_channels=(32, 16, 8), spatial_dims=2, classes=2).eval()
    model.set_channels_last(True)
    assert model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.randn(1, 3, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_nearest_interpolation_keeps_bfloat16_under_autocast():
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layers.interpolate(x, (8, 8, 8), "nearest")
        linear = layers.interpolate(x.float(), (8, 8, 8), "trilinear", align_corners=False)
    assert out.dtype == torch.bfloat16 and torch.equal(out, F.interpolate(x, size=(8, 8, 8), mode="nearest"))
    assert linear.dtype == torch.float32


def test_split_can_be_switched_off():
    x, w = torch.empty(1, 64, 16, 16, 16), torch.empty(64, 64, 3, 3, 3)
    args = ((1, 1, 1), (1, 1, 1), (1, 1, 1), 1)
    assert layers.set_split_conv(False) is True
    try:
        assert not splits_for_onednn(x, w, *args)
    finally:
        layers.set_split_conv(True)
    assert splits_for_onednn(x, w, *args)


def test_fused_channels_last_model_under_bf16_autocast():
    # The CUDA defaults (channels_last, fused decoder, bf16 autocast), run on the CPU.
    torch.manual_seed(0)
    model = smp3d.Unet("resnet18", encoder_depth=3, decoder_channels=(32, 16, 8), in_channels=1, classes=2)
    model.set_channels_last(True)
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = model(x)
        layers.set_fused_upsample(model, False)
        plain = model(x)
    assert fused.dtype == torch.bfloat16
    if torch_keeps_channels_last_bf16():
        assert fused.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(fused.float(), plain.float(), rtol=0.05, atol=0.1)
    fused.float().mean().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
