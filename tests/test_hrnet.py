"""HRNet encoders (timm's 2D layout, N-D) and the HRNet (HRNetV2 head) segmentation model."""

from __future__ import annotations

import architecture_checks as checks
import pytest
import timm
import torch

import smp3d
from smp3d.decoders.hrnet import HRNet
from smp3d.decoders.hrnet.decoder import first_level, transposed_steps

VARIANTS = ["hrnet_w18_small", "hrnet_w18", "hrnet_w32", "hrnet_w48"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- encoder ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hrnet_w18_small", "hrnet_w18"])
@pytest.mark.parametrize("feature_location", ["incre", ""])
def test_2d_loads_timm_and_features_equal(name, feature_location):
    reference = timm.create_model(name, features_only=True, pretrained=False, feature_location=feature_location)
    ours = smp3d.get_encoder(name, spatial_dims=2, feature_location=feature_location)
    state = checks.perturbed_state(reference)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in state.items()}
    ours.load_state_dict(state, strict=True)
    assert ours.out_channels[1:] == tuple(reference.feature_info.channels())
    reference.eval(), ours.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert len(got) == len(expected) + 1 and got[0] is x
    for a, b in zip(expected, got[1:], strict=True):
        # Random weights make activations grow to ~1e7 through the stages: compare relative to the scale.
        scale = a.abs().max().clamp_min(1.0)
        torch.testing.assert_close(b / scale, a / scale, rtol=0, atol=1e-5)


def test_loads_timm_classification_checkpoint_keys():
    """timm's ImageNet checkpoints are the classification model: our keys are a subset with equal shapes."""
    full = timm.create_model("hrnet_w18_small", pretrained=False).state_dict()
    ours = smp3d.get_encoder("hrnet_w18_small", spatial_dims=2)
    head = ("downsamp_modules.", "final_layer.", "classifier.")
    assert {k for k in full if not k.startswith(head)} == set(ours.state_dict())
    ours.load_state_dict({k: v for k, v in full.items() if k in ours.state_dict()}, strict=True)


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_counts_equal_timm_and_3d_keys(name):
    with torch.device("meta"):
        reference = timm.create_model(name, features_only=True, pretrained=False)
        ours_2d = smp3d.get_encoder(name, spatial_dims=2)
        ours_3d = smp3d.get_encoder(name, spatial_dims=3)
    assert _count(ours_2d) == _count(reference)
    state_2d, state_3d = ours_2d.state_dict(), ours_3d.state_dict()
    assert state_2d.keys() == state_3d.keys()
    for key, value in state_2d.items():
        kernel_3d = (*value.shape, value.shape[-1]) if value.dim() == 4 else value.shape
        assert state_3d[key].shape == kernel_3d, key
    spec = smp3d.get_encoder_spec(name)
    assert ours_3d.out_channels == spec.out_channels == (3, 64, 128, 256, 512, 1024)
    assert spec.weights["imagenet"].repo_id.startswith(f"timm/{name}.")


