"""``tu-<timm name>`` encoders: timm models converted to 2D/3D live, their weights, strides and errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import smp3d
from smp3d.encoders import UnknownEncoderError, inflate_state_dict
from smp3d.encoders.hub import PretrainedWeightsUnavailableError
from smp3d_encoders.timm_nd import ConversionError, SpatialNdMode, convert_to_nd
from smp3d_encoders.timm_universal import MIGRATION_ALIASES
from weights_tools.verify import depth_stride_one, inflation_report

timm = pytest.importorskip("timm")

# Small models across timm's families; each exercises a different part of the conversion.
FAMILIES = {
    "resnet10t": "deep stem, average-pool shortcut",
    "regnety_002": "squeeze-excite over (2, 3)",
    "mobilenetv3_small_050": "hard-swish, SE, depthwise",
    "tf_efficientnet_lite0": "TF 'SAME' padded convolutions",
    "convnext_atto": "LayerNorm2d permutes, layer scale, pyramid from reduction 4",
    "convnextv2_atto": "global response norm",
    "ghostnet_050": "channel slicing, cheap operations",
    "resnest14d": "split attention (B, C, H, W unpacking)",
    "skresnet18": "selective kernel attention",
    "dla46_c": "hierarchical aggregation",
    "lcnet_050": "PP-LCNet blocks",
    "resnetblur18": "blur pools",
    "repvgg_a0": "RepVGG multi-branch blocks",
    "nf_regnet_b0": "scaled weight-standardised convolutions",
}
# The equivalence proof: families without TF 'SAME' padding or reflect-padded blur (both pad depth on
# their own, so only the interior is exact there).
EXACT = [
    "resnet10t",
    "regnety_002",
    "mobilenetv3_small_050",
    "convnext_atto",
    "convnextv2_atto",
    "resnest14d",
    "skresnet18",
    "dla46_c",
    "nf_regnet_b0",
]


def _tu(name: str, **kwargs) -> nn.Module:
    return smp3d.get_encoder(f"tu-{name}", **kwargs)


def _sizes(x: torch.Tensor, encoder: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(n // r for n, r in zip(x.shape[2:], red, strict=True)) for red in encoder.reductions]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_3d_forward_backward(name: str) -> None:
    encoder = _tu(name, in_channels=1)
    size = 64 if name == "resnest14d" else 32  # its 3x3 average pools need 3 voxels at reduction 16
    x = torch.randn(2, 1, size, size, size)
    features = encoder(x)
    assert len(features) == 6 and features[0] is x
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, *s) for c, s in zip(encoder.out_channels, _sizes(x, encoder), strict=True)
    ]
    sum(f.float().square().mean() for f in features[1:] if f.numel()).backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", EXACT)
def test_depth_constant_volume_gives_the_2d_features(name: str) -> None:
    """The proof: 2D weights inflated I3D; every depth slice of every feature equals timm's 2D feature."""
    encoder_2d = _tu(name, spatial_dims=2).eval()
    reference = timm.create_model(name, features_only=True, out_indices=encoder_2d.model.feature_info.out_indices)
    reference.load_state_dict({k[len("model.") :]: v for k, v in encoder_2d.state_dict().items()})
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(
            torch.allclose(a, b)
            for a, b in zip(reference.eval()(image), encoder_2d(image)[1 + encoder_2d.placeholder :], strict=True)
        )
    encoder_3d = _tu(name, spatial_dims=3, strides=depth_stride_one(5))
    report = inflation_report(encoder_2d, encoder_3d, image=image, depth=5, mode="i3d", dtype=torch.float64)
    assert report.max_rel < 1e-9, report


