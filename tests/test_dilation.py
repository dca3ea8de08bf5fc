"""Dilated (atrous) encoders: the per-axis schedule, the conv/pool rules, ``stage_modules`` of every
first-party family, 2D parity with smp 0.6.0's ``output_stride`` and real N-D forwards.

smp only dilates stages 4-5 of ResNet/ResNeXt, SENet, EfficientNet and DPN (it refuses DenseNet and
VGG because of their pools); the generated checks below cover every family, pools included.
"""

from __future__ import annotations

import copy

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn as nn
from test_encoder_families import SMALLEST
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.pooling import _AvgPoolNd, _MaxPoolNd

import smp3d
from smp3d.encoders import Encoder, dilate_encoder, dilate_module, dilation_schedule
from smp3d_encoders.efficientnet import same_pad

LAYERS = (_ConvNd, _MaxPoolNd, _AvgPoolNd)  # what dilate_module rewrites


def build(name: str, **kwargs) -> nn.Module:
    return smp3d.get_encoder(name, **kwargs).eval()


def _has_hook(name: str) -> bool:
    with torch.device("meta"):
        encoder = smp3d.get_encoder(name, spatial_dims=2)
    if type(encoder).stage_modules is Encoder.stage_modules:
        return False
    try:
        encoder.stage_modules(len(encoder.out_channels) - 1)  # the deepest stage: every family has one
    except NotImplementedError:  # the family says why it has no hook (Swin's windows, a ViT's single stride)
        return False
    return True


# Families with the dilation hook (HRNet's parallel branches have none: DeepLab/PAN refuse it clearly).
DILATABLE = [name for name in SMALLEST if _has_hook(name)]
# MiT leaves its attention's key/value pooling undilated on purpose and cannot dilate below
# reduction 4 (stages 1-2 share one patch embedding); test_mit.py covers it.
PARTITIONED = [name for name in DILATABLE if smp3d.get_encoder_spec(name).family != "mit"]


def capped(reductions, target) -> tuple[tuple[int, ...], ...]:
    """Expected reductions after dilation (stride-2 stages): every reduction capped at the target, per axis."""
    return tuple(tuple(min(r, t) for r, t in zip(item, target, strict=True)) for item in reductions)


def as_axes(output_stride, spatial_dims: int) -> tuple[int, ...]:
    return (output_stride,) * spatial_dims if isinstance(output_stride, int) else tuple(output_stride)


# --------------------------------------------------------------------------- dilation_schedule


ISO5 = ((2, 2),) * 5


def test_schedule_os16_and_os8_equal_smps_rates():
    # smp: a stage of output stride s > os gets rate s // os.
    # OS 16: stage 5 rate 2; OS 8: stage 4 rate 2, stage 5 rate 4.
    strides, rates = dilation_schedule(ISO5, 16)
    assert strides == ((2, 2),) * 4 + ((1, 1),)
    assert rates == ((1, 1),) * 4 + ((2, 2),)
    strides, rates = dilation_schedule(ISO5, 8)
    assert strides == ((2, 2),) * 3 + ((1, 1),) * 2
    assert rates == ((1, 1),) * 3 + ((2, 2), (4, 4))


def test_schedule_at_or_above_the_total_changes_nothing():
    for target in (32, 64, (32, 64)):
        assert dilation_schedule(ISO5, target) == (ISO5, ((1, 1),) * 5)


def test_schedule_per_axis_target():
    strides, rates = dilation_schedule(((2, 2, 2),) * 5, (16, 8, 4))
    assert strides == ((2, 2, 2), (2, 2, 2), (2, 2, 1), (2, 1, 1), (1, 1, 1))
    assert rates == ((1, 1, 1), (1, 1, 1), (1, 1, 2), (1, 2, 4), (2, 4, 8))


def test_schedule_anisotropic_strides_skip_unit_stages():
    # Along the last axis the strides are 1, 2, 1, 2, 2 (total 8).
    aniso = ((2, 2, 1), (2, 2, 2), (2, 2, 1), (2, 2, 2), (2, 2, 2))
    strides, rates = dilation_schedule(aniso, 8)
    # The last axis is already at 8: untouched.
    assert strides == ((2, 2, 1), (2, 2, 2), (2, 2, 1), (1, 1, 2), (1, 1, 2))
    assert rates == ((1, 1, 1),) * 3 + ((2, 2, 1), (4, 4, 1))
    strides, rates = dilation_schedule(aniso, (32, 32, 2))
    # Last axis: drop stage 5 (8 -> 4), skip stage 3's stride 1, drop stage 4 (4 -> 2).
    assert [s[2] for s in strides] == [1, 2, 1, 1, 1]
    assert [r[2] for r in rates] == [1, 1, 1, 2, 4]
    assert [s[:2] for s in strides] == [(2, 2)] * 5
    # A unit stride between two removed ones: its rate is that of everything removed at or before it.
    strides, rates = dilation_schedule(((2,), (2,), (2,), (1,), (2,)), (4,))
    assert strides == ((2,), (2,), (1,), (1,), (1,))
    assert rates == ((1,), (1,), (2,), (2,), (4,))


