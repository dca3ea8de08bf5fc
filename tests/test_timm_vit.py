"""Plain ViT encoders (``tu-vit_*``, DeiT, DINOv2, EVA ...) in 2D and N-D, and the single-scale metadata."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from architecture_checks import check_compiles

import smp3d
from smp3d.base.assembly import build_encoder
from smp3d.encoders import Encoder, inflate_state_dict
from smp3d_encoders.timm_nd import ConversionError
from smp3d_encoders.timm_vit import TimmViTEncoder, uniform_block_indices

TINY = "tu-vit_tiny_patch16_224"


class _OneScale(Encoder):
    """A toy single-scale encoder: one strided conv, then ``depth - 1`` features at the same reduction."""

    single_scale = True

    def __init__(self, in_channels=3, depth=3, spatial_dims=3, strides=None):
        super().__init__(
            (in_channels, *(8,) * depth), ((4,) * spatial_dims, *((1,) * spatial_dims,) * (depth - 1)), spatial_dims
        )
        conv = (nn.Conv2d, nn.Conv3d)[spatial_dims - 2]
        self.stem = conv(in_channels, 8, 4, stride=4)

    def forward(self, x):
        y = self.stem(x)
        return [x] + [y] * self.depth


def test_pyramid_architectures_refuse_single_scale_encoders(fresh_registry):
    smp3d.register_encoder("toy_one_scale", _OneScale)
    with pytest.raises(ValueError, match=r"single-scale.*\(4, 4, 4\).*smp3d\.DPT or smp3d\.UNETR"):
        smp3d.Unet("toy_one_scale", encoder_depth=3, decoder_channels=(32, 16, 8))
    encoder = build_encoder(
        "DPT",
        "toy_one_scale",
        in_channels=3,
        depth=3,
        weights=None,
        spatial_dims=3,
        strides=None,
        single_scale_ok=True,
    )
    assert encoder.reductions[1:] == ((4, 4, 4),) * 3


def test_unet_refuses_a_vit():
    with torch.device("meta"), pytest.raises(ValueError, match=r"tu-vit_tiny_patch16_224.*single-scale.*DPT"):
        smp3d.Unet(TINY, encoder_depth=4, decoder_channels=(64, 32, 16, 8))


def test_metadata_2d_and_per_axis_patch_3d():
    with torch.device("meta"):
        e2 = smp3d.get_encoder(TINY, depth=4, spatial_dims=2)
        e3 = smp3d.get_encoder(TINY, depth=3, spatial_dims=3, patch_size=(16, 16, 4), in_channels=1)
        e3s = smp3d.get_encoder(TINY, depth=2, spatial_dims=3, strides=((16, 16, 8), 1))
    assert isinstance(e2, TimmViTEncoder) and e2.single_scale and e2.num_prefix_tokens == 1
    assert e2.out_channels == (3, 192, 192, 192, 192)
    assert e2.reductions == ((1, 1), *((16, 16),) * 4)
    assert e2.output_indices == (2, 5, 8, 11) == uniform_block_indices(4, 12)
    assert e3.reductions == ((1, 1, 1), *((16, 16, 4),) * 3)
    assert tuple(e3.model.patch_embed.proj.weight.shape) == (192, 1, 16, 16, 4)
    # position table: 14 x 14 in-plane, 224 / 4 = 56 along depth, plus the class token
    assert tuple(e3.model.pos_embed.shape) == (1, 1 + 14 * 14 * 56, 192)
    assert e3s.reductions[-1] == (16, 16, 8)
    x = torch.empty(2, 1, 64, 32, 16, device="meta")
    with torch.device("meta"):
        features, prefixes = e3.forward_tokens(x)
    assert [tuple(f.shape) for f in features[1:]] == [(2, 192, 4, 2, 4)] * 3
    assert [tuple(p.shape) for p in prefixes] == [(2, 1, 192)] * 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(strides=((16, 16, 4), 2, 1, 1)), r"reduce after the patch embedding"),
        (dict(strides=(16, 1)), r"does not fit.*4 items"),
        (dict(patch_size=(16, 16)), r"patch_size must be .* 3 positive ints"),
        (dict(patch_size=16, strides=(16, 1, 1, 1)), r"patch size once"),
        (dict(output_indices=(1, 2, 3)), r"output_indices must be 4 block indices"),
        (dict(output_indices=(1, 2, 3, 12)), r"12 blocks: output_indices must be ints in \[-12, 12\)"),
        (dict(output_indices=(3, 2, 5, 6)), r"increasing and distinct"),
        (dict(position_grid=(4, 4)), r"position_grid must be a positive int or 1 positive ints"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        smp3d.get_encoder(TINY, depth=4, spatial_dims=3, **kwargs)


def test_depth_beyond_the_blocks_is_refused():
    with torch.device("meta"), pytest.raises(ValueError, match=r"encoder_depth .* 1\.\.12"):
        smp3d.get_encoder(TINY, depth=13, spatial_dims=3)


@pytest.mark.parametrize(
    ("name", "spatial_dims", "match"),
    [
        ("mixer_s16_224", 2, r"single-scale but not a plain ViT"),
        ("beit_base_patch16_224", 2, r"relative position bias tables"),
        ("eva02_tiny_patch14_224", 2, r"rotary position embeddings"),
        ("vit_tiny_r_s16_p8_224", 2, r"single-scale but not a plain ViT"),  # hybrid: a CNN before the blocks
    ],
)
def test_unconverted_families_are_refused_with_the_reason(name, spatial_dims, match):
    with torch.device("meta"), pytest.raises(ConversionError, match=match):
        smp3d.get_encoder(f"tu-{name}", depth=4, spatial_dims=spatial_dims)


def test_2d_equals_timm_forward_intermediates():
    """One token loop for 2D and N-D: in 2D it is timm's own forward_intermediates (resized positions included)."""
    encoder = smp3d.get_encoder(TINY, depth=3, spatial_dims=2, output_indices=(0, 5, -1)).eval()
    model = timm.create_model("vit_tiny_patch16_224", dynamic_img_size=True).eval()
    model.load_state_dict(encoder.model.state_dict())
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        features, prefixes = encoder.forward_tokens(x)
        expected = model.forward_intermediates(
            x, indices=[0, 5, 11], intermediates_only=True, return_prefix_tokens=True
        )
    assert features[0] is x
    for got, tokens, (want, want_tokens) in zip(features[1:], prefixes, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.testing.assert_close(tokens, want_tokens, rtol=0, atol=0)


def _random_like_timm(encoder: nn.Module) -> nn.Module:
    """Fill a meta-built encoder with random values of timm's shapes (faster than timm's initialisation):
    weights N(0, 0.05), norm scales N(1, 0.1), layer scales N(0.5, 0.1), biases N(0, 0.05); float64, eval."""
    encoder = encoder.to_empty(device="cpu").double().eval()
    assert not list(encoder.buffers())  # every value is set below
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if name.endswith("gamma"):
                p.normal_(0.5, 0.1)
            elif p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.05)
    return encoder


