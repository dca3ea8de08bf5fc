"""The example plugin package (examples/smp3d-example-plugin), installed and found through real entry points.

Needs ``pip install -e examples/smp3d-example-plugin`` in the test environment.
"""

from __future__ import annotations

import importlib.metadata
import math

import pytest
import torch

import smp3d
from smp3d.encoders import ENCODER_GROUP, RESOLVER_GROUP, EncoderRegistry, validate_encoder

DISTRIBUTION = "smp3d-example-plugin"
FIXED = ["example_vgg_small", "example_vgg_tiny"]
INSTALL_HINT = f"{DISTRIBUTION} is not installed; run `pip install -e examples/smp3d-example-plugin`."

# Per-stage strides per spatial_dims; applied to the first `depth` stages.
STRIDES = {
    "default": {2: None, 3: None},
    "anisotropic": {
        2: ((2, 1), (1, 2), (2, 2), (2, 1), (1, 2)),
        3: ((2, 2, 1), (2, 2, 1), (1, 2, 2), (2, 1, 2), (2, 2, 2)),
    },
    "all_ones": {2: ((1, 1),) * 5, 3: ((1, 1, 1),) * 5},
}
# Sizes not divisible by the reductions, to check the documented ceil rounding too.
SIZES = {2: (20, 13), 3: (12, 10, 7)}


def _dist_of(group: str, name: str) -> str:
    (ep,) = importlib.metadata.entry_points(group=group, name=name)
    return ep.dist.name


def test_distribution_is_installed() -> None:
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(INSTALL_HINT)
    groups = {ep.group: (ep.name, ep.value) for ep in dist.entry_points}
    assert groups[ENCODER_GROUP] == ("example", "smp3d_example_plugin:ENCODERS")
    assert groups[RESOLVER_GROUP] == ("examplew", "smp3d_example_plugin:resolve")
    assert _dist_of(ENCODER_GROUP, "example") == DISTRIBUTION
    assert _dist_of(RESOLVER_GROUP, "examplew") == DISTRIBUTION


def test_fresh_registry_discovers_the_plugin() -> None:
    # A new registry reads the entry points from scratch: no in-process registration is involved.
    registry = EncoderRegistry()
    assert set(FIXED) <= set(registry.names())
    assert DISTRIBUTION in registry.resolver_prefixes()["examplew"]
    assert registry.spec("examplew-4").out_channels == (3, 4, 8, 16, 32, 64)


def test_listed_and_described() -> None:
    assert smp3d.list_encoders("example*") == FIXED
    assert "examplew" in smp3d.list_encoder_resolvers()
    spec = smp3d.get_encoder_spec("example_vgg_tiny")
    assert spec.family == "example"
    assert spec.license == "MIT"
    assert spec.description
    assert spec.out_channels == (3, 16, 32, 64, 128, 256)
    assert smp3d.get_encoder_spec("example_vgg_small").out_channels == (3, 32, 64, 128, 256, 512)


@pytest.mark.parametrize("name", [*FIXED, "examplew-2"])
def test_spec_metadata_matches_default_build(name: str) -> None:
    spec = smp3d.get_encoder_spec(name)
    encoder = smp3d.get_encoder(name, in_channels=spec.default_in_channels, spatial_dims=2)
    assert encoder.out_channels == spec.out_channels
    assert encoder.reductions[1:] == tuple((math.prod(spec.strides[:i]),) * 2 for i in range(1, 6))


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5], ids=lambda d: f"depth{d}")
@pytest.mark.parametrize("strides_id", list(STRIDES))
@pytest.mark.parametrize("spatial_dims", [2, 3], ids=["2d", "3d"])
def test_metadata_matches_features(spatial_dims: int, strides_id: str, depth: int) -> None:
    strides = STRIDES[strides_id][spatial_dims]
    strides = None if strides is None else strides[:depth]
    encoder = smp3d.get_encoder(
        "examplew-2", in_channels=2, depth=depth, spatial_dims=spatial_dims, strides=strides
    ).eval()
    validate_encoder(encoder, depth, 2, spatial_dims, "examplew-2")
    size = SIZES[spatial_dims]
    x = torch.randn(1, 2, *size)
    with torch.no_grad():
        features = encoder(x)
    assert len(features) == depth + 1
    assert features[0] is x
    for feature, channels, reduction in zip(features, encoder.out_channels, encoder.reductions, strict=True):
        expected = tuple(math.ceil(n / r) for n, r in zip(size, reduction, strict=True))
        assert tuple(feature.shape) == (1, channels, *expected)
    # Only the stages that `depth` uses are built.
    assert len(encoder.stages) == depth


