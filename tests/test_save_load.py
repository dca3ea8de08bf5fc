"""Whole-model save_pretrained / from_pretrained / push_to_hub: bit-exact, offline, safetensors only."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, constants
from safetensors.torch import load_file, save_file

import smp3d
from smp3d.layers import set_fused_upsample
from smp3d.models import _CLASSES

SMALL = {"Unet": {"decoder_channels": (32, 16, 8, 8, 8)}, "UnetPlusPlus": {"decoder_channels": (32, 16, 8, 8, 8)}}


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to reach the Hub from a local folder fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected Hub access: {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor) * 0.1 + (1.0 if tensor.ndim == 1 else 0.0))
    return model.eval()


def _assert_round_trip(model, folder: Path, x: torch.Tensor, loader=smp3d.from_pretrained):
    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = loader(str(folder))
    assert type(loaded) is type(model) and not loaded.training
    expected, got = model.state_dict(), loaded.state_dict()
    assert list(expected) == list(got)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    with torch.no_grad():
        out, back = model(x), loaded(x)
    for a, b in zip(
        out if isinstance(out, tuple) else (out,), back if isinstance(back, tuple) else (back,), strict=True
    ):
        assert torch.equal(a, b)
    return loaded


@pytest.mark.parametrize("cls", _CLASSES, ids=lambda c: c.__name__)
def test_every_architecture_round_trips_in_2d(cls, tmp_path):
    kwargs = dict(SMALL.get(cls.__name__, {}))
    model = _randomize(cls("resnet18", spatial_dims=2, classes=2, in_channels=1, **kwargs))
    loaded = _assert_round_trip(model, tmp_path / "m", torch.randn(1, 1, 64, 64), loader=cls.from_pretrained)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["_model_class"] == cls.__name__ and config["spatial_dims"] == 2 and config["in_channels"] == 1
    assert loaded.hub_config() == model.hub_config()


def test_3d_with_aux_head_and_per_axis_strides(tmp_path):
    model = smp3d.Unet(
        "resnet18",
        encoder_depth=3,
        decoder_channels=(16, 8, 8),
        strides=((2, 2, 1), (1, 2, 2), (2, 1, 2)),
        aux_params={"classes": 4, "dropout": 0.2},
        classes=3,
        in_channels=2,
        activation="sigmoid",
    )
    loaded = _assert_round_trip(_randomize(model), tmp_path / "u3d", torch.randn(1, 2, 16, 16, 8))
    assert loaded.encoder.reductions == model.encoder.reductions
    config = json.loads((tmp_path / "u3d" / "config.json").read_text())
    assert config["strides"] == [[2, 2, 1], [1, 2, 2], [2, 1, 2]] and config["spatial_dims"] == 3


@pytest.mark.parametrize("name", ["DeepLabV3Plus", "DeepLabV3"])
def test_3d_with_encoder_output_stride(name, tmp_path):
    cls = getattr(smp3d, name)
    model = cls("resnet18", encoder_output_stride=(8, 8, 16) if name == "DeepLabV3Plus" else 8, classes=2)
    loaded = _assert_round_trip(_randomize(model), tmp_path / name, torch.randn(1, 3, 32, 32, 32))
    assert loaded.output_stride == model.output_stride


def test_model_with_pretrained_encoder_reloads_without_its_weights_file(tmp_path):
    encoder = smp3d.get_encoder("resnet18", depth=3, spatial_dims=2)
    weights = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(weights))
    model = smp3d.Unet(
        "resnet18",
        encoder_depth=3,
        decoder_channels=(16, 8, 8),
        encoder_weights=str(weights),
        in_channels=1,
        spatial_dims=2,
    ).eval()
    model.save_pretrained(tmp_path / "m")
    weights.unlink()  # the checkpoint holds everything: the encoder's source is not needed again
    _assert_round_trip(model, tmp_path / "m", torch.randn(1, 1, 32, 32))


def test_package_level_and_class_level_loading(tmp_path):
    model = smp3d.FPN("resnet18", spatial_dims=2).eval()
    model.save_pretrained(tmp_path / "fpn")
    assert type(smp3d.SegmentationModel.from_pretrained(tmp_path / "fpn")) is smp3d.FPN
    with pytest.raises(ValueError, match="holds a FPN model, not a Unet"):
        smp3d.Unet.from_pretrained(tmp_path / "fpn")
    overridden = smp3d.FPN.from_pretrained(tmp_path / "fpn", activation="sigmoid")
    assert overridden.hub_config()["activation"] == "sigmoid"


def test_model_card_describes_the_model(tmp_path):
    model = smp3d.Unet("resnet18", encoder_depth=3, decoder_channels=(16, 8, 8), classes=5, aux_params={"classes": 2})
    model.save_pretrained(tmp_path / "card", model_card_kwargs={"metrics": {"dice": 0.9}, "dataset": "toy volumes"})
    card = (tmp_path / "card" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: smp3d" in card
    for text in ("3D **Unet**", "**resnet18**", "(B, 3, H, W, D)", "smp3d.from_pretrained", '"classes": 5', "0.9"):
        assert text in card, text
    assert "toy volumes" in card
    # An existing card (edited by the user) is kept; weights and config are replaced.
    (tmp_path / "card" / "README.md").write_text("my card")
    model.save_pretrained(tmp_path / "card")
    assert (tmp_path / "card" / "README.md").read_text() == "my card"


def test_unsavable_arguments_are_refused_clearly(tmp_path):
    model = smp3d.Unet("resnet18", encoder_depth=1, decoder_channels=(8,), spatial_dims=2, activation=torch.nn.Sigmoid)
    with pytest.raises(ValueError, match="activation=.*cannot be stored in config.json"):
        model.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x" / "config.json").exists()


def test_files_are_written_atomically(tmp_path, monkeypatch):
    model = smp3d.Linknet("resnet18", encoder_depth=3, spatial_dims=2)
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    before = (folder / "model.safetensors").read_bytes()
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        _randomize(model, seed=1).save_pretrained(folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_corrupt_or_missing_files_are_refused(tmp_path):
    model = smp3d.Unet("resnet18", encoder_depth=2, decoder_channels=(8, 8), spatial_dims=2)
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not valid safetensors"):
        smp3d.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        smp3d.from_pretrained(folder)
    with pytest.raises(ValueError, match="is a file"):
        smp3d.from_pretrained(folder / "config.json")
    other = tmp_path / "other"
    smp3d.Unet("resnet34", encoder_depth=2, decoder_channels=(8, 8), spatial_dims=2).save_pretrained(other)
    (other / "config.json").write_text((folder / "config.json").read_text())  # config of a resnet18 model
    with pytest.raises(ValueError, match="do not match the model; nothing was loaded"):
        smp3d.from_pretrained(other)


def test_smp_checkpoint_loads_as_2d(tmp_path):
    smp = pytest.importorskip("segmentation_models_pytorch")
    reference = _randomize(smp.Unet("resnet18", encoder_weights=None, classes=2))
    reference.save_pretrained(tmp_path / "smp")
    loaded = smp3d.from_pretrained(tmp_path / "smp")
    assert type(loaded) is smp3d.Unet and loaded.spatial_dims == 2
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        # The fused upsample -> conv sums in another order: equal to rounding, and bit-exact without it.
        # (This randomized model's outputs reach 5e9: compare to rounding of that scale.)
        torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())
        assert set_fused_upsample(loaded, False) == 5
        assert torch.equal(loaded(x), expected)


def test_load_by_repo_id_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.undo()  # this test uses the real hf_hub_download, offline, on a cache it writes
    cache = tmp_path / "cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = _randomize(smp3d.PAN("resnet18", spatial_dims=2))
    commit = "1" * 40
    snapshot = cache / "models--me--pan" / "snapshots" / commit
    model.save_pretrained(snapshot)
    (cache / "models--me--pan" / "refs").mkdir()
    (cache / "models--me--pan" / "refs" / "main").write_text(commit)
    _assert_round_trip(model, snapshot, torch.randn(1, 3, 64, 64), loader=lambda _: smp3d.from_pretrained("me/pan"))
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        smp3d.from_pretrained("me/absent")


def test_push_to_hub_uploads_weights_config_and_card(tmp_path, monkeypatch):
    recorded: dict = {}

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **kwargs):
        recorded["create"] = (repo_id, private, exist_ok)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, commit_message=None, **kwargs):
        folder = Path(folder_path)
        recorded["upload"] = (repo_id, repo_type, commit_message)
        recorded["files"] = sorted(p.name for p in folder.iterdir())
        recorded["config"] = json.loads((folder / "config.json").read_text())
        recorded["card"] = (folder / "README.md").read_text()
        recorded["state"] = load_file(str(folder / "model.safetensors"))
        return "https://huggingface.co/me/unet/commit/abc"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    model = _randomize(smp3d.Unet("resnet18", encoder_depth=3, decoder_channels=(16, 8, 8), classes=2))
    url = model.push_to_hub("me/unet", private=True, commit_message="first")
    assert url.endswith("/commit/abc")
    assert recorded["create"] == ("me/unet", True, True)
    assert recorded["upload"] == ("me/unet", "model", "first")
    assert recorded["files"] == ["README.md", "config.json", "model.safetensors"]
    assert recorded["config"]["_model_class"] == "Unet" and recorded["config"]["decoder_channels"] == [16, 8, 8]
    assert "3D **Unet**" in recorded["card"] and 'smp3d.from_pretrained("me/unet")' in recorded["card"]
    state = model.state_dict()
    assert set(recorded["state"]) == set(state)
    assert all(torch.equal(recorded["state"][k], state[k]) for k in state)
    # save_pretrained(push_to_hub=True) goes the same way.
    model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="me/unet2")
    assert recorded["create"][0] == "me/unet2"
