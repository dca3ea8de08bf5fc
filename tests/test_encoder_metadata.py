"""Generated from the registry: every registered encoder (first party or plugin) is checked here
the day it lands. Built on the ``meta`` device, so size costs nothing."""

from __future__ import annotations

import pytest
import torch

import smp3d
from smp3d.encoders import cumulative_reductions

# The tu- bridge's migration aliases (family "timm") are checked in test_timm_universal.py.
ENCODERS = [n for n in smp3d.list_encoders() if smp3d.get_encoder_spec(n).family != "timm"]


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_spec_metadata_matches_the_built_encoder(name, spatial_dims):
    spec = smp3d.get_encoder_spec(name)
    with torch.device("meta"):
        encoder = smp3d.get_encoder(name, spatial_dims=spatial_dims, depth=spec.max_depth)
    default = cumulative_reductions([(s,) * spatial_dims for s in spec.strides[: spec.max_depth]], spatial_dims)
    assert tuple(encoder.reductions) == default
    if spec.out_channels is not None:
        assert tuple(encoder.out_channels) == spec.out_channels[: spec.max_depth + 1]
    size = tuple(r * 2 for r in encoder.reductions[-1])
    features = encoder.eval()(torch.empty(1, spec.default_in_channels, *size, device="meta"))
    assert [f.shape[1] for f in features] == list(encoder.out_channels)
    assert [tuple(f.shape[2:]) for f in features] == [
        tuple(s // r for s, r in zip(size, red, strict=True)) for red in encoder.reductions
    ]