@pytest.mark.parametrize(
    "strides", [None, ((2, 2, 1), (2, 2, 1), 2, 2, 2), (1, 2, 2, (2, 1, 2), 2)], ids=["default", "aniso", "mixed"]
)
def test_metadata_matches_features_3d(strides):
    with torch.device("meta"):
        encoder = smp3d.get_encoder("hrnet_w18", spatial_dims=3, strides=strides)
        size = (64, 64, 32)
        features = encoder(torch.empty(1, 3, *size))
    assert len(features) == 6 and encoder.reductions[0] == (1, 1, 1)
    for feature, channels, reduction in zip(features, encoder.out_channels, encoder.reductions, strict=True):
        assert feature.shape[1] == channels
        assert tuple(feature.shape[2:]) == tuple(s // r for s, r in zip(size, reduction, strict=True))


def test_odd_sizes_and_raw_branches_3d():
    encoder = smp3d.get_encoder("hrnet_w18_small", spatial_dims=3, feature_location="", in_channels=1).eval()
    assert encoder.out_channels == (1, 64, 16, 32, 64, 128)
    with torch.no_grad():
        features = encoder(torch.randn(1, 1, 33, 17, 10))
    # Every stride-2 conv rounds up: ceil(n / reduction).
    assert [tuple(f.shape[2:]) for f in features[1:]] == [(17, 9, 5), (9, 5, 3), (5, 3, 2), (3, 2, 1), (2, 1, 1)]


def test_refuses_bad_arguments():
    with pytest.raises(ValueError, match="encoder_depth=5"):
        smp3d.get_encoder("hrnet_w18_small", depth=4)
    with pytest.raises(ValueError, match="at most 2"):
        smp3d.get_encoder("hrnet_w18_small", strides=(2, 2, 3, 2, 2))
    with pytest.raises(ValueError, match="feature_location"):
        smp3d.get_encoder("hrnet_w18_small", feature_location="head")
    with pytest.raises(TypeError, match="feature_location"):
        smp3d.get_encoder("hrnet_w18_small", width=3)


# --- HRNet model ------------------------------------------------------------------------------------------------


def test_default_model_meta_full_resolution():
    model = checks.check_meta(HRNet, (1, 3, 128, 128, 64), encoder_name="hrnet_w18", in_channels=3, classes=2)
    assert model.decoder.levels == (2, 3, 4, 5)


@pytest.mark.parametrize("upsampling", ["bilinear", "transposed"])
def test_forward_backward_3d(upsampling):
    model = HRNet(encoder_name="hrnet_w18_small", classes=2, upsampling=upsampling, decoder_channels=32)
    checks.check_forward_backward(model, torch.randn(2, 3, 32, 32, 32), classes=2)


def test_hrnet_w18_3d_batch_of_one():
    # Batch 1 at 32^3 leaves the deepest branch at 1^3: batch norm needs eval mode there.
    model = HRNet(encoder_name="hrnet_w18", classes=2).eval()
    x = torch.randn(1, 3, 32, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (1, 2, 32, 32, 32)
    out.mean().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("upsampling", ["bilinear", "transposed"])
def test_2d(upsampling):
    model = HRNet(encoder_name="hrnet_w18_small", classes=3, spatial_dims=2, upsampling=upsampling)
    checks.check_forward_backward(model, torch.randn(2, 3, 64, 64), classes=3)


def test_per_axis_strides_anisotropic():
    strides = ((2, 2, 1), (2, 2, 1), 2, 2, 2)
    model = HRNet(encoder_name="hrnet_w18_small", classes=2, strides=strides, upsampling="transposed").eval()
    assert model.decoder.output_reduction == (1, 1, 1)
    assert [tuple(s[0].stride) for s in model.decoder.upsampling] == [(2, 2, 1), (2, 2, 1)]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64, 16)).shape == (1, 2, 64, 64, 16)
    checks.check_meta(HRNet, (1, 3, 64, 64, 16), encoder_name="hrnet_w18", classes=2, strides=strides)


def test_any_encoder_resnet18():
    model = HRNet(encoder_name="resnet18", classes=2, decoder_channels=32)
    assert model.decoder.levels == (2, 3, 4, 5)
    checks.check_forward_backward(model, torch.randn(2, 3, 32, 32, 32), classes=2)
    model = HRNet(encoder_name="resnet18", classes=2, spatial_dims=2, upsampling="transposed", encoder_depth=3)
    checks.check_forward_backward(model, torch.randn(2, 3, 64, 64), classes=2)


def test_save_and_load(tmp_path):
    model = HRNet(encoder_name="hrnet_w18_small", classes=2, spatial_dims=2, upsampling="transposed").eval()
    model.save_pretrained(tmp_path)
    loaded = HRNet.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_decoder_level_rules_and_errors():
    channels = (3, 64, 64, 128, 256, 512)
    assert first_level(channels, ((1, 1), (2, 2), (4, 4), (8, 8), (16, 16), (32, 32))) == 2
    assert first_level(channels, ((1, 1), (4, 4), (8, 8), (16, 16), (32, 32), (64, 64))) == 1
    assert first_level((3, 0, 64, 128), ((1, 1), (2, 2), (2, 2), (2, 2))) == 3  # none reaches 4: deepest
    assert transposed_steps((4, 4, 2)) == [(2, 2, 2), (2, 2, 1)]
    with pytest.raises(ValueError, match="power of 2"):
        transposed_steps((4, 3))
    with pytest.raises(ValueError, match="upsampling"):
        HRNet(encoder_name="resnet18", upsampling="cubic")


def test_timm_checkpoint_loads_into_the_2d_encoder_without_its_head():
    """timm's whole-model HRNet state dict (head included) maps onto ours key for key, outputs equal."""
    timm = pytest.importorskip("timm")
    full = timm.create_model("hrnet_w18_small", pretrained=False).eval()
    encoder = smp3d.get_encoder("hrnet_w18_small", spatial_dims=2).eval()
    state = encoder.source_state_dict(full.state_dict())
    assert len(state) < len(full.state_dict())  # the head was dropped
    encoder.load_state_dict(state, strict=True)
    reference = timm.create_model("hrnet_w18_small", features_only=True, pretrained=False).eval()
    reference.load_state_dict({k: v for k, v in full.state_dict().items() if k in reference.state_dict()})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(reference(x), encoder(x)[1:], strict=True):
            torch.testing.assert_close(a, b)


def test_compiles_without_graph_breaks():
    model = HRNet("hrnet_w18_small", in_channels=1, classes=2, strides=((2, 2, 1), 2, 2, 2, 2))
    checks.check_compiles(model, torch.randn(1, 1, 32, 32, 16))