def test_schedule_leaves_axes_below_the_target_alone():
    strides, rates = dilation_schedule(((2, 2, 1),) * 5, (8, 8, 8))
    assert [s[2] for s in strides] == [1] * 5 and [r[2] for r in rates] == [1] * 5
    assert [s[:2] for s in strides] == [(2, 2)] * 3 + [(1, 1)] * 2


def test_schedule_with_larger_strides():
    strides, rates = dilation_schedule(((2,), (2,), (2,), (2,), (4,)), 16)
    assert strides == ((2,), (2,), (2,), (2,), (1,)) and rates[-1] == (4,)


@pytest.mark.parametrize(
    ("strides", "target", "axis", "reductions"),
    [
        (((2,), (2,), (2,), (2,), (4,)), 32, 0, "[2, 4, 8, 16, 64]"),  # a stride-4 stage between 64 and 16
        (ISO5, 12, 0, "[2, 4, 8, 16, 32]"),  # not a reduction of the encoder
        (((2, 2), (2, 2), (2, 4), (2, 2), (2, 2)), (8, 8), 1, "[2, 4, 16, 32, 64]"),
    ],
)
def test_schedule_unreachable_target_raises_clearly(strides, target, axis, reductions):
    with pytest.raises(ValueError) as info:
        dilation_schedule(strides, target, name="toy")
    message = str(info.value)
    assert f"toy cannot reach an output stride of {target if isinstance(target, int) else target[axis]}" in message
    assert f"along axis {axis}" in message and reductions in message and "`strides`" in message


@pytest.mark.parametrize("target", [0, -8, True, 8.0, (8,), (8, 8, 8), "8"])
def test_schedule_rejects_malformed_targets(target):
    with pytest.raises(ValueError, match="positive int or a tuple of 2"):
        dilation_schedule(ISO5, target)


def test_schedule_of_no_stages_raises():
    with pytest.raises(ValueError, match="no stages"):
        dilation_schedule((), 8)


# --------------------------------------------------------------------------- dilate_module


def test_dilate_module_convolutions():
    block = nn.Sequential(
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.Conv2d(4, 4, 1, stride=2),
        nn.Conv2d(4, 4, 7, padding=3),
        nn.Conv2d(4, 4, (3, 5), padding=(1, 2), groups=4),
    )
    dilate_module(block, (2, 2))
    for m, padding in zip(block, [(2, 2), (0, 0), (6, 6), (2, 4)], strict=True):
        assert m.stride == (1, 1) and m.dilation == (2, 2) and m.padding == padding
    x = torch.randn(1, 4, 9, 10)
    assert block(x).shape == x.shape


def test_dilate_module_per_axis_and_idempotent():
    layer = nn.Conv3d(2, 2, (3, 3, 2), stride=(2, 2, 2), padding=(1, 1, 0))
    dilate_module(layer, (2, 4, 1))  # the even kernel is along the undilated axis: allowed
    assert layer.stride == (1, 1, 2) and layer.dilation == (2, 4, 1) and layer.padding == (2, 4, 0)
    dilate_module(layer, (4, 4, 1))  # a second call sets the total rate, not a product
    assert layer.dilation == (4, 4, 1) and layer.padding == (4, 4, 0)
    assert layer(torch.randn(1, 2, 6, 5, 8)).shape == (1, 2, 6, 5, 4)


def test_dilate_module_rate_one_is_a_no_op():
    layer = nn.Conv2d(1, 1, 3, stride=2, padding=1)
    dilate_module(layer, (1, 1))
    assert layer.stride == (2, 2) and layer.dilation == (1, 1)


def test_dilate_module_keeps_string_padding():
    layer = nn.Conv2d(1, 1, 3, padding="same")
    dilate_module(layer, (3, 3))
    assert layer.padding == "same" and layer.dilation == (3, 3)
    assert layer(torch.randn(1, 1, 7, 7)).shape == (1, 1, 7, 7)


