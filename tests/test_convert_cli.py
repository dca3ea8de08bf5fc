"""`smp3d-convert-weights` end to end, offline: seeded random 2D checkpoints written by the tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import smp3d
from weights_tools import cli, convert
from weights_tools.convert import ConversionError, convert_encoder, read_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FILES = {"model.safetensors", "config.json", "README.md"}


def _random_2d(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    encoder = smp3d.get_encoder(name, spatial_dims=2)
    state = encoder.state_dict()
    # Non-trivial normalisation statistics, so that the check exercises them too.
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
    return {k: v.clone().contiguous() for k, v in state.items()}


@pytest.fixture(scope="module")
def resnet34_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("src") / "resnet34_2d.safetensors"
    save_file(_random_2d("resnet34"), str(path))
    return path


@pytest.fixture(scope="module")
def resnet34_out(tmp_path_factory: pytest.TempPathFactory, resnet34_source: Path) -> Path:
    out = tmp_path_factory.mktemp("conv") / "resnet34.imagenet"
    code = cli.main(["resnet34", "--source", str(resnet34_source), "--output", str(out), "--no-progress"])
    assert code == 0
    return out


def test_end_to_end_safetensors(resnet34_out: Path, resnet34_source: Path) -> None:
    assert {p.name for p in resnet34_out.iterdir()} == FILES  # no temporary file left behind
    state_3d = load_file(str(resnet34_out / "model.safetensors"))
    expected = smp3d.encoders.inflate.inflate_state_dict(
        read_checkpoint(resnet34_source), smp3d.get_encoder("resnet34", spatial_dims=3)
    )
    assert set(state_3d) == set(expected)
    assert all(torch.equal(state_3d[k], expected[k]) for k in expected)

    model = smp3d.Unet("resnet34", encoder_weights=str(resnet34_out), in_channels=1)
    encoder_state = model.encoder.state_dict()
    for key, value in state_3d.items():
        if key == "conv1.weight":  # adapted to one input channel by smp's rule: the sum over RGB
            assert torch.allclose(encoder_state[key], value.sum(1, keepdim=True))
        else:
            assert torch.equal(encoder_state[key], value), key
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 32, 32, 32)).shape == (1, 1, 32, 32, 32)


def test_config_and_card(resnet34_out: Path, resnet34_source: Path) -> None:
    import hashlib

    config = json.loads((resnet34_out / "config.json").read_text())
    assert config["encoder"] == "resnet34" and config["tag"] == "imagenet"
    assert config["spatial_dims"] == 3 and config["mode"] == "i3d"
    assert config["smp3d_version"] == smp3d.__version__
    assert config["source"]["sha256"] == hashlib.sha256(resnet34_source.read_bytes()).hexdigest()
    assert config["source"]["id"] == str(resnet34_source.resolve())
    assert config["license"] == smp3d.get_encoder_spec("resnet34").weights["imagenet"].license
    error = config["equivalence_error"]
    assert error["max_rel"] < 1e-4 and error == config["verified_error"]
    assert config["created"]

    card = (resnet34_out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: smp3d\n")
    assert f'smp3d.Unet("resnet34", encoder_weights="{resnet34_out}", in_channels=1)' in card
    assert 'encoder_weights="imagenet"' in card
    assert config["source"]["sha256"] in card
    assert f"{error['max_abs']:.3g}" in card
    assert config["license"] in card


def test_pth_source_wrapped(tmp_path: Path) -> None:
    state = _random_2d("resnet18", seed=1)
    source = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": state}, source)
    out = tmp_path / "out"
    result = convert_encoder("resnet18", source=str(source), output=out, mode="center", progress=False)
    assert result.config["mode"] == "center"
    assert result.equivalence_error is not None and result.equivalence_error["max_rel"] < 1e-4
    reloaded = load_file(str(out / "model.safetensors"))
    kernel = reloaded["conv1.weight"]  # centre mode: the 2D kernel in the middle depth slice only
    assert torch.equal(kernel[..., kernel.shape[-1] // 2], state["conv1.weight"])
    others = torch.cat([kernel[..., : kernel.shape[-1] // 2], kernel[..., kernel.shape[-1] // 2 + 1 :]], -1)
    assert not others.any()


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    source = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Evil(str(marker))}, source)
    out = tmp_path / "out"
    assert cli.main(["resnet18", "--source", str(source), "--output", str(out), "--no-progress"]) == 1
    assert not marker.exists()
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(ConversionError, match="weights_only"):
        read_checkpoint(source)
    assert not marker.exists()


def test_wrong_encoder_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "resnet18.safetensors"
    save_file(_random_2d("resnet18"), str(source))
    out = tmp_path / "out"
    assert cli.main(["resnet34", "--source", str(source), "--output", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Missing keys" in err and "layer1.2.conv1.weight" in err
    assert not out.exists() or not any(out.iterdir())

    state = _random_2d("resnet18")
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    save_file(state, str(source))
    with pytest.raises(ConversionError, match=r"conv1\.weight: \(64, 3, 7, 7\) <- \(64, 3, 5, 5\)"):
        convert_encoder("resnet18", source=str(source), output=out, progress=False)


def test_corrupt_safetensors_refused(tmp_path: Path) -> None:
    source = tmp_path / "broken.safetensors"
    save_file(_random_2d("resnet18"), str(source))
    source.write_bytes(source.read_bytes()[:1000])
    with pytest.raises(ConversionError, match="not valid safetensors"):
        convert_encoder("resnet18", source=str(source), output=tmp_path / "out", progress=False)


def test_atomic_no_partial_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "resnet18.safetensors"
    save_file(_random_2d("resnet18"), str(source))
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("old")

    real_read = convert.read_safetensors
    staged: list[str] = []

    def broken_verify(path: str | os.PathLike) -> dict[str, torch.Tensor]:
        if Path(path).parent == out:  # the staged output, not the source
            staged.append(Path(path).name)
            raise RuntimeError("disk says no")
        return real_read(path)

    # Fail after model.safetensors was staged on disk, while reloading it for verification.
    monkeypatch.setattr(convert, "read_safetensors", broken_verify)
    with pytest.raises(RuntimeError, match="disk says no"):
        convert_encoder("resnet18", source=str(source), output=out, progress=False)
    assert staged and staged[0].startswith(".model.safetensors.")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    assert (out / "config.json").read_text() == "old"


def test_offline_default_source_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConversionError, match=r"smp-hub/resnet18\.imagenet.*--source"):
        convert_encoder("resnet18", output=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_push_to_hub_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: list[tuple[str, dict[str, object]]] = []

    def create_repo(self: object, **kwargs: object) -> str:
        calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(self: object, **kwargs: object) -> str:
        folder = Path(str(kwargs["folder_path"]))
        files = {p.name for p in folder.iterdir()}
        assert files == FILES
        config = json.loads((folder / "config.json").read_text())
        assert config["encoder"] == "resnet18"
        assert set(load_file(str(folder / "model.safetensors"))) == set(_random_2d("resnet18"))
        calls.append(("upload_folder", kwargs))
        return "https://huggingface.co/me/resnet18.imagenet/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    source = tmp_path / "resnet18.safetensors"
    save_file(_random_2d("resnet18"), str(source))
    out = tmp_path / "out"
    argv = ["resnet18", "--source", str(source), "--output", str(out), "--no-progress"]
    assert cli.main([*argv, "--push-to-hub", "me/resnet18.imagenet", "--private"]) == 0
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1]["repo_id"] == "me/resnet18.imagenet" and calls[0][1]["private"] is True
    assert calls[0][1]["exist_ok"] is True
    assert calls[1][1]["repo_id"] == "me/resnet18.imagenet" and Path(str(calls[1][1]["folder_path"])) == out


def test_whole_smp_model(tmp_path: Path) -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    model_2d = smp.Unet("resnet18", encoder_weights=None, decoder_channels=(32, 16, 16, 8, 8), in_channels=1, classes=2)
    model_2d.save_pretrained(str(tmp_path / "unet2d"))
    out = tmp_path / "unet3d"
    assert cli.main(["--model", str(tmp_path / "unet2d"), "--output", str(out), "--no-progress"]) == 0
    assert {p.name for p in out.iterdir()} >= FILES
    config = json.loads((out / "config.json").read_text())
    assert config["_model_class"] == "Unet" and config["spatial_dims"] == 3
    inflation = json.loads((out / "inflation.json").read_text())
    assert inflation["mode"] == "i3d" and inflation["encoder_equivalence_error"]["max_rel"] < 1e-4
    assert inflation["encoder_equivalence_error"] == inflation["verified_error"]
    assert "smp3d.Unet.from_pretrained" in (out / "README.md").read_text()
    arguments = {k: v for k, v in config.items() if not k.startswith("_")}
    model_3d = smp3d.Unet(**arguments)
    model_3d.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)

    # Every kernel of the decoder and head is inflated too: its depth taps sum back to the 2D kernel.
    w2 = model_2d.state_dict()["segmentation_head.0.weight"]
    w3 = model_3d.state_dict()["segmentation_head.0.weight"]
    assert torch.allclose(w3.sum(-1), w2, atol=1e-6)
    if hasattr(smp3d.Unet, "from_pretrained"):  # smp3d's own loader, when available
        loaded = smp3d.Unet.from_pretrained(str(out))
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model_3d.state_dict().items())


def test_whole_smp3d_model(tmp_path: Path) -> None:
    if not hasattr(smp3d.Unet, "save_pretrained"):
        pytest.skip("smp3d models have no save_pretrained yet")
    torch.manual_seed(0)
    model_2d = smp3d.FPN("resnet18", spatial_dims=2, decoder_pyramid_channels=32, decoder_segmentation_channels=32)
    model_2d.save_pretrained(str(tmp_path / "fpn2d"))
    out = tmp_path / "fpn3d"
    assert (
        cli.main(["--model", str(tmp_path / "fpn2d"), "--output", str(out), "--no-progress", "--mode", "center"]) == 0
    )
    loaded = smp3d.FPN.from_pretrained(str(out))
    assert loaded.spatial_dims == 3
    expected = smp3d.encoders.inflate.inflate_state_dict(model_2d.state_dict(), loaded, mode="center")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())