def test_tf_same_padding_is_exact_in_the_interior() -> None:
    encoder_2d = _tu("tf_efficientnet_lite0", spatial_dims=2, depth=2).eval()
    encoder_3d = _tu("tf_efficientnet_lite0", spatial_dims=3, depth=2, strides=depth_stride_one(2)).eval()
    encoder_3d.load_state_dict(inflate_state_dict(encoder_2d.state_dict(), encoder_3d))
    image = torch.randn(1, 3, 32, 32)
    volume = image.unsqueeze(-1).expand(1, 3, 32, 32, 24).contiguous()
    with torch.no_grad():
        f2, f3 = encoder_2d(image)[-1], encoder_3d(volume)[-1]
    centre = f3[..., 12]
    assert torch.allclose(centre, f2, atol=1e-5, rtol=1e-4)


def test_2d_equals_smp_tu_encoder() -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    theirs = smp.encoders.get_encoder("tu-resnet18", in_channels=1, depth=5, weights=None).eval()
    ours = _tu("resnet18", in_channels=1, spatial_dims=2).eval()
    assert list(theirs.state_dict()) == list(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    assert tuple(theirs.out_channels) == ours.out_channels
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        for a, b in zip(theirs(x), ours(x), strict=True):
            torch.testing.assert_close(a, b)


def test_2d_reduction_four_pyramid_matches_smp_placeholder() -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    theirs = smp.encoders.get_encoder("tu-convnext_atto", depth=5, weights=None).eval()
    ours = _tu("convnext_atto", spatial_dims=2).eval()
    ours.load_state_dict(theirs.state_dict())
    assert tuple(theirs.out_channels) == ours.out_channels == (3, 0, 40, 80, 160, 320)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(theirs(x), ours(x), strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_depth_selects_levels(depth: int) -> None:
    encoder = _tu("resnet10t", depth=depth)
    assert len(encoder.out_channels) == depth + 1
    x = torch.randn(2, 3, 32, 32, 32)
    assert [tuple(f.shape[2:]) for f in encoder(x)] == _sizes(x, encoder)


def test_reduction_four_pyramid_needs_depth_two() -> None:
    with pytest.raises(ConversionError, match="reductions \\[4, 8, 16, 32\\]"):
        _tu("convnext_atto", depth=1)


def test_pyramid_starting_at_reduction_sixteen_gets_placeholders(monkeypatch) -> None:
    from smp3d_encoders import timm_universal

    info = ((32, 16), (64, 32), (128, 64))  # LeViT / EfficientViT-M style
    monkeypatch.setattr(timm_universal, "_feature_info", lambda name: info)
    assert timm_universal._plan("any", 5) == ((0, 1), (0, 0, 0, 32, 64), 3)
    with pytest.raises(ConversionError, match="consecutive powers of 2"):
        timm_universal._plan("any", 3)


def test_per_axis_strides() -> None:
    strides = ((2, 2, 1), (2, 2, 1), 2, (2, 1, 2), 2)
    for name in ("resnet10t", "convnext_atto", "mobilenetv3_small_050"):
        encoder = _tu(name, in_channels=1, strides=strides)
        assert encoder.reductions[-1] == (32, 16, 8)
        x = torch.randn(2, 1, 64, 32, 16)
        assert [tuple(f.shape[2:]) for f in encoder(x)] == _sizes(x, encoder)


def test_per_axis_strides_2d() -> None:
    encoder = _tu("regnetx_002", spatial_dims=2, strides=((2, 1), 2, 2, (1, 2), 2))
    x = torch.randn(1, 3, 32, 64)
    assert (
        [tuple(f.shape[2:]) for f in encoder(x)]
        == _sizes(x, encoder)
        == [(32, 64), (16, 64), (8, 32)]
        + [
            (4, 16),
            (4, 8),
            (2, 4),
        ]
    )


def test_strides_above_two_are_refused() -> None:
    with pytest.raises(ValueError, match="at most 2"):
        _tu("resnet10t", strides=(4, 2, 2, 2, 2))


def test_timm_kwargs_pass_through_and_reserved_ones_are_refused() -> None:
    encoder = _tu("resnet10t", drop_path_rate=0.1)
    assert any(type(m).__name__ == "DropPath" for m in encoder.modules())
    with pytest.raises(TypeError, match="set by the encoder"):
        _tu("resnet10t", features_only=False)


@pytest.mark.parametrize("arch", ["Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "PAN", "DeepLabV3",
                                  "DeepLabV3Plus", "UPerNet", "Segformer", "HRNet"])  # fmt: skip
def test_every_architecture_takes_a_tu_encoder(arch: str) -> None:
    model = getattr(smp3d, arch)(encoder_name="tu-regnetx_002", in_channels=1, classes=2)
    x = torch.randn(2, 1, 32, 32, 32)
    out = model(x)
    assert out.shape == (2, 2, 32, 32, 32)
    out.square().mean().backward()


def test_reduction_four_encoder_in_unet_and_deeplab() -> None:
    for arch in ("Unet", "FPN", "UPerNet"):
        model = getattr(smp3d, arch)(encoder_name="tu-convnext_atto", in_channels=1, classes=3)
        assert model(torch.randn(2, 1, 32, 32, 32)).shape == (2, 3, 32, 32, 32)
    # ConvNeXt downsamples with 2x2 patchifying convolutions, which no symmetric dilation replaces
    with pytest.raises(ValueError, match="even along axis"):
        smp3d.DeepLabV3Plus(encoder_name="tu-convnext_atto")


def test_dilation_keeps_deep_features_finer() -> None:
    encoder = _tu("resnet10t")
    encoder.make_dilated(8)
    assert encoder.reductions[-1] == (8, 8, 8)
    x = torch.randn(2, 3, 32, 32, 32)
    assert encoder(x)[-1].shape[2:] == (4, 4, 4)


@pytest.mark.parametrize("name", ["resnet10t", "convnext_atto"])
def test_torch_compile_traces_the_conversion_without_graph_breaks(name: str) -> None:
    """Dynamo traces the function mode: one graph, and the compiled model gives the eager output."""
    model = smp3d.Unet(f"tu-{name}", in_channels=1, classes=2).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend="eager")(x), model(x))


