"""Generated from the first-party registry: every encoder family passes the same checks.

smp 0.6.0 is the 2D oracle (layout, parameter counts, features, whole-Unet outputs). Structural
checks run on the ``meta`` device (free for any size); real compute runs for the smallest member
of each family only.
"""

from __future__ import annotations

import functools
from importlib.metadata import distribution

import pytest
import segmentation_models_pytorch as smp
import torch
from torch.nn.modules.conv import _ConvNd

import smp3d

# smp's published parameter counts (millions, encoder at depth 5 with 3 input channels).
PUBLISHED_MILLIONS = {
    "resnet18": 11,
    "resnet34": 21,
    "resnet50": 23,
    "resnet101": 42,
    "resnet152": 58,
    "resnext50_32x4d": 22,
    "resnext101_32x4d": 42,
    "resnext101_32x8d": 86,
    "resnext101_32x16d": 191,
    "resnext101_32x32d": 466,
    "resnext101_32x48d": 826,
    "senet154": 113,
    "se_resnet50": 26,
    "se_resnet101": 47,
    "se_resnet152": 64,
    "se_resnext50_32x4d": 25,
    "se_resnext101_32x4d": 46,
    "densenet121": 6,
    "densenet169": 12,
    "densenet201": 18,
    "densenet161": 26,
    "efficientnet-b0": 4,
    "efficientnet-b1": 6,
    "efficientnet-b2": 7,
    "efficientnet-b3": 10,
    "efficientnet-b4": 17,
    "efficientnet-b5": 28,
    "efficientnet-b6": 40,
    "efficientnet-b7": 63,
    "dpn68": 11,
    "dpn68b": 11,
    "dpn92": 34,
    "dpn98": 58,
    "dpn107": 84,
    "dpn131": 76,
    "vgg11": 9,
    "vgg11_bn": 9,
    "vgg13": 9,
    "vgg13_bn": 9,
    "vgg16": 14,
    "vgg16_bn": 14,
    "vgg19": 20,
    "vgg19_bn": 20,
}


def _first_party_names() -> list[str]:
    names: set[str] = set()
    for ep in distribution("smp3d").entry_points:
        if ep.group == "smp3d.encoders":
            names.update(ep.load())
    # the tu- bridge's migration aliases (family "timm") are tested in test_timm_universal.py
    return sorted(n for n in names if smp3d.get_encoder_spec(n).family != "timm")


FIRST_PARTY = _first_party_names()
# Names smp 0.6.0 also has: the 2D oracle applies to them (plain and HRNet are ours alone).
SMP_NAMES = [name for name in FIRST_PARTY if name in smp.encoders.encoders]
# smp's MiT calls .item() while it is built, so it cannot be built on the meta device; test_mit.py
# compares MiT's layout and counts with smp built for real.
SMP_META_NAMES = [name for name in SMP_NAMES if smp3d.get_encoder_spec(name).family != "mit"]


def build(name: str, device: str = "meta", **kwargs) -> torch.nn.Module:
    with torch.device(device):
        return smp3d.get_encoder(name, **kwargs)


@functools.cache
def count_2d(name: str) -> int:
    return sum(p.numel() for p in build(name, spatial_dims=2).parameters())


def _smallest_per_family() -> list[str]:
    families: dict[str, str] = {}
    for name in FIRST_PARTY:
        family = smp3d.get_encoder_spec(name).family or name
        if family not in families or count_2d(name) < count_2d(families[family]):
            families[family] = name
    return sorted(families.values())


SMALLEST = _smallest_per_family()


def test_every_first_party_name_has_a_published_count():
    # MiT and MobileOne counts are compared with smp's own models in test_mit.py / test_mobileone.py.
    newer = {"mit", "mobileone"}
    assert sorted(PUBLISHED_MILLIONS) == [n for n in SMP_NAMES if smp3d.get_encoder_spec(n).family not in newer]


@pytest.mark.parametrize("name", SMP_META_NAMES)
def test_2d_layout_equals_smp(name):
    with torch.device("meta"):
        reference = smp.encoders.get_encoder(name, weights=None).state_dict()
    ours = build(name, spatial_dims=2).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}


@pytest.mark.parametrize("name", FIRST_PARTY)
def test_3d_layout_is_2d_with_a_trailing_kernel_axis(name):
    encoder_2d, encoder_3d = build(name, spatial_dims=2), build(name, spatial_dims=3)
    if encoder_2d.out_channels != encoder_3d.out_channels:
        # nnU-Net's families cap widths at 320 in 3D and 512 in 2D: compare the stages below the cap.
        encoder_2d, encoder_3d = build(name, spatial_dims=2, depth=3), build(name, spatial_dims=3, depth=3)
        assert encoder_2d.out_channels == encoder_3d.out_channels, name
    state_2d, state_3d = encoder_2d.state_dict(), encoder_3d.state_dict()
    assert list(state_3d) == list(state_2d)
    convs_2d = {n: m for n, m in encoder_2d.named_modules() if isinstance(m, _ConvNd)}
    convs_3d = {n: m for n, m in encoder_3d.named_modules() if isinstance(m, _ConvNd)}
    assert list(convs_3d) == list(convs_2d)
    for module_name, conv_2d in convs_2d.items():
        conv_3d = convs_3d[module_name]
        # Depthwise and grouped convolutions stay so in 3D.
        assert conv_3d.groups == conv_2d.groups, module_name
        assert tuple(conv_3d.weight.shape) == (*conv_2d.weight.shape, conv_2d.weight.shape[-1]), module_name
    for key, tensor in state_2d.items():
        if key.rsplit(".", 1)[0] not in convs_2d or not key.endswith("weight"):
            assert state_3d[key].shape == tensor.shape, key


