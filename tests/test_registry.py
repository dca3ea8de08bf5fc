"""The encoder registry: real entry points, plugin isolation, conflicts, resolvers, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import smp3d
from smp3d.encoders import (
    EncoderNameConflictError,
    EncoderPluginWarning,
    EncoderSpec,
    UnknownEncoderError,
)

RESNETS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "resnext101_32x8d",
    "resnext101_32x16d",
    "resnext101_32x32d",
    "resnext101_32x48d",
]

# A tiny but real encoder family, written as a plugin author would.
TOY_PLUGIN = """
import torch.nn as nn
from smp3d.encoders import Encoder, EncoderSpec, resolve_strides
from smp3d.layers import conv

class ToyEncoder(Encoder):
    def __init__(self, in_channels=3, depth=5, spatial_dims=3, strides=None, width=4):
        strides = resolve_strides(strides, depth, spatial_dims)
        super().__init__((in_channels, *(width * 2**i for i in range(depth))), strides, spatial_dims)
        chans = self.out_channels
        self.stages = nn.ModuleList(
            conv(spatial_dims)(chans[i], chans[i + 1], 3, stride=strides[i], padding=1) for i in range(depth)
        )

    def forward(self, x):
        features = [x]
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

def toy_builder(**kwargs):
    return ToyEncoder(**kwargs)

ENCODERS = {"toy_a": toy_builder, "toy_b": EncoderSpec(build=toy_builder, out_channels=(3, 4, 8, 16, 32, 64))}

def make_more():
    return {"toy_c": toy_builder}

def resolve(rest):
    if not rest.isdigit():
        raise ValueError(f"toyw-<width>: the width must be a positive int, got {rest!r}")
    width = int(rest)
    return lambda **kwargs: ToyEncoder(width=width, **kwargs)
