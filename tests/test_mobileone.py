"""MobileOne encoders: smp 0.6.0 layout and features in 2D, one code path in 3D, branch fusion (reparameterize)."""

from __future__ import annotations

import math

import architecture_checks as checks
import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file
from segmentation_models_pytorch.encoders.mobileone import reparameterize_model as smp_reparameterize_model

import smp3d
from smp3d_encoders.mobileone import MobileOneBlock, reparameterize_model

NAMES = [f"mobileone_s{i}" for i in range(5)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, device: str = "cpu", **kwargs) -> torch.nn.Module:
    with torch.device(device):
        return smp3d.get_encoder(name, **kwargs)


def trained_like(module: torch.nn.Module) -> torch.nn.Module:
    """Random batch-norm affine parameters and running statistics, so that fusion has something to fuse.

    Features then grow with depth (up to ~1e6), so fused-vs-unfused differences are measured relative to
    each feature's largest value. Returns ``module`` in eval mode.
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return module.eval()


def fusion_error(expected: list[torch.Tensor], got: list[torch.Tensor]) -> tuple[float, float]:
    """(max abs difference, max abs difference / max abs value) over the features, input excluded."""
    pairs = list(zip(expected[1:], got[1:], strict=True))
    assert all(a.shape == b.shape for a, b in pairs)
    absolute = max((a - b).abs().max().item() for a, b in pairs)
    relative = max(((a - b).abs().max() / a.abs().max()).item() for a, b in pairs)
    return absolute, relative


# float32 sums in another order: relative differences ~1e-6 observed; float64 ~1e-15.
RELATIVE_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


# --- metadata, smp parity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_metadata_matches_features(name, spatial_dims):
    encoder = build(name, "meta", spatial_dims=spatial_dims)
    size = (64, 96, 32)[:spatial_dims]
    features = encoder(torch.empty(1, 3, *size, device="meta"))
    assert len(features) == len(encoder.out_channels) == len(encoder.reductions) == 6
    assert encoder.out_channels == smp3d.get_encoder_spec(name).out_channels
    for feature, channels, reduction in zip(features, encoder.out_channels, encoder.reductions, strict=True):
        assert feature.shape[1] == channels
        assert tuple(feature.shape[2:]) == tuple(s // r for s, r in zip(size, reduction, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_2d_keys_shapes_and_parameter_counts_equal_smp(name):
    with torch.device("meta"):
        reference = smp.encoders.get_encoder(name, weights=None)
        ours = smp3d.get_encoder(name, spatial_dims=2)
        ours_3d = smp3d.get_encoder(name, spatial_dims=3)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert tuple(ours.out_channels) == tuple(reference.out_channels)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    # 3D: same keys, every kernel with one more trailing axis.
    assert ours_3d.state_dict().keys() == ours.state_dict().keys()
    for key, value in ours.state_dict().items():
        shape_3d = ours_3d.state_dict()[key].shape
        assert shape_3d == (value.shape + value.shape[-1:] if value.ndim == 4 else value.shape), key


@pytest.mark.parametrize(("name", "in_channels"), [("mobileone_s0", 3), ("mobileone_s4", 4)])
def test_2d_features_equal_smp(name, in_channels):
    reference = smp.encoders.get_encoder(name, in_channels=in_channels, weights=None)
    ours = smp3d.get_encoder(name, in_channels=in_channels, spatial_dims=2)
    state = checks.perturbed_state(reference)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, in_channels, 64, 64)
    with torch.no_grad():
        expected, got = reference.eval()(x), ours.eval()(x)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_2d_fused_model_equals_smps_fused_model():
    """Same fused keys and shapes as smp's reparameterize_model, same outputs."""
    x = torch.randn(1, 3, 64, 64)
    reference = trained_like(smp.encoders.get_encoder("mobileone_s0", weights=None))
    ours = smp3d.get_encoder("mobileone_s0", spatial_dims=2)
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference, ours = smp_reparameterize_model(reference).eval(), reparameterize_model(ours).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    with torch.no_grad():
        for a, b in zip(reference(x), ours(x), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


# --- re-parameterization ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    ("name", "spatial_dims", "size"),
    [
        ("mobileone_s0", 2, (64, 64)),  # 4 conv branches, scale and identity branches
        ("mobileone_s4", 2, (64, 64)),  # squeeze-excite
        ("mobileone_s0", 3, (32, 32, 32)),
        ("mobileone_s4", 3, (32, 32, 32)),
    ],
    ids=["s0-2d", "s4-2d", "s0-3d", "s4-3d"],
)
def test_fused_encoder_equals_unfused_in_eval(name, spatial_dims, size, dtype):
    encoder = trained_like(smp3d.get_encoder(name, spatial_dims=spatial_dims).to(dtype))
    x = torch.randn(1, 3, *size, dtype=dtype)
    with torch.no_grad():
        expected = encoder(x)
        assert encoder.reparameterize() is encoder
        got = encoder(x)
    absolute, relative = fusion_error(expected, got)
    print(
        f"{name} {spatial_dims}D {dtype}: fused vs unfused max abs difference {absolute:.2e}, relative {relative:.2e}"
    )
    assert relative < RELATIVE_TOLERANCE[dtype]


