"""timm's attention families as ``tu-`` encoders: N-D window/grid attention, padding, and the inflation proof."""

from __future__ import annotations

import pytest
import torch

import smp3d
from smp3d_encoders.timm_attention import (
    grid_partition,
    grid_reverse,
    relative_position_bias,
    window_partition,
    window_reverse,
)
from weights_tools.verify import depth_stride_one, inflation_report

timm = pytest.importorskip("timm")

# The smallest model of each family the proof covers, and the encoder depth used: the shallowest that runs
# every kind of attention block of the family (deeper stages are left out to keep the test fast).
PROOF = {
    "swin_tiny_patch4_window7_224": 3,  # W-MSA and shifted SW-MSA padded 8 -> 14, patch merging
    "maxvit_pico_rw_256": 2,  # block + grid partitions (padded, masked), relative bias
    "coatnet_pico_rw_224": 4,  # global attention with a relative bias for the actual feature size
    "pvt_v2_b0": 3,  # spatial-reduction attention
    "caformer_s18": 4,  # MetaFormer: separable-convolution stages, then attention stages
}


def _tu(name: str, **kwargs) -> torch.nn.Module:
    return smp3d.get_encoder(f"tu-{name}", **kwargs)


@pytest.mark.parametrize("name", list(PROOF))
def test_depth_constant_volume_gives_the_2d_features(name: str) -> None:
    """The proof: timm-shaped 2D weights inflated; every depth slice of every feature equals the 2D feature."""
    depth = PROOF[name]
    torch.manual_seed(0)
    encoder_2d = _tu(name, spatial_dims=2, depth=depth).eval()
    encoder_3d = _tu(name, spatial_dims=3, depth=depth, strides=depth_stride_one(depth))
    image = torch.randn(1, 3, 32, 32)
    report = inflation_report(encoder_2d, encoder_3d, image=image, depth=3, mode="i3d", dtype=torch.float64)
    assert report.max_rel < 1e-5, report


@pytest.mark.parametrize("window", [(2, 3), (2, 3, 2), (1, 2, 3, 2)])
def test_partitions_invert(window) -> None:
    sizes = tuple(w * k for w, k in zip(window, (3, 2, 1, 2), strict=False))
    x = torch.randn(2, *sizes, 5)
    for part, reverse in ((window_partition, window_reverse), (grid_partition, grid_reverse)):
        windows = part(x, window)
        assert windows.shape[1:] == (*window, 5)
        assert torch.equal(reverse(windows, window, sizes), x)
    # a window holds neighbours; a grid holds tokens ``size // grid`` apart
    first = window_partition(x, window)[0]
    assert torch.equal(first, x[(0, *(slice(0, w) for w in window))])
    first_grid = grid_partition(x, window)[0]
    assert torch.equal(first_grid, x[(0, *(slice(0, s, s // w) for s, w in zip(sizes, window, strict=True)))])


def test_relative_bias_copies_the_2d_table_along_new_axes() -> None:
    table = torch.randn(2, 5, 5)  # heads, 2 * 3 - 1, 2 * 3 - 1
    flat = relative_position_bias(table, (3, 3))
    nd = relative_position_bias(table, (3, 3, 2))
    assert nd.shape == (2, 18, 18)
    # tokens (h, w, d): the bias depends on the (h, w) offset only
    nd = nd.view(2, 3, 3, 2, 3, 3, 2)
    for d in range(2):
        for e in range(2):
            assert torch.equal(nd[:, :, :, d, :, :, e].reshape(2, 9, 9), flat)
    # a window smaller than the table takes the centre; a larger one interpolates with the centre kept
    assert torch.equal(relative_position_bias(table, (2, 2))[:, 0, 0], table[:, 2, 2])
    assert torch.allclose(relative_position_bias(table, (5, 5))[:, 0, 0], table[:, 2, 2])


# Families whose N-D forward is ours; in 2D it must be timm's model wherever timm accepts the input (Swin:
# img_size = the input, as timm's windows follow img_size).
TIMM_2D = {  # name: (depth reaching its first attention stage, timm kwargs)
    "swin_tiny_patch4_window7_224": (2, {"img_size": 32}),
    "pvt_v2_b0": (2, {}),
    "mobilevit_xxs": (3, {}),
    "mobilevitv2_050": (3, {}),
    "tiny_vit_5m_224": (3, {}),
    "davit_tiny": (3, {}),
    "efficientvit_b0": (4, {}),
}


@pytest.mark.parametrize("name", list(TIMM_2D))
def test_2d_conversion_gives_timms_outputs(name: str) -> None:
    depth, kwargs = TIMM_2D[name]
    encoder = _tu(name, spatial_dims=2, depth=depth, **kwargs).eval()
    indices = encoder.model.feature_info.out_indices
    reference = timm.create_model(name, features_only=True, out_indices=indices, **kwargs).eval()
    reference.load_state_dict({k[len("model.") :]: v for k, v in encoder.state_dict().items()})
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(image)
        if getattr(reference, "output_fmt", "NCHW") == "NHWC":
            expected = [f.permute(0, 3, 1, 2) for f in expected]
        got = encoder(image)[1 + encoder.placeholder :]
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["maxvit_pico_rw_256", "swin_tiny_patch4_window7_224"])
def test_window_attention_pads_sizes_that_do_not_divide(name: str) -> None:
    """No size is imposed: MaxViT (block + grid) and Swin (shifted) take feature sizes no window divides
    (10 x 14 x 2 at reduction 4 for windows of 7); output sizes follow the input, gradients are finite."""
    encoder = _tu(name, depth=2, in_channels=1)
    x = torch.randn(1, 1, 40, 56, 8)
    features = encoder(x)
    for f, red, c in zip(features[1:], encoder.reductions[1:], encoder.out_channels[1:], strict=True):
        assert tuple(f.shape[1:]) == (c, *(s // r for s, r in zip(x.shape[2:], red, strict=True)))
    sum(f.square().mean() for f in features[1:] if f.numel()).backward()
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["maxvit_pico_rw_256", "swin_tiny_patch4_window7_224"])
def test_torch_compile_has_no_graph_breaks_in_3d(name: str) -> None:
    encoder = _tu(name, depth=2, in_channels=1).eval()
    x = torch.randn(1, 1, 32, 32, 8)
    explained = torch._dynamo.explain(encoder)(x)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


def test_maxvit_base_tf_224_builds_on_meta_and_pads() -> None:
    """The seed-era name builds without a size imposed by a probe (its own check runs 256^3 on meta) and takes
    96^3 (padded: 24 and 12 tokens for windows of 7) on meta."""
    with torch.device("meta"):
        encoder = _tu("maxvit_base_tf_224.in21k", in_channels=1)
    for size in (96,):
        features = encoder(torch.empty(1, 1, size, size, size, device="meta"))
        assert [tuple(f.shape[2:]) for f in features] == [(size // 2**i,) * 3 for i in range(6)]
