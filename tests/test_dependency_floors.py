"""Declared dependency ranges hold: the `floors` subset runs again in .ci/run with the lowest declared versions."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import smp3d
from smp3d.models import _CLASSES

pytestmark = [pytest.mark.floors, pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")]


def test_timm_model_whose_construction_has_no_meta_kernel_still_builds(monkeypatch):
    """timm 1.0.x releases between NumPy and explicit-CPU RegNet width maths call torch.unique on the
    default device: under a meta default device that raises NotImplementedError (aten::_unique2)."""
    import timm

    from smp3d_encoders import timm_universal

    create = timm.create_model

    def host_only(*args, **kwargs):
        if torch.empty(0).device.type == "meta":
            raise NotImplementedError("aten::_unique2: attempted to run this operator with Meta tensors")
        return create(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", host_only)
    timm_universal._feature_info.cache_clear()
    try:
        encoder = smp3d.get_encoder("tu-regnetx_002", depth=3, spatial_dims=3)
    finally:
        timm_universal._feature_info.cache_clear()
    features = encoder.eval()(torch.randn(1, 3, 16, 16, 16))
    assert [f.shape[1] for f in features] == list(encoder.out_channels)


@pytest.mark.parametrize("cls", _CLASSES, ids=lambda c: c.__name__)
def test_every_architecture_builds_and_runs(cls):
    model = cls("resnet18", encoder_depth=5, classes=2, spatial_dims=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def _smallest_per_family() -> list[str]:
    chosen: dict[str, str] = {}
    for name in smp3d.list_encoders():
        family = smp3d.get_encoder_spec(name).family or name
        chosen.setdefault(family, name)
    return sorted(chosen.values()) + ["tu-resnet18", "tu-regnetx_002"]


@pytest.mark.parametrize("name", _smallest_per_family())
def test_every_encoder_family_builds(name):
    with torch.device("meta"):
        encoder = smp3d.get_encoder(name, spatial_dims=3)
    assert len(encoder.out_channels) == 6


def test_weights_round_trip(tmp_path):
    encoder = smp3d.get_encoder("resnet18", depth=2, spatial_dims=2)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = smp3d.get_encoder("resnet18", depth=2, spatial_dims=2, weights=str(tmp_path / "w.safetensors"))
    for key, value in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    model = smp3d.Unet("resnet18", encoder_depth=3, decoder_channels=(8, 8, 8), classes=2)
    model.save_pretrained(tmp_path / "m")
    again = smp3d.from_pretrained(tmp_path / "m")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())


def test_run_config_yaml_round_trip(tmp_path):
    from smp3d.cli import build_parser, command_parser
    from smp3d.cli.config_file import config_tokens, effective_config, write_config

    parser = build_parser()
    args = parser.parse_args(["train", "--train-path", "a.h5", "--patch", "16", "--classes", "2", "--amp"])
    train = command_parser(parser, "train")
    path = write_config(tmp_path / "config.yaml", effective_config(args, train))
    again = parser.parse_args(["train", *config_tokens(path, train)])
    assert effective_config(again, train) == effective_config(args, train)