def _inflated_pair(name: str, patch: tuple[int, ...], **kwargs) -> tuple[nn.Module, nn.Module]:
    """A 2D encoder with timm's (pretrained-shaped) random weights and its inflation to 3D, in float64."""
    with torch.device("meta"):
        e2 = smp3d.get_encoder(name, depth=3, spatial_dims=2)
        e3 = smp3d.get_encoder(name, depth=3, spatial_dims=3, patch_size=patch, **kwargs)
    e2 = _random_like_timm(e2)
    e3 = e3.to_empty(device="cpu").double().eval()
    e3.load_state_dict(inflate_state_dict(e3.source_state_dict(e2.model.state_dict()), e3))
    return e2, e3


@pytest.mark.parametrize(
    ("name", "patch", "kwargs"),
    [
        (TINY, (16, 16, 4), {}),  # ViT: class token
        ("tu-vit_small_patch14_reg4_dinov2", (14, 14, 7), dict(position_grid=3)),  # DINOv2: class + 4 registers
    ],
    ids=["vit", "dinov2"],
)
def test_inflation_proof(name, patch, kwargs):
    """A depth-constant volume gives, at every depth slice, the 2D encoder's features (float64)."""
    e2, e3 = _inflated_pair(name, patch, **kwargs)
    image = torch.randn(2, 3, patch[0] * 3, patch[1] * 2, dtype=torch.float64)
    volume = image.unsqueeze(-1).expand(*image.shape, patch[2] * 3)
    with torch.no_grad():
        features_2d, prefixes_2d = e2.forward_tokens(image)
        features_3d, prefixes_3d = e3.forward_tokens(volume)
    for f2, f3 in zip(features_2d[1:], features_3d[1:], strict=True):
        assert f3.shape == (*f2.shape, 3)
        assert ((f3 - f2.unsqueeze(-1)).abs().max() / f2.abs().max()).item() < 1e-5
    for p2, p3 in zip(prefixes_2d, prefixes_3d, strict=True):
        assert ((p3 - p2).abs().max() / p2.abs().max()).item() < 1e-5


