"""MiT (mit_b0..b5): smp parity in 2D (encoder, training with drop path, whole models), the 3D layout,
per-axis strides, depths, dilation, every decoder smp allows MiT with, bf16 autocast, and clear errors."""

from __future__ import annotations

import math

import architecture_checks as checks
import pytest
import segmentation_models_pytorch as smp
import torch
from torch.nn.modules.conv import _ConvNd

import smp3d
from smp3d_encoders.mit import ENCODERS, DropPath

# Parameters of smp 0.6.0's encoders (2D, 3 input channels, depth 5), measured on CPU: smp's MiT cannot be
# built on the meta device (its drop-path schedule calls .item()). 3D: every kernel gains a trailing axis.
PARAMETERS_2D = {
    "mit_b0": 3_319_392,
    "mit_b1": 13_151_424,
    "mit_b2": 24_196_288,
    "mit_b3": 44_072_128,
    "mit_b4": 60_842_688,
    "mit_b5": 81_443_008,
}
PARAMETERS_3D = {
    "mit_b0": 5_895_328,
    "mit_b1": 23_251_264,
    "mit_b2": 39_494_464,
    "mit_b3": 64_561_984,
    "mit_b4": 88_408_896,
    "mit_b5": 113_042_240,
}


@pytest.fixture(scope="module", autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str = "mit_b0", device: str = "cpu", **kwargs) -> torch.nn.Module:
    with torch.device(device):
        return smp3d.get_encoder(name, **kwargs)


@pytest.fixture(scope="module")
def smp_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    """smp's mit_b0 with perturbed (trained-looking) weights and ours (2D) with the same weights."""
    reference = smp.encoders.get_encoder("mit_b0", weights=None)
    ours = smp3d.get_encoder("mit_b0", spatial_dims=2)
    ours.load_state_dict(checks.perturbed_state(reference), strict=True)
    return reference, ours


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- 2D parity with smp ---------------------------------------------------------------------------------------


def test_registry_lists_every_variant():
    assert sorted(ENCODERS) == sorted(PARAMETERS_2D)
    assert all(name in smp3d.list_encoders() for name in ENCODERS)
    assert smp3d.get_encoder_spec("mit_b0").out_channels == (3, 0, 32, 64, 160, 256)