"""


def test_first_party_encoders_come_through_entry_points(fresh_registry):
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="smp3d.encoders") if ep.name == "resnet"]
    assert ep.dist.name == "smp3d"
    assert ep.value == "smp3d_encoders.resnet:ENCODERS"
    assert set(RESNETS) <= set(smp3d.list_encoders())


def test_import_smp3d_imports_no_encoder_family():
    code = (
        "import sys, smp3d; "
        "assert not [m for m in sys.modules if m.startswith('smp3d_encoders')], 'eager family import'; "
        "smp3d.list_encoders(); "
        "assert 'smp3d_encoders.resnet' in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_list_encoders_pattern():
    assert smp3d.list_encoders("resnext101_*") == sorted(n for n in RESNETS if n.startswith("resnext101_"))
    assert smp3d.list_encoders("RESNET1*") == ["resnet101", "resnet152", "resnet18"]
    assert smp3d.list_encoders("no_such_*") == []


def test_plugin_package_through_entry_points(fresh_registry, make_distribution):
    make_distribution(
        "toy-plugin",
        {"toy_plugin": TOY_PLUGIN},
        {
            "smp3d.encoders": {"toy": "toy_plugin:ENCODERS", "toymore": "toy_plugin:make_more"},
            "smp3d.encoder_resolvers": {"toyw": "toy_plugin:resolve"},
        },
    )
    assert {"toy_a", "toy_b", "toy_c"} <= set(smp3d.list_encoders("toy*"))
    spec = smp3d.get_encoder_spec("toy_b")
    assert spec.family == "toy" and spec.out_channels == (3, 4, 8, 16, 32, 64)
    assert smp3d.get_encoder_spec("toy_c").family == "toymore"  # zero-argument callable form
    model = smp3d.Unet(encoder_name="toy_a", in_channels=2, classes=3, decoder_channels=(16, 16, 8, 8, 4))
    assert model(torch.randn(1, 2, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
    # The resolver serves open-ended names; the resolved spec is cached and gets the prefix as family.
    encoder = smp3d.get_encoder("toyw-6", depth=3, spatial_dims=2)
    assert encoder.out_channels == (3, 6, 12, 24)
    assert smp3d.get_encoder_spec("toyw-6") is smp3d.get_encoder_spec("toyw-6")
    assert smp3d.get_encoder_spec("toyw-6").family == "toyw"
    assert "toyw" in smp3d.list_encoder_resolvers()
    with pytest.raises(UnknownEncoderError, match="(?s)'toyw-wide'.*'toy-plugin'.*width must be a positive int"):
        smp3d.get_encoder("toyw-wide")


def test_broken_plugin_warns_with_distribution_and_others_keep_working(fresh_registry, make_distribution):
    make_distribution(
        "broken-plugin",
        {"broken_plugin": "raise ImportError('needs libfoo')"},
        {"smp3d.encoders": {"broken": "broken_plugin:ENCODERS"}},
    )
    make_distribution(
        "notamapping-plugin",
        {"notamapping_plugin": "ENCODERS = 42"},
        {"smp3d.encoders": {"notamapping": "notamapping_plugin:ENCODERS"}},
    )
    with pytest.warns(EncoderPluginWarning) as record:
        names = smp3d.list_encoders()
    messages = " | ".join(str(w.message) for w in record)
    assert "'broken-plugin'" in messages and "needs libfoo" in messages
    assert "'notamapping-plugin'" in messages and "mapping" in messages
    assert "resnet18" in names
    assert smp3d.get_encoder("resnet18", depth=2, spatial_dims=2).out_channels == (3, 64, 64)


def test_name_claimed_twice_raises_at_lookup_naming_both(fresh_registry, make_distribution):
    make_distribution("toy-plugin", {"toy_plugin": TOY_PLUGIN}, {"smp3d.encoders": {"toy": "toy_plugin:ENCODERS"}})
    make_distribution(
        "rival-plugin",
        {"rival_plugin": "from toy_plugin import toy_builder\nENCODERS = {'toy_a': toy_builder}"},
        {"smp3d.encoders": {"rival": "rival_plugin:ENCODERS"}},
    )
    assert "toy_a" in smp3d.list_encoders()  # listing still works
    with pytest.raises(EncoderNameConflictError) as info:
        smp3d.get_encoder("toy_a")
    assert "'toy-plugin'" in str(info.value) and "'rival-plugin'" in str(info.value)
    smp3d.get_encoder("toy_b", depth=1)  # other names of the same providers are unaffected
    # An explicit in-process choice settles the conflict.
    smp3d.register_encoder("toy_a", smp3d.get_encoder_spec("toy_b"), replace=True)
    assert smp3d.get_encoder("toy_a", depth=1).out_channels == (3, 4)


def test_prefix_claimed_twice_raises(fresh_registry, make_distribution):
    make_distribution(
        "toy-plugin", {"toy_plugin": TOY_PLUGIN}, {"smp3d.encoder_resolvers": {"toyw": "toy_plugin:resolve"}}
    )
    make_distribution(
        "rival-plugin",
        {"rival_plugin": "from toy_plugin import resolve"},
        {"smp3d.encoder_resolvers": {"toyw": "rival_plugin:resolve"}},
    )
    with pytest.raises(EncoderNameConflictError, match="'toy-plugin'.*'rival-plugin'|'rival-plugin'.*'toy-plugin'"):
        smp3d.get_encoder("toyw-4")


def test_failing_resolver_import_names_distribution(fresh_registry, make_distribution):
    make_distribution(
        "bad-resolver",
        {"bad_resolver": "import not_a_module_xyz"},
        {"smp3d.encoder_resolvers": {"badr": "bad_resolver:resolve"}},
    )
    with pytest.raises(RuntimeError, match="'bad-resolver'.*not_a_module_xyz"):
        smp3d.get_encoder("badr-1")
    assert "resnet18" in smp3d.list_encoders()


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownEncoderError) as info:
        smp3d.get_encoder("resnet35")
    message = str(info.value)
    assert "Unknown encoder 'resnet35'" in message
    assert "resnet34" in message and "smp3d.list_encoders()" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(UnknownEncoderError, match="Close matches: none"):
        smp3d.get_encoder("zzzzzz")
    with pytest.raises(UnknownEncoderError, match="resnext50_32x4d"):
        smp3d.Unet(encoder_name="resnext50")


def test_register_encoder_in_process(fresh_registry):
    spec = smp3d.get_encoder_spec("resnet18")
    smp3d.register_encoder("my_resnet", spec)
    assert "my_resnet" in smp3d.list_encoders()
    assert smp3d.get_encoder("my_resnet", depth=1, spatial_dims=2).out_channels == (3, 64)
    with pytest.raises(ValueError, match="already provided by registered in-process"):
        smp3d.register_encoder("my_resnet", spec)
    with pytest.raises(ValueError, match="already provided by distribution 'smp3d'"):
        smp3d.register_encoder("resnet18", spec)
    smp3d.unregister_encoder("my_resnet")
    assert "my_resnet" not in smp3d.list_encoders()
    with pytest.raises(KeyError):
        smp3d.unregister_encoder("my_resnet")
    for bad in ("has space", "ResNet18", ""):
        with pytest.raises(ValueError, match="Invalid encoder name"):
            smp3d.register_encoder(bad, spec)
    with pytest.raises(TypeError, match="EncoderSpec or a builder"):
        smp3d.register_encoder("not_callable", 42)


def test_registry_fixture_restores_state():
    assert "my_resnet" not in smp3d.list_encoders()


def test_register_resolver_in_process(fresh_registry):
    base = smp3d.get_encoder_spec("resnet18")
    smp3d.register_encoder_resolver("mine", lambda rest: base)
    assert smp3d.get_encoder("mine-anything", depth=1).out_channels == (3, 64)
    with pytest.raises(ValueError, match="already claimed"):
        smp3d.register_encoder_resolver("mine", lambda rest: base)
    smp3d.unregister_encoder_resolver("mine")
    with pytest.raises(UnknownEncoderError):
        smp3d.get_encoder("mine-anything")


def test_specs_are_immutable():
    spec = smp3d.get_encoder_spec("resnet34")
    with pytest.raises(AttributeError):
        spec.out_channels = (1,)  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.weights["new"] = None  # type: ignore[index]
    assert spec.weights["imagenet"].repo_id == "smp-hub/resnet34.imagenet"


def test_builder_rejects_unknown_keyword_clearly():
    with pytest.raises(TypeError, match="does not accept these arguments.*not_an_option"):
        smp3d.get_encoder("resnet18", not_an_option=3)


def test_plugin_encoder_with_broken_metadata_is_caught(fresh_registry):
    class Liar(torch.nn.Module):
        out_channels = (3, 8)
        reductions = ((1, 1, 1), (2, 2, 2))
        spatial_dims = 3

        def forward(self, x):
            return [x]

    smp3d.register_encoder("liar", EncoderSpec(build=lambda **kwargs: Liar()))
    with pytest.raises(TypeError, match="depth 5 and must describe 6 features"):
        smp3d.get_encoder("liar")