def test_fused_state_dict_has_only_fused_keys_and_loads_into_an_inference_mode_build():
    encoder = reparameterize_model(trained_like(smp3d.get_encoder("mobileone_s4", spatial_dims=3, depth=3)))
    state = encoder.state_dict()
    assert not any(".rbr_" in key for key in state)
    assert state["stage0.reparam_conv.weight"].shape == (64, 3, 3, 3, 3)
    assert state["stage0.reparam_conv.bias"].shape == (64,)
    assert state["stage1.0.reparam_conv.weight"].shape == (64, 1, 3, 3, 3)  # depthwise stays depthwise
    assert state["stage1.1.reparam_conv.weight"].shape == (192, 64, 1, 1, 1)
    n_blocks = 1 + 2 * (2 + 8)
    assert sum(key.endswith("reparam_conv.weight") for key in state) == n_blocks
    assert sum(p.numel() for p in encoder.parameters()) < sum(
        p.numel() for p in smp3d.get_encoder("mobileone_s4", depth=3).parameters()
    )
    fresh = smp3d.get_encoder("mobileone_s4", spatial_dims=3, depth=3, inference_mode=True).eval()
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 16, 16, 16)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(fresh(x), encoder.eval()(x), strict=True))


def test_reparameterize_model_copies_unless_inplace_and_is_idempotent():
    encoder = smp3d.get_encoder("mobileone_s0", spatial_dims=2, depth=2)
    fused = reparameterize_model(encoder)
    assert not encoder.inference_mode and fused.inference_mode
    assert hasattr(encoder.stage0, "rbr_conv") and not hasattr(fused.stage0, "rbr_conv")
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    assert reparameterize_model(fused, inplace=True) is fused
    assert all(torch.equal(before[k], v) for k, v in fused.state_dict().items())