def test_channels_last_3d_and_bf16_autocast() -> None:
    model = smp3d.Unet("tu-regnety_002", in_channels=1, classes=2).to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 1, 32, 32, 32).to(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 2, 32, 32, 32) and torch.isfinite(out.float()).all()


def test_2d_encoder_is_timms_own_module_tree() -> None:
    """In 2D nothing is converted: the module tree is timm's own."""
    encoder = _tu("mobilenetv3_small_050", spatial_dims=2)
    assert not any(type(m).__module__ == "smp3d_encoders.timm_nd" for m in encoder.modules())


# -- errors --------------------------------------------------------------------------------------


def test_unknown_timm_model_names_close_matches() -> None:
    with pytest.raises(UnknownEncoderError, match="resnet18") as info:
        smp3d.get_encoder("tu-resnet18x")
    assert "prefix 'tu'" in str(info.value)


def test_unknown_pretrained_tag_is_refused() -> None:
    with pytest.raises(UnknownEncoderError, match="a1_in1k"):
        smp3d.get_encoder_spec("tu-resnet18.nonexistent")


def test_non_hierarchical_model_is_refused_clearly() -> None:
    # plain ViTs are single-scale encoders (tests/test_timm_vit.py); an MLP-Mixer is not one
    with pytest.raises(ConversionError, match="single-scale but not a plain ViT"):
        _tu("mixer_s16_224")


def test_unconvertible_module_is_named() -> None:
    with pytest.raises(ConversionError, match=r"module 'stages_2\.1\.self_attn' \(timm\.layers\.halo_attn"):
        _tu("halonet26t", depth=4)


class _Custom2d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(4, 3, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.kernel, padding=1)


def test_module_with_an_unknown_2d_kernel_is_named() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Sequential(_Custom2d()))
    with pytest.raises(ConversionError, match=r"module '1\.0' .*_Custom2d.*'kernel' of shape \(4, 3, 3, 3\)"):
        convert_to_nd(model, 3)


