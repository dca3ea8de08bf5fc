"""SwinUNETR and its Swin encoder: any input size (padding), N-D windows and masks (MONAI's masks as the
oracle), other encoders, and the errors."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets.swin_unetr import compute_mask

import smp3d
from smp3d_encoders.swinvit import (
    SwinViTEncoder,
    effective_window,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)


@pytest.mark.parametrize(
    "sizes, window, shift",
    [((14, 14, 7), (7, 7, 7), (3, 3, 3)), ((10, 15), (5, 5), (2, 2)), ((8, 8, 4), (4, 4, 4), (2, 2, 0))],
)
def test_shifted_window_mask_equals_monai(sizes, window, shift):
    expected = compute_mask(list(sizes), window, shift, torch.device("cpu"))
    torch.testing.assert_close(shifted_window_mask(sizes, window, shift, torch.device("cpu")), expected)


def test_window_partition_roundtrip_and_relative_index_nd():
    x = torch.randn(2, 6, 4, 3, 5)
    windows = window_partition(x, (3, 2, 3))
    assert windows.shape == (2 * 2 * 2 * 1, 18, 5)
    torch.testing.assert_close(window_reverse(windows, (3, 2, 3), (6, 4, 3)), x)
    index = relative_position_index((3, 2, 3))
    assert index.shape == (18, 18) and index.max() == 5 * 3 * 5 - 1 and index.min() == 0
    assert index.diagonal().unique().numel() == 1  # zero offset -> one row
    assert effective_window((5, 20, 20), (7, 7, 7), (3, 3, 3)) == ((5, 7, 7), (0, 3, 3))


def test_swin_encoder_pads_any_size_and_takes_thin_windows():
    encoder = SwinViTEncoder(in_channels=1, feature_size=12, window_size=(7, 7, 3), depth=3).eval()
    x = torch.randn(1, 1, 26, 22, 10)  # tokens 13x11x5: padded to the windows, never refused
    features = encoder(x)
    assert [tuple(f.shape) for f in features[1:]] == [(1, 12, 13, 11, 5), (1, 24, 7, 6, 3), (1, 48, 4, 3, 2)]
    anisotropic = SwinViTEncoder(in_channels=1, feature_size=12, strides=((2, 2, 1), (2, 2, 1), 2, 2, 2))
    assert anisotropic.reductions[-1] == (32, 32, 8)
    out = anisotropic(torch.randn(1, 1, 64, 64, 16))
    assert out[-1].shape == (1, 192, 2, 2, 2)


@pytest.mark.parametrize("spatial_dims, size", [(3, (40, 20, 12)), (2, (50, 70))])
def test_swinunetr_any_size_is_padded_and_cropped(spatial_dims, size):
    model = smp3d.SwinUNETR(feature_size=12, in_channels=1, classes=2, spatial_dims=spatial_dims).eval()
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        out = model(x)
        padded = torch.nn.functional.pad(x, [p for s in reversed(size) for p in (0, (-s) % 32)])
        reference = model(padded)[(..., *(slice(0, s) for s in size))]
    assert out.shape == (1, 2, *size)
    torch.testing.assert_close(out, reference)


def test_swinunetr_trains_with_another_encoder_and_anisotropic_strides():
    strides = ((2, 2, 1), 2, 2, 2, (2, 2, 1))
    model = smp3d.SwinUNETR(encoder_name="resnet18", in_channels=1, classes=2, strides=strides)
    assert model.decoder.out_channels == 24  # MONAI's default feature_size for encoders without one
    out = model(torch.randn(2, 1, 64, 32, 8))  # 2x1x1 voxels at 1/32: instance norms need more than one
    assert out.shape == (2, 2, 64, 32, 8)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_swinvit_with_unet_and_v2_and_depths():
    model = smp3d.Unet("swinvit_v2_t", encoder_depth=3, decoder_channels=(32, 16, 8), spatial_dims=2, classes=2)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    shallow = smp3d.SwinUNETR(encoder_depth=3, feature_size=12, spatial_dims=2, classes=2)
    assert len(shallow.decoder.blocks) == 3
    assert shallow(torch.randn(1, 3, 30, 30)).shape == (1, 2, 30, 30)


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="single-scale"):
        smp3d.SwinUNETR(encoder_name="unetr_vit_t16", encoder_depth=4)
    with pytest.raises(ValueError, match=r"no feature at level\(s\) \[1\]"):
        smp3d.SwinUNETR("mit_b0", spatial_dims=2)  # MiT's pyramid starts at 1/4
    with pytest.raises(ValueError, match="not divisible by its 3 heads"):
        SwinViTEncoder(feature_size=13)
    with pytest.raises(ValueError, match="each later stride must be 1 or 2"):
        SwinViTEncoder(strides=(2, 3, 2, 2, 2))
    with pytest.raises(ValueError, match="'merging' .* or 'mergingv2'"):
        SwinViTEncoder(merging="merge")
    with pytest.raises(ValueError, match="blocks must be 4 positive ints"):
        SwinViTEncoder(blocks=(2, 2))
    with pytest.raises(ValueError, match="SwinUNETR supports encoder_depth in 1..5"):
        smp3d.SwinUNETR(encoder_depth=6)
    with pytest.raises(ValueError, match="decoder_feature_size must be a positive int"):
        smp3d.SwinUNETR(decoder_feature_size=0, spatial_dims=2)


@pytest.mark.slow  # tracing the Swin blocks takes 10-30 s on 2 cores
def test_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) of a small 3D SwinUNETR (shifted windows, padding): no graph breaks."""
    from architecture_checks import check_compiles

    model = smp3d.SwinUNETR("swinvit_t", in_channels=1, classes=2, blocks=(1, 1, 1, 1), window_size=4)
    check_compiles(model, torch.randn(1, 1, 64, 64, 64))  # instance norm needs > 1 voxel at the bottom