@pytest.mark.parametrize("name", SMP_META_NAMES)
def test_parameter_count_matches_smp(name):
    with torch.device("meta"):
        reference = sum(p.numel() for p in smp.encoders.get_encoder(name, weights=None).parameters())
    assert count_2d(name) == reference
    if name in PUBLISHED_MILLIONS:
        assert PUBLISHED_MILLIONS[name] in (round(reference / 1e6), int(reference / 1e6))


ANISOTROPIC = {
    "thick-slices": ((2, 2, 1), (2, 2, 1), 2, 2, 2),
    "mixed": ((1, 2, 2), 2, (2, 1, 2), 2, (2, 2, 1)),
    "no-downsampling": (1, 1, 1, 1, 1),
}


@pytest.mark.parametrize("pattern", list(ANISOTROPIC))
@pytest.mark.parametrize("name", FIRST_PARTY)
def test_per_axis_strides(name, pattern):
    """Features follow the per-axis reductions exactly; an axis with stride 1 keeps its size."""
    encoder = build(name, strides=ANISOTROPIC[pattern]).eval()
    size = tuple(2 * r for r in encoder.reductions[-1])
    size = tuple(s if s > 2 else s + 1 for s in size)  # an axis never reduced may have any size
    features = encoder(torch.empty(1, 3, *size, device="meta"))
    for feature, channels, reduction in zip(features, encoder.out_channels, encoder.reductions, strict=True):
        expected = tuple(s // r if r > 1 else s for s, r in zip(size, reduction, strict=True))
        assert (feature.shape[1], *feature.shape[2:]) == (channels, *expected)


@pytest.mark.parametrize("name", FIRST_PARTY)
def test_depths_and_in_channels(name):
    full = build(name, spatial_dims=2).out_channels
    for depth in smp3d.get_encoder_spec(name).extra.get("depths", range(1, 6)):
        encoder = build(name, spatial_dims=2, depth=depth, in_channels=4).eval()
        assert encoder.out_channels == (4, *full[1 : depth + 1])
        features = encoder(torch.empty(1, 4, 64, 64, device="meta"))
        assert [f.shape[1] for f in features] == list(encoder.out_channels)


@pytest.mark.parametrize("name", [n for n in SMALLEST if n in SMP_NAMES])
def test_2d_features_equal_smp(name):
    reference = smp.encoders.get_encoder(name, weights=None).eval()
    ours = smp3d.get_encoder(name, spatial_dims=2).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert len(got) == len(expected)
    torch.testing.assert_close(got[0], x)  # item 0 is the input itself (smp's VGG differs there)
    for a, b in zip(expected[1:], got[1:], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in SMALLEST if n in SMP_NAMES])
def test_2d_unet_equals_smp(name):
    reference = smp.Unet(name, encoder_weights=None, classes=2).eval()
    ours = smp3d.Unet(name, classes=2, spatial_dims=2).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", SMALLEST)
def test_3d_unet_forward_backward_channels_last(name):
    # 32^3 at batch 2 reaches the deepest level (one voxel per sample) of every family at depth 5; the model
    # and the input in channels_last_3d also cover the memory format users pick for speed.
    model = smp3d.Unet(name, in_channels=1, classes=2).to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 1, 32, 32, 32).to(memory_format=torch.channels_last_3d)
    out = model(x)
    assert out.shape == (2, 2, 32, 32, 32)
    out.square().mean().backward()
    # Parameters kept only for checkpoint compatibility are frozen (requires_grad=False).
    encoder_grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in encoder_grads)


@pytest.mark.parametrize("name", SMALLEST)
def test_bf16_autocast(name):
    # In 2D: this CPU emulates bf16 convolutions (a 32^3 resenc_l Unet took 700 s against 14 s in float32),
    # and the autocast path of a family's code is the same in 2D and 3D (one code path); 3D is below.
    model = smp3d.Unet(name, in_channels=1, classes=2, spatial_dims=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 2, 64, 64) and torch.isfinite(out.float()).all()
    out.float().mean().backward()


def test_bf16_autocast_3d_channels_last():
    model = smp3d.Unet("resnet18", encoder_depth=3, decoder_channels=(32, 16, 8), in_channels=1, classes=2)
    model = model.to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 1, 16, 16, 16).to(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 2, 16, 16, 16) and torch.isfinite(out.float()).all()
    out.float().mean().backward()