def test_pixel_shuffle_is_refused() -> None:
    with pytest.raises(ConversionError, match="pixel shuffle"):
        convert_to_nd(nn.Sequential(nn.PixelShuffle(2)), 3)


def test_function_mode_rewrites_only_what_2d_code_gets_wrong() -> None:
    x = torch.randn(2, 4, 6, 8, 10)
    scale = torch.randn(1, 4, 1, 1)
    with SpatialNdMode(3):
        mean = x.mean((2, 3), keepdim=True)
        last = x.permute(0, 2, 3, 1)
        gated = x * scale
        pooled = nn.functional.adaptive_avg_pool2d(x, 1)
        padded = nn.functional.pad(x, (1, 1, 1, 1))
        channel_sum = x.sum(1)
        small = torch.randn(3, 5).mean((0, 1))
    assert mean.shape == (2, 4, 1, 1, 1)
    torch.testing.assert_close(mean, x.mean((2, 3, 4), keepdim=True))
    assert last.shape == (2, 6, 8, 10, 4)
    torch.testing.assert_close(gated, x * scale.unsqueeze(-1))
    assert pooled.shape == (2, 4, 1, 1, 1)
    assert padded.shape == (2, 4, 8, 10, 12)
    assert channel_sum.shape == (2, 6, 8, 10)
    assert small.shape == ()


# -- weights -------------------------------------------------------------------------------------


def _fake_hub(tmp_path, monkeypatch, name: str, state: dict) -> None:
    from safetensors.torch import save_file

    file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    seen = []

    def download(repo_id, filename, revision=None, **_):
        seen.append((repo_id, filename))
        assert repo_id.startswith("timm/") and filename == "model.safetensors"
        return str(file)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    return seen


def test_pretrained_tag_loads_timm_weights_inflated(tmp_path, monkeypatch) -> None:
    full = timm.create_model("resnet10t", pretrained=False)  # with the classifier, as timm publishes it
    seen = _fake_hub(tmp_path, monkeypatch, "resnet10t", full.state_dict())
    encoder = _tu("resnet10t", weights="imagenet", in_channels=1, depth=3)
    assert seen == [("timm/resnet10t.c3_in1k", "model.safetensors")]
    conv = encoder.model.conv1[0].weight
    expected = full.state_dict()["conv1.0.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(conv, expected.unsqueeze(-1).expand(*expected.shape, 3) / 3)
    torch.testing.assert_close(encoder.model.layer2[0].bn1.running_var, full.layer2[0].bn1.running_var)


def test_pretrained_weights_with_flattened_stage_names(tmp_path, monkeypatch) -> None:
    full = timm.create_model("regnetx_002", pretrained=False)
    _fake_hub(tmp_path, monkeypatch, "regnetx_002", full.state_dict())
    encoder = _tu("regnetx_002", weights="imagenet", spatial_dims=2)
    torch.testing.assert_close(encoder.model.s1.b1.conv1.conv.weight, full.s1.b1.conv1.conv.weight)


def test_corrupt_pretrained_weights_load_nothing(tmp_path, monkeypatch) -> None:
    state = timm.create_model("resnet10t", pretrained=False).state_dict()
    del state["layer1.0.conv1.weight"]
    _fake_hub(tmp_path, monkeypatch, "resnet10t", state)
    with pytest.raises(ValueError, match=r"Missing keys \(1\): model\.layer1\.0\.conv1\.weight"):
        _tu("resnet10t", weights="imagenet")


def test_pretrained_weights_offline_give_a_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path), raising=False)
    with pytest.raises(PretrainedWeightsUnavailableError, match="timm/resnet10t.c3_in1k"):
        _tu("resnet10t", weights="imagenet")