def test_block_identity_delta_is_group_aware():
    """A grouped (not depthwise) block with an identity: each channel maps to its own index within its group."""
    block = MobileOneBlock(8, 8, 3, groups=2, num_conv_branches=2, identity=True, spatial_dims=3)
    trained_like(block)
    x = torch.randn(2, 8, 6, 5, 4)
    with torch.no_grad():
        expected = block(x)
        block.reparameterize()
        assert torch.allclose(block(x), expected, atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_whole_unet_reparameterized_gives_the_same_output(spatial_dims):
    model = smp3d.Unet(encoder_name="mobileone_s0", spatial_dims=spatial_dims, classes=2)
    trained_like(model.encoder)
    model.eval()
    x = torch.randn(1, 3, *((64, 64) if spatial_dims == 2 else (32, 32, 32)))
    fused = reparameterize_model(model)
    with torch.no_grad():
        expected, got = model(x), fused(x)
    absolute, relative = fusion_error([x, expected], [x, got])
    print(
        f"Unet(mobileone_s0) {spatial_dims}D: fused vs unfused max abs difference {absolute:.2e}, "
        f"relative {relative:.2e}"
    )
    assert relative < RELATIVE_TOLERANCE[torch.float32]
    keys = fused.state_dict().keys()
    assert "encoder.stage4.1.reparam_conv.bias" in keys and not any(".rbr_" in k for k in keys)


def test_dilated_then_fused_equals_smp_dilated():
    """make_dilated (DeepLab) matches smp's in 2D; fusion keeps the dilation."""
    reference = trained_like(smp.encoders.get_encoder("mobileone_s0", weights=None))
    ours = smp3d.get_encoder("mobileone_s0", spatial_dims=2)
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.make_dilated(8)
    ours.make_dilated(8)
    assert ours.reductions[-1] == (8, 8)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference.eval()(x)
        unfused = ours.eval()(x)
        fused = ours.reparameterize()(x)
    for a, b in zip(expected, unfused, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert fusion_error(expected, fused)[1] < RELATIVE_TOLERANCE[torch.float32]
    assert ours.stage4[0].reparam_conv.dilation == (4, 4)


# --- training, depth, strides, channels -------------------------------------------------------------------------


@pytest.mark.parametrize(("spatial_dims", "size"), [(2, (64, 64)), (3, (32, 32, 32))], ids=["2d", "3d"])
def test_forward_backward_unfused_and_fused(spatial_dims, size):
    encoder = smp3d.get_encoder("mobileone_s0", spatial_dims=spatial_dims).train()
    features = encoder(torch.randn(2, 3, *size))
    sum(f.float().mean() for f in features[1:]).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.parameters())
    encoder.reparameterize()  # the fused model can be fine-tuned too
    encoder.zero_grad(set_to_none=True)
    sum(f.float().mean() for f in encoder(torch.randn(2, 3, *size))[1:]).backward()
    assert all(p.grad is not None for p in encoder.parameters())


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_depth_builds_only_used_stages(depth):
    encoder = build("mobileone_s0", "meta", depth=depth, spatial_dims=3)
    assert [n for n, _ in encoder.named_children()] == [f"stage{i}" for i in range(depth)]
    features = encoder(torch.empty(2, 3, 32, 32, 32, device="meta"))
    assert len(features) == depth + 1 == len(encoder.out_channels)
    assert [f.shape[1] for f in features] == list(encoder.out_channels)


@pytest.mark.parametrize(
    ("strides", "size"),
    [(None, (33, 47, 20)), (((2, 2, 1), (2, 1, 2), 2, (1, 2, 2), (2, 2, 1)), (31, 64, 9))],
    ids=["isotropic", "anisotropic"],
)
def test_per_axis_strides_give_ceil_sizes(strides, size):
    encoder = build("mobileone_s1", "meta", strides=strides)
    features = encoder(torch.empty(1, 3, *size, device="meta"))
    for feature, reduction in zip(features, encoder.reductions, strict=True):
        assert tuple(feature.shape[2:]) == tuple(math.ceil(s / r) for s, r in zip(size, reduction, strict=True))


def test_anisotropic_strides_real_compute_and_fusion():
    strides = ((2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 1, 2), (1, 2, 1))
    encoder = trained_like(smp3d.get_encoder("mobileone_s0", strides=strides))
    assert encoder.reductions[-1] == (16, 16, 4)
    # Keys do not depend on strides: a stride-1 first block gets no identity branch, so weights still load.
    assert encoder.state_dict().keys() == build("mobileone_s0", "meta").state_dict().keys()
    x = torch.randn(1, 3, 32, 32, 8)
    with torch.no_grad():
        expected = encoder(x)
        got = encoder.reparameterize()(x)
    assert [tuple(f.shape[2:]) for f in got] == [(32, 32, 8), (16, 16, 8), (8, 8, 8), (4, 4, 4), (2, 4, 2), (2, 2, 2)]
    assert fusion_error(expected, got)[1] < RELATIVE_TOLERANCE[torch.float32]


@pytest.mark.parametrize("in_channels", [1, 2, 5])
def test_in_channels(in_channels):
    encoder = smp3d.get_encoder("mobileone_s0", in_channels=in_channels, depth=2)
    assert encoder.out_channels[0] == in_channels
    assert encoder.stage0.rbr_conv[0].conv.weight.shape == (48, in_channels, 3, 3, 3)
    assert encoder.stage0.rbr_scale.conv.weight.shape == (48, in_channels, 1, 1, 1)
    assert encoder(torch.randn(1, in_channels, 16, 16, 16))[-1].shape == (1, 48, 4, 4, 4)


@pytest.mark.parametrize("in_channels", [1, 4])
def test_in_channel_adaptation_equals_smps(in_channels):
    """Every stem branch is adapted by smp's rule (smp patches rbr_conv and rbr_scale alike)."""
    reference = smp.encoders.get_encoder("mobileone_s0", weights=None, depth=2)
    ours = smp3d.get_encoder("mobileone_s0", spatial_dims=2, depth=2)
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if k in ours.state_dict()}, strict=True)
    reference.set_in_channels(in_channels, pretrained=True)
    ours.set_in_channels(in_channels)
    assert ours.out_channels[0] == in_channels
    x = torch.randn(1, in_channels, 32, 32)
    with torch.no_grad():
        for a, b in zip(reference.eval()(x), ours.eval()(x), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_pretrained_weights_with_other_in_channels(tmp_path):
    """The registry's path: load 3-channel weights, then adapt (smp3d.encoders.adapt_input_channels)."""
    source = smp3d.get_encoder("mobileone_s0", spatial_dims=3, depth=2)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "model.safetensors")
    encoder = smp3d.get_encoder("mobileone_s0", in_channels=1, depth=2, weights=str(tmp_path / "model.safetensors"))
    assert encoder.out_channels[0] == 1
    for branch in (encoder.stage0.rbr_conv[0], encoder.stage0.rbr_scale):
        assert branch.conv.in_channels == 1
    expected = source.stage0.rbr_scale.conv.weight.sum(1, keepdim=True)
    torch.testing.assert_close(encoder.stage0.rbr_scale.conv.weight, expected)
    assert encoder(torch.randn(1, 1, 16, 16, 16))[-1].shape == (1, 48, 4, 4, 4)