def test_inflation_proof_needs_the_prefix_bias(monkeypatch):
    """Without log(k) on the prefix keys the class token's share of attention shrinks k-fold: the proof fails."""
    e2, e3 = _inflated_pair(TINY, (16, 16, 4))
    monkeypatch.setattr(e3, "_prefix_bias", lambda tokens, grid: None)
    image = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        f2 = e2(image)[-1]
        f3 = e3(image.unsqueeze(-1).expand(*image.shape, 12))[-1]
    assert ((f3 - f2.unsqueeze(-1)).abs().max() / f2.abs().max()).item() > 1e-3


def test_source_state_dict_resamples_and_inflates_the_position_table():
    """A timm checkpoint of another image size (a 7 x 7 table) maps onto the 3D encoder; missing keys are named."""
    encoder = smp3d.get_encoder(TINY, depth=2, spatial_dims=3, position_grid=2)
    source = timm.create_model("vit_tiny_patch16_224", img_size=112).state_dict()
    state = inflate_state_dict(encoder.source_state_dict(source), encoder)
    encoder.load_state_dict(state)
    table = encoder.model.pos_embed.detach()[0, 1:].reshape(14, 14, 2, 192)
    torch.testing.assert_close(table[..., 0, :], table[..., 1, :], rtol=0, atol=0)
    del source["blocks.3.mlp.fc1.weight"]
    with pytest.raises(ValueError, match=r"Missing keys \(1\): model\.blocks\.3\.mlp\.fc1\.weight"):
        encoder.source_state_dict(source)


def test_3d_forward_backward_and_prefix_bias_under_autocast():
    encoder = smp3d.get_encoder(TINY, depth=2, spatial_dims=3, in_channels=1, patch_size=(16, 16, 8), position_grid=4)
    x = torch.randn(1, 1, 32, 32, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = encoder(x)
    assert features[-1].shape == (1, 192, 2, 2, 3)
    features[-1].float().square().mean().backward()
    assert encoder.model.pos_embed.grad is not None and torch.isfinite(encoder.model.patch_embed.proj.weight.grad).all()


@pytest.mark.slow  # about 20-35 s on 2 cores: Dynamo traces timm's blocks
def test_compiles_without_graph_breaks_3d():
    """torch.compile(fullgraph=True) of a 3D ViT encoder (class token, prefix bias, resized positions):
    no graph breaks, equal to eager."""
    encoder = smp3d.get_encoder(TINY, depth=1, spatial_dims=3, patch_size=(16, 16, 8), position_grid=3).eval()
    check_compiles(encoder, torch.randn(1, 3, 32, 32, 16))


def test_pretrained_tag_loads_timm_weights_inflated(tmp_path, monkeypatch):
    """``encoder_weights``: timm's 2D safetensors (fetched through a faked Hub) -> N-D, strictly, with
    in_channels adapted; a DPT with that encoder builds on it."""
    from safetensors.torch import save_file

    full = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    file = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(file))
    seen = []

    def download(repo_id, filename, revision=None, **_):
        seen.append(repo_id)
        return str(file)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    encoder = smp3d.get_encoder(
        "tu-vit_tiny_patch16_224.augreg_in21k", weights="augreg_in21k", depth=2, in_channels=1,
        patch_size=(16, 16, 2), position_grid=2,
    )  # fmt: skip
    assert seen == ["timm/vit_tiny_patch16_224.augreg_in21k"]
    kernel = full.patch_embed.proj.weight.detach().sum(1, keepdim=True)  # smp's rule for 1 channel
    torch.testing.assert_close(
        encoder.model.patch_embed.proj.weight, kernel.unsqueeze(-1).expand(-1, -1, 16, 16, 2) / 2
    )
    table = encoder.model.pos_embed.detach()
    torch.testing.assert_close(
        table[:, 1:].reshape(14, 14, 2, 192)[..., 1, :], full.pos_embed.detach()[0, 1:].reshape(14, 14, 192)
    )
    torch.testing.assert_close(encoder.model.blocks[7].mlp.fc2.weight, full.blocks[7].mlp.fc2.weight)