def test_convert_weights_for_a_tu_encoder(tmp_path) -> None:
    """smp3d-convert-weights on a timm checkpoint: the classifier is dropped, the proof is written."""
    from safetensors.torch import save_file

    from weights_tools.convert import convert_encoder

    source = tmp_path / "resnet10t.safetensors"
    save_file(timm.create_model("resnet10t", pretrained=False).state_dict(), str(source))
    result = convert_encoder("tu-resnet10t", source=str(source), output=tmp_path / "out", progress=False)
    assert result.equivalence_error["max_rel"] < 1e-4
    encoder = _tu("resnet10t", weights=str(tmp_path / "out"))
    assert encoder.model.conv1[0].weight.shape == (24, 3, 3, 3, 3)


# -- migration names -----------------------------------------------------------------------------

SMP3D_NAMES_FIRST_PARTY = 54


def test_all_124_migration_names_resolve() -> None:
    first_party = [
        *[f"resnet{n}" for n in (18, 34, 50, 101, 152)],
        "resnext50_32x4d",
        *[f"resnext101_32x{n}d" for n in (4, 8, 16, 32, 48)],
        *[f"dpn{n}" for n in ("68", "68b", "92", "98", "107", "131")],
        *[f"vgg{n}{bn}" for n in (11, 13, 16, 19) for bn in ("", "_bn")],
        "senet154",
        *[f"se_resnet{n}" for n in (50, 101, 152)],
        "se_resnext50_32x4d",
        "se_resnext101_32x4d",
        *[f"densenet{n}" for n in (121, 161, 169, 201)],
        *[f"efficientnet-b{i}" for i in range(8)],
        *[f"mit_b{i}" for i in range(6)],
        *[f"mobileone_s{i}" for i in range(5)],
    ]
    assert len(first_party) == SMP3D_NAMES_FIRST_PARTY
    names = first_party + list(MIGRATION_ALIASES)
    assert len(set(names)) == 124
    known = set(smp3d.list_encoders())
    assert not [n for n in names if n not in known]


@pytest.mark.parametrize("name", sorted(MIGRATION_ALIASES))
def test_migration_alias_points_at_a_timm_model_and_tag(name: str) -> None:
    timm_name, tag = MIGRATION_ALIASES[name]
    assert timm.is_model(timm_name)
    spec = smp3d.get_encoder_spec(name)
    if tag:
        cfg = timm.models.get_pretrained_cfg(f"{timm_name}.{tag}")
        assert cfg is not None and cfg.hf_hub_id == f"timm/{timm_name}.{tag}"
        assert spec.weights["imagenet"].repo_id == cfg.hf_hub_id


@pytest.mark.parametrize("name", ["timm-regnetx_002", "timm-mobilenetv3_small_075", "timm-gernet_s", "mobilenet_v2"])
def test_migration_aliases_build_in_3d(name: str) -> None:
    encoder = smp3d.get_encoder(name, in_channels=1)
    x = torch.randn(2, 1, 32, 32, 32)
    assert [tuple(f.shape[2:]) for f in encoder(x)] == _sizes(x, encoder)


@pytest.mark.parametrize("name", ["timm-efficientnet-b7", "timm-resnest269e", "inceptionresnetv2", "xception"])
def test_big_migration_aliases_build_on_meta(name: str) -> None:
    with torch.device("meta"):
        encoder = smp3d.get_encoder(name).eval()
        x = torch.empty(1, 3, 128, 128, 128)
        features = encoder(x)
    assert len(features) == 6
    assert math.prod(features[-1].shape[2:]) > 0


def test_feature_without_a_module_is_skipped_as_smp_does_for_tresnet() -> None:
    """TResNet's reduction-2 entry names no module (timm cannot return it): level 1 becomes a placeholder."""
    from smp3d_encoders.timm_universal import _plan

    indices, channels, placeholder = _plan("tresnet_m", 5)
    assert indices == (1, 2, 3, 4) and channels == (0, 64, 128, 1024, 2048) and placeholder == 1
