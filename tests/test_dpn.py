"""DPN encoders: what the registry-generated family tests do not cover.

The b variant and the 7x7-stem variants against smp, smp's features at every depth (ReLU of the
concatenated paths, not the final norm), stride placement in the dual path blocks, key names
independent of strides, odd sizes, and refused strides.
"""

from __future__ import annotations

import math

import pytest
import segmentation_models_pytorch as smp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from segmentation_models_pytorch.encoders.dpn import dpn_encoders

import smp3d

DPNS = ["dpn68", "dpn68b", "dpn92", "dpn98", "dpn107", "dpn131"]


def build(name: str, device: str = "cpu", **kwargs) -> torch.nn.Module:
    with torch.device(device):
        return smp3d.get_encoder(name, **kwargs)


def _load_from_smp(ours: torch.nn.Module, reference: torch.nn.Module) -> None:
    """Load the blocks ours has (smp keeps every stage at any depth; ours builds only the used ones)."""
    state = reference.state_dict()
    ours.load_state_dict({key: state[key] for key in ours.state_dict()}, strict=True)


@pytest.mark.parametrize(
    ("name", "size"),
    [("dpn68b", (64, 64)), ("dpn92", (35, 19))],
    ids=["b-variant", "large-stem-odd-size"],
)
def test_2d_features_equal_smp(name, size):
    reference = smp.encoders.get_encoder(name, weights=None).eval()
    ours = smp3d.get_encoder(name, spatial_dims=2).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    for a, b in zip(expected[1:], got[1:], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_shallow_features_equal_smp():
    """Below depth 5 the deepest feature is ReLU(concat(paths)), as smp returns it (not conv5_bn_ac)."""
    reference = smp.encoders.get_encoder("dpn68", weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)  # smp's features up to depth d do not depend on its depth
        for depth in range(1, 5):
            ours = smp3d.get_encoder("dpn68", depth=depth, spatial_dims=2).eval()
            _load_from_smp(ours, reference)
            got = ours(x)
            assert len(got) == depth + 1
            for a, b in zip(expected[1 : depth + 1], got[1:], strict=True):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["dpn68", "dpn68b"])
def test_2d_training_gradients_equal_smp(name):
    """The in-place residual sum (into a view of the last 1x1 output, or its own conv) keeps autograd exact."""
    reference = smp.encoders.get_encoder(name, depth=3, weights=None)
    ours = smp3d.get_encoder(name, depth=3, spatial_dims=2)
    _load_from_smp(ours, reference)
    x = torch.randn(2, 3, 16, 16)
    for encoder in (reference, ours):
        sum(f.square().mean() for f in encoder(x)[1:]).backward()
    expected = dict(reference.named_parameters())
    for key, parameter in ours.named_parameters():
        torch.testing.assert_close(parameter.grad, expected[key].grad, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5], ids=lambda d: f"depth{d}")
def test_only_used_stages_are_built_and_all_train(depth):
    encoder = smp3d.get_encoder("dpn68", in_channels=1, depth=depth, spatial_dims=2)
    stages = sorted({name.split("_")[0] for name in encoder.features})
    assert stages == [f"conv{i}" for i in range(1, depth + 1)]
    assert hasattr(encoder.features.conv1_1, "pool") == (depth >= 2)
    features = encoder(torch.randn(2, 1, 8, 8))  # 1x1 at stage 5: still 2 values per norm channel
    sum(f.mean() for f in features[1:]).backward()
    assert all(p.grad is not None for p in encoder.parameters())