def test_fused_stem_adapts_too():
    encoder = smp3d.get_encoder("mobileone_s0", spatial_dims=2, depth=1).reparameterize()
    encoder.set_in_channels(2)
    assert encoder.stage0.reparam_conv.weight.shape == (48, 2, 3, 3)
    assert encoder(torch.randn(1, 2, 8, 8))[-1].shape == (1, 48, 4, 4)


def test_large_variant_3d_on_meta():
    encoder = build("mobileone_s4", "meta", in_channels=1)
    features = encoder(torch.empty(2, 1, 64, 64, 64, device="meta"))
    assert [tuple(f.shape) for f in features][1:] == [
        (2, 64, 32, 32, 32),
        (2, 192, 16, 16, 16),
        (2, 448, 8, 8, 8),
        (2, 896, 4, 4, 4),
        (2, 2048, 2, 2, 2),
    ]
    assert isinstance(encoder.stage4[0].se, torch.nn.Module) and hasattr(encoder.stage4[0].se, "reduce")
    fused = reparameterize_model(encoder, inplace=True)
    assert fused(torch.empty(1, 1, 32, 32, 32, device="meta"))[-1].shape == (1, 2048, 1, 1, 1)


# --- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(strides=(3, 2, 2, 2, 2)), ValueError, r"mobileone_s0.*at most 2"),
        (dict(strides=(2, 2, 2, 2, (2, 4, 1))), ValueError, r"mobileone_s0.*at most 2"),
        (dict(strides=(2, 2)), ValueError, "`strides` has 2 items but encoder_depth is 5"),
        (dict(depth=6), ValueError, "must be an int in 1..5, got 6"),
        (dict(num_conv_branches=0), ValueError, "num_conv_branches of 'mobileone_s0' must be a positive int"),
        (dict(width_multipliers=(1.0, 2.0)), ValueError, "need 4 items each"),
        (dict(use_sé=True), TypeError, "does not accept these arguments"),
    ],
)
def test_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        build("mobileone_s0", "meta", **kwargs)


def test_identity_branch_needs_equal_channels():
    with pytest.raises(ValueError, match="in_channels == out_channels, got 8 -> 16"):
        MobileOneBlock(8, 16, 1, identity=True)
