"""More timm attention families as ``tu-`` encoders in 3D: a small 3D forward and the inflation proof."""

from __future__ import annotations

import pytest
import torch

import smp3d
from weights_tools.verify import depth_stride_one, inflation_report

timm = pytest.importorskip("timm")

# The smallest model of each family, the shallowest encoder depth that reaches its attention blocks (deeper
# stages are left out to keep the tests fast), and the image size of the proof (every stage keeps a token).
FAMILIES = {
    "efficientformer_l1": (5, 64),  # global attention with a LeViT bias in the last stage (2 x 2 tokens)
    "swiftformer_xs": (2, 32),  # additive attention
    "edgenext_xx_small": (3, 32),  # split depthwise convolutions, cross-covariance attention, Fourier positions
    "efficientvit_m0": (4, 64),  # cascaded group attention in windows, LeViT bias
    "shvit_s1": (5, 64),  # single-head attention on part of the channels
    "swinv2_cr_tiny_224": (3, 32),  # shifted cosine windows (padded 8 -> 14), continuous bias, patch merging
    "efficientvim_m1": (4, 64),  # hidden-state mixer (state-space duality) over all tokens
    "iformer_s": (5, 64),  # single-head modulation attention, windowed in the last stage
    "visformer_tiny": (4, 64),  # convolutional attention, absolute position embeddings resized and copied
    "coat_lite_tiny": (2, 32),  # factorised attention, convolutional position encodings, class token
}
# Families whose attention downsamples by itself inside a stage (a stride the encoder's per-stage strides do
# not reach, so no depth stride of 1 for the proof): their 2D conversion is checked against timm's model at
# a size timm accepts, and their 3D forward at a small size.
TIMM_2D = {  # name: (depth, image size timm accepts)
    "efficientformerv2_s0": (5, 224),  # attention on a strided grid with talking heads; downsampling attention
    "lowformer_b0": (4, 64),  # attention on a grid of stride 4, transposed-convolution upsampling
    "cpubone_b0_bfrobust": (4, 64),
    "twins_svt_small": (2, 64),  # locally grouped windows (padded), sub-sampled global attention, N-D grids
    "gcvit_xxtiny": (2, 224),  # windows with a global query pooled to the window at timm's img_size
    # multi-query attention with strided keys and values: the layer MobileNet V5 is built on (its smallest
    # model, 300M parameters, is too big to run here; the coverage report builds and runs it on meta)
    "mobilenetv4_hybrid_medium_075": (4, 64),
    "hieradet_small": (3, 64),  # windows with query pooling, resized + tiled window position embeddings
    "levit_128s": (5, 224),  # token grids carried through the stages, downsampling attention, offset biases
    "pit_ti_224": (5, 224),  # pooling stages with class tokens, position embedding resized and copied
    "botnet26t_256": (5, 256),  # global attention with per-axis relative logits (BoTNet; HaloNet is refused)
}
UNPADDED_STEM = {"pit_ti_224"}


def _tu(name: str, **kwargs) -> torch.nn.Module:
    return smp3d.get_encoder(f"tu-{name}", **kwargs)


@torch.no_grad()
def _randomize_zeros(module: torch.nn.Module) -> torch.nn.Module:
    """Parameters timm initialises to zero (position biases, layer scales, zero-init norms) made random, so that
    the checks see them."""
    for p in module.parameters():
        if p.numel() and not bool(p.any()):
            p.normal_(0.0, 0.5)
    return module


@pytest.mark.parametrize("name", list(TIMM_2D))
def test_3d_forward_gives_every_feature(name: str) -> None:
    """(The families of the proof run a 3D forward there.)"""
    depth, size = TIMM_2D[name][0], 64
    torch.manual_seed(0)
    encoder = _tu(name, spatial_dims=3, depth=depth, in_channels=1).eval()
    x = torch.randn(1, 1, size, size, 16)
    with torch.no_grad():
        features = encoder(x)
    assert len(features) == depth + 1
    for f, red, c in zip(features[1:], encoder.reductions[1:], encoder.out_channels[1:], strict=True):
        assert tuple(f.shape[:2]) == (1, c)
        expected = tuple(-(-s // r) for s, r in zip(x.shape[2:], red, strict=True))
        if name in UNPADDED_STEM:  # timm's stem convolution has no padding: a voxel or two fewer per axis
            assert all(0 < g <= e for g, e in zip(f.shape[2:], expected, strict=True)), (f.shape, expected)
        else:
            assert tuple(f.shape[2:]) == expected
        assert bool(torch.isfinite(f).all())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_depth_constant_volume_gives_the_2d_features(name: str) -> None:
    """Random timm-shaped 2D weights inflated; every depth slice of every feature equals the 2D feature."""
    depth, size = FAMILIES[name]
    torch.manual_seed(0)
    encoder_2d = _randomize_zeros(_tu(name, spatial_dims=2, depth=depth)).eval()
    encoder_3d = _tu(name, spatial_dims=3, depth=depth, strides=depth_stride_one(depth))
    image = torch.randn(1, 3, size, size)
    report = inflation_report(encoder_2d, encoder_3d, image=image, depth=2, mode="i3d", dtype=torch.float64)
    assert report.max_rel < 1e-5, report


@pytest.mark.parametrize("name", list(TIMM_2D))
def test_2d_conversion_gives_timms_outputs(name: str) -> None:
    """In 2D the N-D classes are timm's model (float64: random weights make some features large)."""
    depth, size = TIMM_2D[name]
    torch.manual_seed(0)
    encoder = _randomize_zeros(_tu(name, spatial_dims=2, depth=depth)).eval().double()
    indices = encoder.model.feature_info.out_indices
    reference = timm.create_model(name, features_only=True, out_indices=indices).eval().double()
    reference.load_state_dict({k[len("model.") :]: v for k, v in encoder.state_dict().items()})
    image = torch.randn(1, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        expected = reference(image)
        got = encoder(image)[-len(expected) :]
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-9 * float(e.abs().max()))