@pytest.mark.parametrize(("name", "groups"), [("dpn68", 32), ("dpn98", 40), ("dpn107", 50)])
def test_grouped_3x3_stays_grouped_in_3d(name, groups):
    encoder = build(name, "meta")
    for block_name in ("conv2_1", "conv5_3"):
        conv = encoder.features[block_name].c3x3_b.conv
        assert conv.groups == groups
        assert conv.weight.shape == (conv.out_channels, conv.in_channels // groups, 3, 3, 3)


def test_strides_go_through_the_grouped_conv_projection_and_stem_pool():
    strides = ((2, 2, 1), (2, 1, 1), (1, 2, 2), (2, 2, 1), (1, 1, 2))
    encoder = build("dpn68", "meta", strides=strides)
    stem = encoder.features.conv1_1
    assert stem.conv.stride == (2, 2, 1)
    assert (stem.pool.kernel_size, stem.pool.stride) == ((3, 1, 1), (2, 1, 1))
    assert encoder.features.conv2_1.c3x3_b.conv.stride == (1, 1, 1)  # stage 2 is strided by the pool
    for stage, stride in zip((3, 4, 5), strides[2:], strict=True):
        block = encoder.features[f"conv{stage}_1"]
        assert block.c3x3_b.conv.stride == block.c1x1_w_s2.conv.stride == stride
        assert encoder.features[f"conv{stage}_2"].c3x3_b.conv.stride == (1, 1, 1)


@pytest.mark.parametrize("name", ["dpn68", "dpn68b"])
def test_keys_do_not_depend_on_strides(name):
    """A checkpoint loads whatever strides the encoder is built with (`c1x1_w_s2` even at stride 1)."""
    default = build(name, "meta").state_dict()
    unstrided = build(name, "meta", strides=(1, 1, 1, 1, 1)).state_dict()
    assert {k: v.shape for k, v in unstrided.items()} == {k: v.shape for k, v in default.items()}


@settings(max_examples=15, deadline=None)
@given(spatial_dims=st.sampled_from([2, 3]), depth=st.integers(1, 5), data=st.data())
def test_feature_sizes_are_ceil_of_size_over_reduction(spatial_dims, depth, data):
    strides = tuple(tuple(data.draw(st.integers(1, 2)) for _ in range(spatial_dims)) for _ in range(depth))
    size = tuple(data.draw(st.integers(1, 40)) for _ in range(spatial_dims))
    encoder = build("dpn68", "meta", depth=depth, spatial_dims=spatial_dims, strides=strides).eval()
    features = encoder(torch.empty(1, 3, *size, device="meta"))
    for feature, channels, reduction in zip(features, encoder.out_channels, encoder.reductions, strict=True):
        assert feature.shape[1] == channels
        assert tuple(feature.shape[2:]) == tuple(math.ceil(s / r) for s, r in zip(size, reduction, strict=True))


def test_real_compute_with_anisotropic_strides_and_odd_sizes():
    strides = ((2, 2, 1), (2, 2, 1), 2, (2, 1, 2), (1, 2, 2))
    encoder = smp3d.get_encoder("dpn68", in_channels=2, strides=strides).eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 2, 21, 14, 5))
    assert [tuple(f.shape[2:]) for f in features] == [
        (21, 14, 5),
        (11, 7, 5),
        (6, 4, 5),
        (3, 2, 3),
        (2, 2, 2),
        (2, 1, 1),
    ]
    assert all(torch.isfinite(f).all() for f in features)


@pytest.mark.parametrize("name", DPNS)
def test_stride_above_two_is_refused_naming_the_encoder(name):
    with pytest.raises(ValueError, match=rf"item 2 is \(3, 2, 2\), but encoder '{name}' supports strides of at most 2"):
        build(name, "meta", strides=(2, (3, 2, 2), 2, 2, 2))


@pytest.mark.parametrize("name", DPNS)
def test_weight_sources_match_smp(name):
    spec = smp3d.get_encoder_spec(name)
    expected = dpn_encoders[name]["pretrained_settings"]
    assert {tag: (s.repo_id, s.revision) for tag, s in spec.weights.items()} == {
        tag: (s["repo_id"], s["revision"]) for tag, s in expected.items()
    }
    assert spec.out_channels == tuple(dpn_encoders[name]["params"]["out_channels"])
