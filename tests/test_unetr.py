"""UNETR and its ViT: any input size (padding, resized position embeddings), anisotropic patches, other
encoders, the N-D UNETR blocks, and the errors."""

from __future__ import annotations

import pytest
import torch

import smp3d
from smp3d.decoders.unetr.decoder import level_reductions
from smp3d.layers.unetr_blocks import PatchConvTranspose, upsampling_steps

SMALL = {"hidden_size": 48, "mlp_dim": 96, "num_heads": 4, "num_layers": 4}


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_patch_conv_transpose_equals_torch(spatial_dims):
    scale = (2, 3, 1)[:spatial_dims]
    ours = PatchConvTranspose(5, 4, scale, spatial_dims)
    reference = smp3d.layers.conv_transpose(spatial_dims)(5, 4, scale, stride=scale, bias=False)
    reference.weight.data.copy_(ours.weight.data)
    x = torch.randn(2, 5, *(3, 4, 5)[:spatial_dims])
    torch.testing.assert_close(ours(x), reference(x))
    torch.testing.assert_close(ours(x.to(memory_format=smp3d.layers.channels_last_format(spatial_dims))), reference(x))


def test_upsampling_steps_and_level_reductions():
    assert upsampling_steps((8, 8, 8)) == [(2, 2, 2)] * 3
    assert upsampling_steps((8, 8, 2)) == [(2, 2, 2), (2, 2, 1), (2, 2, 1)]
    assert upsampling_steps((1, 1)) == []
    assert upsampling_steps((3, 6)) == [(3, 2), (1, 3)]
    single = ((1, 1, 1), *((16, 16, 4),) * 4)
    assert level_reductions(single, True) == ((1, 1, 1), (2, 2, 1), (4, 4, 1), (8, 8, 2), (16, 16, 4))
    with pytest.raises(ValueError, match="halves evenly"):
        level_reductions(((1, 1), *((10, 10),) * 4), True)


def test_unetr_any_size_and_anisotropic_patch():
    model = smp3d.UNETR("unetr_vit_t16", in_channels=1, classes=2, img_size=(64, 64, 16), feature_size=8,
                        strides=((16, 16, 4), 1, 1, 1), **SMALL).eval()  # fmt: skip
    assert model.decoder.level_reductions[-1] == (16, 16, 4)
    x = torch.randn(1, 1, 50, 40, 10)  # not the img_size (position embeddings resized), not multiples of 16
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 2, 50, 40, 10) and torch.isfinite(out).all()
    grid = model.encoder.position_embeddings((4, 3, 3))
    assert grid.shape == (1, 36, 48)


def test_unetr_trains_with_a_hierarchical_encoder():
    model = smp3d.UNETR("resnet18", in_channels=1, classes=3, feature_size=8, strides=((2, 2, 1), 2, 2, 2))
    assert model.decoder.level_reductions == model.encoder.reductions
    out = model(torch.randn(2, 1, 32, 32, 8))
    assert out.shape == (2, 3, 32, 32, 8)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unetr_2d_default_layout():
    model = smp3d.UNETR(in_channels=1, classes=2, spatial_dims=2, img_size=64, feature_size=8, **SMALL)
    assert [len(s.blocks) for s in model.decoder.skips[1:]] == [2, 1, 0]  # MONAI's encoder2..4
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="single-scale"):
        smp3d.Unet("unetr_vit_t16", encoder_depth=4, decoder_channels=(64, 32, 16, 8))
    with pytest.raises(ValueError, match="only stride item 1"):
        smp3d.UNETR(strides=(16, 2, 1, 1), **SMALL)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        smp3d.UNETR(hidden_size=50, num_heads=4)
    with pytest.raises(ValueError, match="smaller than the patch size"):
        smp3d.UNETR(img_size=8, **SMALL)
    with pytest.raises(ValueError, match="conv_block must be True or False"):
        smp3d.UNETR(conv_block="yes", **SMALL)
    with pytest.raises(ValueError, match="num_layers must be an int >= encoder_depth"):
        smp3d.UNETR(num_layers=2, **{k: v for k, v in SMALL.items() if k != "num_layers"})


@pytest.mark.slow  # tracing the ViT blocks takes 10-30 s on 2 cores
def test_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) of a small 3D UNETR: no graph breaks."""
    from architecture_checks import check_compiles

    model = smp3d.UNETR("unetr_vit_t16", in_channels=1, classes=2)
    # the traced attention sums in another order: one voxel in 65536 differed by 1.3e-5
    check_compiles(model, torch.randn(1, 1, 32, 32, 32), rtol=1e-4, atol=1e-4)