def test_state_dict_keys_equal_in_2d_and_3d() -> None:
    sd2 = smp3d.get_encoder("examplew-2", spatial_dims=2).state_dict()
    sd3 = smp3d.get_encoder("examplew-2", spatial_dims=3).state_dict()
    assert list(sd2) == list(sd3)
    for key, value in sd2.items():
        if value.ndim == 4:  # conv kernel (O, I, kh, kw) -> (O, I, kh, kw, kd)
            assert sd3[key].shape == (*value.shape, 3)
        else:
            assert sd3[key].shape == value.shape


@pytest.mark.parametrize(
    ("name", "spatial_dims", "shape", "strides"),
    [
        ("example_vgg_tiny", 2, (2, 1, 32, 32), None),
        ("example_vgg_tiny", 3, (2, 1, 32, 32, 32), None),
        ("examplew-4", 3, (2, 1, 32, 32, 16), ((2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))),
    ],
    ids=["tiny-2d", "tiny-3d", "w4-3d-anisotropic"],
)
def test_unet_forward_backward(name: str, spatial_dims: int, shape: tuple[int, ...], strides: tuple | None) -> None:
    model = smp3d.Unet(
        encoder_name=name,
        in_channels=1,
        classes=2,
        spatial_dims=spatial_dims,
        strides=strides,
        decoder_channels=(32, 16, 16, 8, 8),
    )
    x = torch.randn(shape)
    out = model(x)
    assert out.shape == (shape[0], 2, *shape[2:])
    out.square().mean().backward()
    first_conv = model.encoder.stages[0][0]
    assert first_conv.weight.grad is not None
    assert torch.isfinite(first_conv.weight.grad).all()
    assert first_conv.weight.grad.abs().sum() > 0


def test_create_model_with_plugin_encoder() -> None:
    model = smp3d.create_model("unet", encoder_name="example_vgg_tiny", encoder_depth=3, decoder_channels=(16, 8, 8))
    assert model.encoder.out_channels == (3, 16, 32, 64)
    assert model.eval()(torch.randn(1, 3, 16, 16, 8)).shape == (1, 1, 16, 16, 8)


def test_resolver_widths() -> None:
    spec = smp3d.get_encoder_spec("examplew-8")
    assert spec.out_channels == (3, 8, 16, 32, 64, 128)
    assert spec.family == "example"
    encoder = smp3d.get_encoder("examplew-8", in_channels=1, depth=2, spatial_dims=2)
    assert encoder.out_channels == (1, 8, 16)


@pytest.mark.parametrize(
    "rest", ["abc", "0", "-8", "08", "8.5", ""], ids=["abc", "zero", "negative", "leading0", "float", "empty"]
)
def test_resolver_rejects_bad_widths(rest: str) -> None:
    with pytest.raises(ValueError, match=r"examplew-<base width>.*positive integer"):
        smp3d.get_encoder_spec(f"examplew-{rest}")


@pytest.mark.parametrize(
    ("strides", "message"),
    [
        ((3, 2, 2, 2, 2), "at most 2"),
        (((2, 2, 4), 2, 2, 2, 2), "at most 2"),
        ((2, 2, 2), "encoder_depth is 5"),
        (((2, 2), 2, 2, 2, 2), "tuple of 3"),
    ],
    ids=["stride3", "per-axis-stride4", "too-few-stages", "wrong-axes"],
)
def test_bad_strides_are_refused(strides: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        smp3d.get_encoder("example_vgg_tiny", strides=strides)


def test_bad_depth_and_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"1\.\.5"):
        smp3d.get_encoder("example_vgg_tiny", depth=6)
    with pytest.raises(TypeError, match="unexpected keyword argument 'width'"):
        smp3d.get_encoder("example_vgg_tiny", width=3)