@pytest.mark.parametrize("kernel", [2, (3, 4)])
def test_dilate_module_refuses_even_kernels(kernel):
    layer = nn.Sequential(nn.Conv2d(1, 1, kernel, stride=2))
    with pytest.raises(ValueError, match="even along axis"):
        dilate_module(layer, (2, 2))


@pytest.mark.parametrize(
    ("pool", "kernel"),
    [
        (nn.MaxPool2d(2, 2), (3, 3)),
        (nn.MaxPool2d(3, 2, padding=1), (3, 3)),
        (nn.MaxPool2d(3, 2, ceil_mode=True), (3, 3)),
        (nn.AvgPool2d(2), (3, 3)),  # stride defaults to the kernel
        (nn.AvgPool2d((2, 1), (2, 1)), (3, 1)),  # the unstrided axis keeps kernel 1
    ],
    ids=str,
)
def test_dilate_module_pools_keep_sizes(pool, kernel):
    dilate_module(pool, (2, 2))
    assert tuple(pool.kernel_size) == kernel and tuple(pool.stride) == (1, 1)
    assert tuple(pool.padding) == tuple(k // 2 for k in kernel)
    x = torch.randn(1, 2, 8, 7)
    assert pool(x).shape == x.shape


def test_dilated_average_pool_excludes_the_padding():
    pool = nn.AvgPool2d(2)
    dilate_module(pool, (2, 2))
    assert pool.count_include_pad is False
    out = pool(torch.ones(1, 1, 4, 4))
    torch.testing.assert_close(out, torch.ones(1, 1, 4, 4))  # borders average real values only


def test_dilate_module_leaves_unstrided_pools_transposed_convs_and_adaptive_pools():
    block = nn.Sequential(nn.MaxPool2d(3, 1, padding=1), nn.ConvTranspose2d(1, 1, 2, stride=2), nn.AdaptiveAvgPool2d(1))
    dilate_module(block, (2, 2))
    assert block[0].kernel_size == 3 and block[0].stride == 1
    assert block[1].stride == (2, 2) and block[1].dilation == (1, 1)
    assert block[2].output_size == 1


# --------------------------------------------------------------------------- stage_modules (every family)


def _layers(modules) -> list[nn.Module]:
    return [m for module in modules for m in module.modules() if isinstance(m, LAYERS)]


@pytest.mark.parametrize(("depth", "output_stride"), [(5, None), (5, 4), (3, 2)])
@pytest.mark.parametrize("name", PARTITIONED)
def test_stage_modules_partition_the_convs_and_pools(name, depth, output_stride):
    """Every conv/pool the forward runs is in exactly one stage, and a stage's layers see only the
    reductions of its own input and output features (so no layer sits in a neighbouring stage)."""
    encoder = build(name, spatial_dims=2, depth=depth)
    dilate_encoder(encoder, output_stride, "test")
    stages = {stage: _layers(encoder.stage_modules(stage)) for stage in range(1, depth + 1)}
    owner = {}
    for stage, layers in stages.items():
        for m in layers:
            assert id(m) not in owner, f"{type(m).__name__} is in stages {owner.get(id(m))} and {stage}"
            owner[id(m)] = stage

    size = 64
    seen: dict[int, tuple[int, int]] = {}  # layer -> (input reduction, output reduction)

    def hook(module, inputs, output):
        if output.shape[2:].numel() > 1:  # not a squeeze-excitation gate on a pooled vector
            # From the output and the stride: EfficientNet's inputs arrive padded.
            stride = module.stride if isinstance(module.stride, int) else module.stride[-1]
            seen[id(module)] = (size // output.shape[-1] // stride, size // output.shape[-1])

    handles = [m.register_forward_hook(hook) for m in encoder.modules() if isinstance(m, LAYERS)]
    with torch.no_grad():
        encoder(torch.randn(1, 3, size, size))
    for handle in handles:
        handle.remove()
    called = {id(m) for m in encoder.modules() if isinstance(m, LAYERS) and id(m) in seen}
    assert called <= set(owner), "some layers that the forward runs belong to no stage"
    reductions = [r[-1] for r in encoder.reductions]
    for key, (r_in, r_out) in seen.items():
        stage = owner[key]
        allowed = {reductions[stage - 1], reductions[stage]}
        assert {r_in, r_out} <= allowed, f"a layer of stage {stage} maps reduction {r_in} to {r_out}; {allowed=}"


# --------------------------------------------------------------------------- 2D parity with smp 0.6.0

# Output stride 8 dilates stages 4 and 5 (16 only stage 5); CPU dilated convolutions are slow, so
# only ResNet runs both.
PARITY = [
    ("resnet34", 16),
    ("resnet34", 8),
    ("se_resnet50", 16),
    ("efficientnet-b0", 8),
    ("dpn68", 8),
]


@pytest.mark.parametrize(("name", "output_stride"), PARITY)
def test_2d_dilated_features_equal_smp(name, output_stride):
    x = torch.randn(2, 3, 32, 32)
    reference = smp.encoders.get_encoder(name, weights=None, output_stride=output_stride)
    # Batch-norm statistics from a real batch: at initialization eval-mode features shrink by ~100x per
    # stage, which would make any tolerance vacuous.
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 1.0
    with torch.no_grad():
        reference.train()(x)
    reference.eval()

    ours = build(name, spatial_dims=2)
    state = ours.state_dict()
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if k in state}, strict=True)
    dilate_encoder(ours, output_stride, "test")
    assert ours.reductions[-1] == (output_stride, output_stride)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert a.shape == e.shape, f"feature {i}"
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4 * e.abs().max().item(), msg=f"feature {i}")


