"""Plugins that break their contract: every fault names the encoder and where it came from."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

import smp3d
from smp3d.encoders import Encoder, EncoderPluginError, EncoderSpec, resolve_strides
from smp3d.layers import conv

FAULTY_RESOLVER = """
def resolve(rest):
    if rest == "zero":
        return 1 / 0
    if rest == "none":
        return None
    raise RuntimeError("backend exploded")
"""


@pytest.mark.parametrize(
    ("rest", "error"),
    [("zero", "ZeroDivisionError"), ("boom", "RuntimeError: backend exploded"), ("none", "TypeError")],
)
def test_resolver_faults_name_prefix_and_distribution(fresh_registry, make_distribution, rest, error):
    make_distribution(
        "faulty-plugin",
        {"faulty_resolver": FAULTY_RESOLVER},
        {"smp3d.encoder_resolvers": {"fz": "faulty_resolver:resolve"}},
    )
    with pytest.raises(EncoderPluginError, match=rf"(?s)'fz-{rest}'.*prefix 'fz'.*'faulty-plugin'.*{error}"):
        smp3d.get_encoder_spec(f"fz-{rest}")


class _Toy(Encoder):
    """A small encoder whose forward can be made to break the declared metadata."""

    def __init__(self, in_channels=3, depth=3, spatial_dims=3, strides=None, fault=None):
        strides = resolve_strides(strides, depth, spatial_dims)
        super().__init__((in_channels, *(4 * 2**i for i in range(depth))), strides, spatial_dims)
        chans = self.out_channels
        wrong = list(chans)
        if fault == "channels":
            wrong[2] += 1
        self.stages = nn.ModuleList(
            conv(spatial_dims)(wrong[i], wrong[i + 1], 3, stride=strides[i], padding=1) for i in range(depth)
        )
        self.fault = fault

    def forward(self, x):
        features = [x]
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if self.fault == "stride" and i == 1:
                x = x[..., ::2]
            features.append(x)
        return features[:-1] if self.fault == "fewer" else features


@pytest.fixture
def toy(fresh_registry):
    def register(name, **kwargs):
        smp3d.register_encoder(name, lambda **kw: _Toy(**kw, **kwargs))
        return name

    return register


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("channels", r"feature 2 has shape \(1, 9, .*out_channels\[2\] = 8"),
        ("fewer", r"returned 3 features .* declares 4"),
        ("stride", r"feature 2 has shape .*reductions\[2\] = \(4, 4, 4\)"),
    ],
)
def test_forward_that_breaks_its_metadata_fails_at_build(toy, fault, message):
    name = toy(f"toy_{fault}", fault=fault)
    with pytest.raises(EncoderPluginError, match=rf"(?s)Encoder 'toy_{fault}' \(registered in-process.*{message}"):
        smp3d.get_encoder(name, depth=3)


def test_honest_plugin_encoder_builds_and_runs(toy):
    encoder = smp3d.get_encoder(toy("toy_ok"), depth=3, spatial_dims=2)
    assert [f.shape[1] for f in encoder(torch.randn(1, 3, 16, 16))] == [3, 4, 8, 16]


class _HostOnly(_Toy):
    """Its forward reads a tensor that is not a parameter or buffer, so it cannot run on the meta device."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.scale = torch.ones(1)

    def forward(self, x):
        return super().forward(x * self.scale)


def test_encoder_that_cannot_run_on_meta_is_not_probed(fresh_registry):
    smp3d.register_encoder("toy_host", lambda **kw: _HostOnly(**kw))
    encoder = smp3d.get_encoder("toy_host", depth=3, spatial_dims=2)
    assert len(encoder(torch.randn(1, 3, 16, 16))) == 4


def test_spec_channels_must_match_the_built_encoder(fresh_registry):
    spec = EncoderSpec(build=lambda **kw: _Toy(**kw), out_channels=(3, 4, 8, 32, 64, 128))
    smp3d.register_encoder("toy_spec", spec)
    with pytest.raises(EncoderPluginError, match=r"'toy_spec'.*declares out_channels \(4, 8, 32\).*has \(4, 8, 16\)"):
        smp3d.get_encoder("toy_spec", depth=3)
    smp3d.register_encoder("toy_spec", dataclasses.replace(spec, out_channels=(3, 4, 8, 16, 32, 64)), replace=True)
    assert smp3d.get_encoder("toy_spec", depth=3).out_channels == (3, 4, 8, 16)