def test_2d_layout_and_features_equal_smp(smp_pair):
    reference, ours = smp_pair
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    x = torch.randn(2, 3, 64, 96)  # non-square
    with torch.no_grad():
        expected, got = reference.eval()(x), ours.eval()(x)
    assert len(got) == len(expected) == 6
    torch.testing.assert_close(got[0], x)
    for a, b in zip(expected[1:], got[1:], strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_training_with_drop_path_equals_smp(smp_pair):
    """Same per-block rates (linear from 0 over all blocks of the four stages) and the same random draws as smp."""
    reference, ours = smp_pair
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(3)
    expected = reference.train()(x)
    torch.manual_seed(3)
    got = ours.train()(x)
    for a, b in zip(expected[1:], got[1:], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    rates = [
        b.drop_path.rate if isinstance(b.drop_path, DropPath) else 0.0
        for i in range(1, 5)
        for b in getattr(ours, f"block{i}")
    ]
    assert rates == pytest.approx([0.1 * i / 7 for i in range(8)])


@pytest.mark.parametrize("name", list(PARAMETERS_2D))
def test_parameter_counts(name):
    assert count(build(name, "meta", spatial_dims=2)) == PARAMETERS_2D[name]
    assert count(build(name, "meta", spatial_dims=3)) == PARAMETERS_3D[name]


def test_parameter_count_table_is_smp_s(smp_pair):
    assert count(smp_pair[0]) == PARAMETERS_2D["mit_b0"]


@pytest.mark.parametrize("architecture", ["Segformer", "Unet", "DeepLabV3Plus"])
def test_2d_model_loads_smp_strictly_and_equals_it(architecture):
    """Whole smp models with mit_b0 load strictly and give smp's outputs: Segformer (fuses from level 2), Unet
    (skips the 0-channel placeholder), DeepLabV3+ (dilates stage 5 by smp's rule). FPN and UPerNet pass too
    (checked once by hand; left out to keep this file fast)."""
    checks.assert_case_matches_smp(
        getattr(smp, architecture),
        getattr(smp3d, architecture),
        {"encoder_name": "mit_b0", "classes": 2},
        size=(64, 64),
    )


# --- 3D layout, metadata and strides ---------------------------------------------------------------------------


def test_3d_layout_is_2d_with_a_trailing_kernel_axis():
    encoder_2d, encoder_3d = build("mit_b0", "meta", spatial_dims=2), build("mit_b0", "meta", spatial_dims=3)
    state_2d, state_3d = encoder_2d.state_dict(), encoder_3d.state_dict()
    assert list(state_3d) == list(state_2d)
    convs = {n: m for n, m in encoder_2d.named_modules() if isinstance(m, _ConvNd)}
    for name, module in encoder_3d.named_modules():
        if isinstance(module, _ConvNd):
            weight_2d = convs[name].weight
            assert module.groups == convs[name].groups, name  # depthwise stays depthwise
            assert tuple(module.weight.shape) == (*weight_2d.shape, weight_2d.shape[-1]), name
    for key, tensor in state_2d.items():
        if not (key.rsplit(".", 1)[0] in convs and key.endswith("weight")):
            assert state_3d[key].shape == tensor.shape, key


@pytest.mark.parametrize(
    ("strides", "size"),
    [
        (None, (64, 64, 64)),
        (None, (67, 45, 33)),  # odd sizes: ceil per axis, the placeholder floors
        (((2, 2, 1), 2, 2, 2, (2, 2, 1)), (64, 64, 16)),  # thick slices
        (((1, 2, 2), 2, (2, 1, 2), 2, (2, 2, 1)), (32, 32, 32)),
        ((1, 1, 1, 1, 1), (3, 5, 2)),  # features shorter than the attention's reduction kernel
    ],
    ids=["isotropic", "odd", "thick-slices", "mixed", "no-downsampling"],
)
def test_features_follow_reductions_per_axis(strides, size):
    encoder = build("mit_b5", "meta", strides=strides).eval()
    features = encoder(torch.empty(1, 3, *size, device="meta"))
    assert len(features) == len(encoder.out_channels) == len(encoder.reductions) == 6
    for i, (feature, channels, reduction) in enumerate(
        zip(features, encoder.out_channels, encoder.reductions, strict=True)
    ):
        rounding = (lambda n, r: n // r) if i == 1 else (lambda n, r: math.ceil(n / r))
        expected = tuple(rounding(n, r) for n, r in zip(size, reduction, strict=True))
        assert (feature.shape[1], *feature.shape[2:]) == (channels, *expected), i


def test_first_patch_embedding_takes_the_product_of_stages_1_and_2():
    encoder = build("mit_b0", "meta", strides=((2, 2, 1), (2, 1, 2), 2, 1, (1, 1, 2)))
    assert encoder.patch_embed1.proj.stride == (4, 2, 2)
    assert encoder.patch_embed1.proj.kernel_size == (7, 7, 7)
    assert encoder.patch_embed3.proj.stride == (1, 1, 1) and encoder.patch_embed4.proj.stride == (1, 1, 2)
    assert encoder.reductions == ((1, 1, 1), (2, 2, 1), (4, 2, 2), (8, 4, 4), (8, 4, 4), (8, 4, 8))


def test_small_features_are_padded_for_the_reduction_convolution():
    """A 3-voxel axis meets the 8x8x8 reduction of stage 1: padded to one kernel, so attention has one key."""
    encoder = build("mit_b0", strides=(1, 1, 2), depth=3).eval()
    x = torch.randn(1, 3, 12, 3, 8)
    features = encoder(x)
    assert features[2].shape == (1, 32, 12, 3, 8) and torch.isfinite(features[2]).all()


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_depths_build_only_the_used_stages(depth):
    encoder = build("mit_b0", "meta", depth=depth, in_channels=4).eval()
    assert encoder.out_channels == (4, 0, 32, 64, 160, 256)[: depth + 1]
    features = encoder(torch.empty(2, 4, 64, 64, 64, device="meta"))
    assert [f.shape[1] for f in features] == list(encoder.out_channels)
    stages = {name.split(".")[0] for name in encoder.state_dict()}
    assert stages == {f"{kind}{i}" for kind in ("patch_embed", "block", "norm") for i in range(1, depth)}


def test_shallow_encoders_keep_the_full_drop_path_schedule():
    full, shallow = build("mit_b2", "meta"), build("mit_b2", "meta", depth=3)
    assert [b.drop_path.rate for b in shallow.block2] == [b.drop_path.rate for b in full.block2]


def test_in_channels_adaptation_follows_smp():
    encoder = build("mit_b0", in_channels=1, spatial_dims=2)
    assert encoder.patch_embed1.proj.weight.shape == (32, 1, 7, 7)
    reference = smp.encoders.get_encoder("mit_b0", in_channels=1, weights=None)
    assert {k: v.shape for k, v in encoder.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }


def test_make_dilated_keeps_resolution_and_matches_reductions():
    encoder = build("mit_b0").eval()
    encoder.make_dilated(8)
    assert encoder.reductions[-1] == (8, 8, 8)
    assert encoder.patch_embed4.proj.stride == (1, 1, 1) and encoder.block4[0].mlp.dwconv.dwconv.dilation == (4, 4, 4)
    # The attention's key/value reduction is a pooling of sr_ratio tokens per axis and stays one.
    sr = encoder.block3[0].attn.sr
    assert sr.stride == sr.kernel_size == (2, 2, 2) and sr.dilation == (1, 1, 1)
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 32, 32, 32))
    assert [tuple(f.shape[2:]) for f in features[2:]] == [(8, 8, 8)] + [(4, 4, 4)] * 3
    with pytest.raises(ValueError, match="stages 1 and 2"):
        build("mit_b0", "meta").make_dilated(2)


# --- decoders in 3D, fast paths ---------------------------------------------------------------------------------

# Light decoders (small ASPP rates: the deepest map is 2 voxels wide): the encoder is under test. UPerNet and
# DeepLabV3+ batch-normalize a pooled 1-voxel map, which needs a batch of 2 in training (as in smp).
DECODERS_3D = {
    "Unet": {"decoder_channels": (32, 16, 16, 8, 8)},
    "FPN": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
    "Segformer": {"decoder_segmentation_channels": 32},
    "UPerNet": {"decoder_channels": 32},
    "DeepLabV3Plus": {"decoder_channels": 32, "decoder_atrous_rates": (1, 2, 3)},
}


@pytest.mark.parametrize("architecture", list(DECODERS_3D))
def test_3d_models_forward_backward(architecture):
    model = getattr(smp3d, architecture)(encoder_name="mit_b0", in_channels=1, classes=2, **DECODERS_3D[architecture])
    out = checks.check_forward_backward(model, torch.randn(2, 1, 32, 32, 32), classes=2)
    assert torch.isfinite(out).all()


def test_bf16_autocast_and_channels_last_3d():
    model = smp3d.Segformer(encoder_name="mit_b0", in_channels=1, classes=2, decoder_segmentation_channels=32)
    checks.check_channels_last_bf16(model, torch.randn(2, 1, 32, 32, 32), classes=2)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_features_follow_the_memory_format_of_the_model(in_channels):
    encoder = build("mit_b0", in_channels=in_channels).eval()
    x = torch.randn(1, in_channels, 32, 32, 32)
    with torch.no_grad():
        expected = encoder(x)
        encoder = encoder.to(memory_format=torch.channels_last_3d)
        got = encoder(x.to(memory_format=torch.channels_last_3d))
    assert all(f.is_contiguous() for f in expected[2:])
    assert all(f.is_contiguous(memory_format=torch.channels_last_3d) for f in got[2:])
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_compiles_without_graph_breaks():
    checks.check_compiles(build("mit_b0", depth=3), torch.randn(1, 3, 16, 16, 16))


def test_big_variants_on_meta():
    model = checks.check_meta(smp3d.Segformer, (1, 1, 64, 64, 64), encoder_name="mit_b5", in_channels=1, classes=3)
    assert model.encoder.out_channels == (1, 0, 64, 128, 320, 512)


# --- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strides", [(4, 1, 2, 2, 2), (2, 2, 2, 2, (2, 3, 1))], ids=["stem-4", "per-axis-3"])
def test_strides_above_2_are_refused_with_a_hint(strides):
    with pytest.raises(ValueError, match=r"1 or 2 per axis.*\(\(2, 2, 1\), 2, 2, 2, 2\)"):
        build("mit_b0", "meta", strides=strides)


@pytest.mark.parametrize("depth", [0, 6])
def test_bad_depth_is_refused(depth):
    with pytest.raises(ValueError, match=r"1\.\.5"):
        build("mit_b0", "meta", depth=depth)


def test_bad_kwargs_are_refused():
    with pytest.raises(TypeError, match="mit_b0"):
        build("mit_b0", "meta", patch_size=4)
    with pytest.raises(ValueError, match="drop_path_rate"):
        build("mit_b0", "meta", drop_path_rate=1.5)