# --------------------------------------------------------------------------- every family, 2D and 3D

CASES = [
    # (spatial_dims, strides, output_stride)
    (2, None, (16, 8)),
    (2, ((2, 1), 2, (2, 1), 2, 2), 8),
    *[(3, None, os) for os in (16, (16, 8, 4))],
    *[(3, ((2, 2, 1), 2, (2, 2, 1), 2, 2), os) for os in (8, 16)],
]


@pytest.mark.parametrize(("spatial_dims", "strides", "output_stride"), CASES, ids=str)
@pytest.mark.parametrize("name", DILATABLE)
def test_dilated_forward_sizes(name, spatial_dims, strides, output_stride):
    encoder = build(name, spatial_dims=spatial_dims, strides=strides)
    before = encoder.reductions
    target = as_axes(output_stride, spatial_dims)
    keys = list(encoder.state_dict())
    dilate_encoder(encoder, output_stride, "test")
    assert encoder.reductions == capped(before, target)
    assert list(encoder.state_dict()) == keys
    # Small inputs: twice the new output stride per axis (features of the deepest stages are 2 voxels).
    size = tuple(2 * r for r in encoder.reductions[-1])
    with torch.no_grad():
        features = encoder(torch.randn(1, encoder.out_channels[0], *size))
    assert len(features) == len(encoder.reductions)
    for i, (feature, reduction) in enumerate(zip(features, encoder.reductions, strict=True)):
        expected = (1, encoder.out_channels[i], *(n // r for n, r in zip(size, reduction, strict=True)))
        assert tuple(feature.shape) == expected, f"feature {i}"
        assert torch.isfinite(feature).all()


def test_dilated_3d_average_pool_on_features_smaller_than_its_kernel():
    """A dilated DenseNet transition pool (kernel 3, stride 1, padding 1) must run on 2-voxel features
    in 3D too (torch's avg_pool3d alone refuses them), averaging only real voxels."""
    encoder = build("densenet121", spatial_dims=3, depth=4)
    dilate_encoder(encoder, 8, "test")  # stage 4: transition2's pool, now kernel 3, sees 2 voxels
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 16, 16, 16))
    assert features[-1].shape[2:] == (2, 2, 2)
    pool = encoder.features["transition2"].pool
    assert isinstance(pool, nn.AvgPool3d) and pool.stride == (1, 1, 1)
    x = torch.randn(1, 2, 2, 3, 4)
    expected = nn.functional.avg_pool3d(nn.functional.pad(x, (1, 1, 1, 1, 1, 1)), 3, 1, 0) / nn.functional.avg_pool3d(
        nn.functional.pad(torch.ones(1, 1, 2, 3, 4), (1, 1, 1, 1, 1, 1)), 3, 1, 0
    )
    torch.testing.assert_close(pool(x), expected)
    big = torch.randn(1, 2, 5, 5, 5)
    torch.testing.assert_close(
        pool(big), nn.functional.avg_pool3d(big, 3, 1, 1, count_include_pad=False), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("name", DILATABLE)
def test_make_dilated_twice_equals_once(name):
    once = build(name, spatial_dims=2)
    twice = copy.deepcopy(once)
    twice.make_dilated(16)
    twice.make_dilated(8)
    once.make_dilated(8)
    assert twice.reductions == once.reductions and twice.strides == once.strides
    layers = [(n, m) for n, m in once.named_modules() if isinstance(m, LAYERS)]
    for (n, a), b in zip(layers, [m for m in twice.modules() if isinstance(m, LAYERS)], strict=True):
        for attr in ("kernel_size", "stride", "padding", "dilation"):
            assert getattr(a, attr, None) == getattr(b, attr, None), f"{n}.{attr}"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(once(x), twice(x), strict=True):
            torch.testing.assert_close(a, b)


def test_make_dilated_twice_per_axis_3d():
    once = build("resnet18", spatial_dims=3, strides=((2, 2, 1), 2, (2, 2, 1), 2, 2))
    twice = copy.deepcopy(once)
    twice.make_dilated((16, 16, 8))
    twice.make_dilated((8, 16, 4))
    once.make_dilated((8, 16, 4))
    assert once.reductions[-1] == (8, 16, 4) and twice.dilations == once.dilations
    x = torch.randn(1, 3, 32, 32, 8)
    with torch.no_grad():
        for a, b in zip(once(x), twice(x), strict=True):
            torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- EfficientNet's 'SAME' padding


@pytest.mark.parametrize("output_stride", [8, (16, 8, 4)])
def test_efficientnet_same_pad_after_dilation(output_stride):
    encoder = build("efficientnet-b0", spatial_dims=3, strides=((2, 2, 1), 2, (2, 2, 1), 2, 2))
    dilate_encoder(encoder, output_stride, "test")
    x = torch.randn(1, 4, 12, 12, 12)
    for stage, rate in enumerate(encoder.dilations, start=1):
        for block in encoder.stage_modules(stage):
            if not hasattr(block, "_depthwise_conv"):
                continue
            layer = block._depthwise_conv
            k = layer.kernel_size[0]
            for axis, r in enumerate(rate):
                if r > 1:  # symmetric padding set by the dilation, so same_pad leaves the axis alone
                    assert layer.stride[axis] == 1 and layer.dilation[axis] == r and layer.padding[axis] == k // 2 * r
            padded = same_pad(x, layer)
            for axis in range(3):
                grown = padded.shape[2 + axis] - x.shape[2 + axis]
                if rate[axis] > 1 or layer.stride[axis] == 1:
                    assert grown == 0  # the conv pads this axis itself
                else:  # a strided axis that was not dilated keeps TF 'SAME': k - s extra on an even size
                    assert grown == k - layer.stride[axis]
            # 1x1 convolutions: dilation changes nothing, no padding anywhere.
            for conv in (block._project_conv, block._se_reduce):
                assert conv.padding == (0, 0, 0) and same_pad(x, conv) is x


# --------------------------------------------------------------------------- encoders without the hook


class Plain(nn.Module):
    """A protocol encoder with no make_dilated."""

    def __init__(self, reductions=((1, 1), (2, 2), (4, 4))):
        super().__init__()
        self.spatial_dims = len(reductions[0])
        self.out_channels = (3,) * len(reductions)
        self.reductions = reductions

    def forward(self, x):
        pool = nn.functional.avg_pool2d
        return [x, pool(x, 2), pool(x, 4)]


class NoStages(Encoder):
    def __init__(self):
        super().__init__((3, 3, 3), ((2, 2), (2, 2)), 2)

    def forward(self, x):
        return [x, x[..., ::2, ::2], x[..., ::4, ::4]]


@pytest.mark.parametrize("encoder", [Plain(), NoStages()], ids=["plain-module", "encoder-without-stage_modules"])
def test_encoder_without_the_hook(encoder):
    for output_stride in (None, 4, 8, (4, 16)):  # no dilation needed: fine
        dilate_encoder(encoder, output_stride, "DeepLabV3")
    assert tuple(encoder.reductions[-1]) == (4, 4)
    with pytest.raises(ValueError) as info:
        dilate_encoder(encoder, (2, 4), "DeepLabV3")
    message = str(info.value)
    assert "DeepLabV3 needs encoder_output_stride=(2, 4)" in message
    assert type(encoder).__qualname__ in message and "make_dilated" in message and "stage_modules" in message
    assert "encoder_output_stride=(4, 4)" in message
    assert tuple(encoder.reductions[-1]) == (4, 4)


def test_dilate_encoder_rejects_malformed_output_strides():
    encoder = build("resnet18", spatial_dims=2, depth=2)
    with pytest.raises(ValueError, match="DeepLabV3: encoder_output_stride must be a positive int"):
        dilate_encoder(encoder, (8, 8, 8), "DeepLabV3")
    with pytest.raises(ValueError, match="cannot reach an output stride of 3"):
        dilate_encoder(encoder, 3, "DeepLabV3")
