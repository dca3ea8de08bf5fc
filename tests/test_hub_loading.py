"""Pretrained encoder weights by tag, from a pre-populated local Hugging Face cache (no network)."""

from __future__ import annotations

import json
import os
import pickle

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants, hf_hub_download
from safetensors.torch import save_file

import smp3d
from smp3d.encoders.hub import (
    PretrainedWeightsUnavailableError,
    conversion_command,
    hub_repo_id,
    hub_repo_name,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty, offline Hugging Face cache in ``tmp_path``; returns a function that adds a repo."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("SMP3D_HUB_ORG", raising=False)
    monkeypatch.delenv("SMP3D_HUB_REVISION", raising=False)

    def add(repo_id: str, files: dict[str, bytes], commit: str = COMMIT, ref: str | None = "main"):
        folder = cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = folder / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (snapshot / name).write_bytes(data)
        if ref is not None:
            (folder / "refs").mkdir(exist_ok=True)
            (folder / "refs" / ref).write_text(commit)
        return snapshot

    return add


def _weights_files(tmp_path, encoder_name="resnet18", spatial_dims=3, seed=0, config=None):
    """Bytes of ``model.safetensors`` (random seeded weights) and ``config.json`` as the converter writes them."""
    torch.manual_seed(seed)
    encoder = smp3d.get_encoder(encoder_name, spatial_dims=spatial_dims)
    for p in encoder.parameters():
        torch.nn.init.normal_(p)
    state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    path = tmp_path / f"w-{encoder_name}-{spatial_dims}-{seed}.safetensors"
    save_file(state, str(path))
    cfg = {"encoder": encoder_name, "tag": "imagenet", "spatial_dims": spatial_dims, "mode": "i3d"}
    cfg.update(config or {})
    return {"model.safetensors": path.read_bytes(), "config.json": json.dumps(cfg).encode()}, state


def test_repo_naming(monkeypatch):
    monkeypatch.delenv("SMP3D_HUB_ORG", raising=False)
    assert hub_repo_id("resnet34", "imagenet") == "smp3d/resnet34.imagenet"
    assert hub_repo_name("dpn68b", "imagenet+5k") == "dpn68b.imagenet-5k"
    assert hub_repo_name("tu-resnet18", "imagenet") == "tu-resnet18.imagenet"
    monkeypatch.setenv("SMP3D_HUB_ORG", "my-lab")
    assert hub_repo_id("efficientnet-b0", "imagenet") == "my-lab/efficientnet-b0.imagenet"
    with pytest.raises(ValueError, match="not a valid Hub repository name"):
        hub_repo_name("resnet18", "bad tag")
    assert conversion_command("resnet34", "imagenet", "out dir") == (
        "smp3d-convert-weights resnet34 --tag imagenet --output 'out dir'"
    )


def test_tag_loads_from_the_local_cache(tmp_path, hub_cache):
    files, state = _weights_files(tmp_path)
    snapshot = hub_cache("smp3d/resnet18.imagenet", files)
    # The cache layout is the one huggingface_hub itself reads.
    assert hf_hub_download("smp3d/resnet18.imagenet", "model.safetensors", local_files_only=True) == str(
        snapshot / "model.safetensors"
    )
    encoder = smp3d.get_encoder("resnet18", weights="imagenet")
    for key, value in state.items():
        assert torch.equal(encoder.state_dict()[key], value), key
    # Through a model, with the first conv adapted to one input channel.
    model = smp3d.Unet("resnet18", encoder_weights="imagenet", in_channels=1)
    torch.testing.assert_close(model.encoder.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_org_and_revision_from_environment(tmp_path, hub_cache, monkeypatch):
    files, state = _weights_files(tmp_path, seed=1)
    other = "fedcba9876543210fedcba9876543210fedcba98"
    hub_cache("my-lab/resnet18.imagenet", files, commit=other, ref=None)  # reachable by commit only
    monkeypatch.setenv("SMP3D_HUB_ORG", "my-lab")
    with pytest.raises(PretrainedWeightsUnavailableError):
        smp3d.get_encoder("resnet18", weights="imagenet")  # no refs/main: not resolvable offline
    monkeypatch.setenv("SMP3D_HUB_REVISION", other)
    encoder = smp3d.get_encoder("resnet18", weights="imagenet")
    assert torch.equal(encoder.conv1.weight, state["conv1.weight"])


def test_revision_pinned_by_the_spec(tmp_path, hub_cache):
    import dataclasses

    files, state = _weights_files(tmp_path, seed=2)
    pinned = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    hub_cache(
        "smp3d/pinned18.imagenet",
        {**files, "config.json": files["config.json"].replace(b"resnet18", b"pinned18")},
        commit=pinned,
        ref=None,
    )
    spec = dataclasses.replace(smp3d.get_encoder_spec("resnet18"), extra={"hub_revisions": {"imagenet": pinned}})
    smp3d.register_encoder("pinned18", spec)
    try:
        encoder = smp3d.get_encoder("pinned18", weights="imagenet")
        assert torch.equal(encoder.conv1.weight, state["conv1.weight"])
    finally:
        smp3d.unregister_encoder("pinned18")


def test_offline_and_not_cached_says_how_to_make_the_weights(hub_cache):
    with pytest.raises(PretrainedWeightsUnavailableError) as info:
        smp3d.Unet("resnet18", encoder_weights="imagenet")
    message = str(info.value)
    assert "smp3d/resnet18.imagenet" in message and "HF_HUB_OFFLINE=1" in message
    assert "not in the local Hugging Face cache" in message
    assert "smp3d-convert-weights resnet18 --tag imagenet --output resnet18.imagenet" in message
    assert "encoder_weights='resnet18.imagenet'" in message
    with pytest.raises(
        PretrainedWeightsUnavailableError, match=r"dpn68b --tag imagenet\+5k --output dpn68b.imagenet-5k"
    ):
        smp3d.get_encoder("dpn68b", weights="imagenet+5k", depth=1)


def test_unknown_tag_lists_the_tags(hub_cache):
    with pytest.raises(ValueError, match=r"tags: imagenet, ssl, swsl"):
        smp3d.get_encoder("resnet18", weights="instagram", depth=1)


def test_3d_repo_into_2d_model_fails_clearly(tmp_path, hub_cache):
    files, _ = _weights_files(tmp_path)
    hub_cache("smp3d/resnet18.imagenet", files)
    with pytest.raises(ValueError, match=r"3D weights, the model is 2D.*Nothing was loaded"):
        smp3d.Unet("resnet18", encoder_weights="imagenet", spatial_dims=2)


def test_repo_of_another_encoder_fails_clearly(tmp_path, hub_cache):
    files, _ = _weights_files(tmp_path, config={"encoder": "resnet34"})
    hub_cache("smp3d/resnet18.imagenet", files)
    with pytest.raises(ValueError, match=r"for encoder 'resnet34', the model's encoder is 'resnet18'"):
        smp3d.get_encoder("resnet18", weights="imagenet")


def test_local_folder_config_is_checked(tmp_path):
    files, _ = _weights_files(tmp_path, spatial_dims=2)
    folder = tmp_path / "weights2d"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    smp3d.get_encoder("resnet18", spatial_dims=2, weights=str(folder))
    with pytest.raises(ValueError, match=r"2D weights, the model is 3D"):
        smp3d.get_encoder("resnet18", weights=str(folder))
    (folder / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="not a valid JSON file"):
        smp3d.get_encoder("resnet18", spatial_dims=2, weights=str(folder))


def test_corrupt_and_truncated_cached_weights(tmp_path, hub_cache):
    files, _ = _weights_files(tmp_path)
    data = files["model.safetensors"]
    hub_cache("smp3d/resnet18.imagenet", {**files, "model.safetensors": data[: len(data) // 2]})
    with pytest.raises(ValueError, match="not valid safetensors"):
        smp3d.get_encoder("resnet18", weights="imagenet")
    hub_cache("smp3d/resnet18.imagenet", {**files, "model.safetensors": b"\x00" * 64})
    with pytest.raises(ValueError, match="not valid safetensors"):
        smp3d.get_encoder("resnet18", weights="imagenet")


class _Payload:
    """Unpickling this creates a marker file: its existence would prove that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickles_are_never_executed(tmp_path, hub_cache):
    marker = tmp_path / "executed"
    payload = pickle.dumps({"conv1.weight": _Payload(str(marker))})
    files, _ = _weights_files(tmp_path)
    # A pickle disguised as model.safetensors in the Hub cache, plus a pickle checkpoint beside it.
    hub_cache("smp3d/resnet18.imagenet", {**files, "model.safetensors": payload, "pytorch_model.bin": payload})
    with pytest.raises(ValueError, match="not valid safetensors"):
        smp3d.get_encoder("resnet18", weights="imagenet")
    # The same pickle given as a local .pth is refused before being opened.
    pth = tmp_path / "evil.pth"
    pth.write_bytes(payload)
    with pytest.raises(ValueError, match="from .safetensors files only"):
        smp3d.get_encoder("resnet18", weights=str(pth))
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(payload)
    with pytest.raises(ValueError, match="not valid safetensors"):
        smp3d.get_encoder("resnet18", weights=str(disguised))
    assert not marker.exists()
    assert os.listdir(tmp_path).count("executed") == 0


def test_nothing_loads_partly_from_a_mismatched_repo(tmp_path, hub_cache):
    files, _ = _weights_files(tmp_path, encoder_name="resnet34", config={"encoder": "resnet18"})
    hub_cache("smp3d/resnet18.imagenet", files)
    with pytest.raises(ValueError, match=r"(?s)nothing was loaded.*Unexpected keys \(96\)"):
        smp3d.get_encoder("resnet18", weights="imagenet")


def test_huggingface_hub_is_the_downloader(tmp_path, hub_cache, monkeypatch):
    """Online, the tag goes through ``hf_hub_download`` with the repo, file and revision."""
    files, state = _weights_files(tmp_path, seed=3)
    served = tmp_path / "served"
    served.mkdir()
    for name, data in files.items():
        (served / name).write_bytes(data)
    calls = []

    def fake_download(repo_id, filename, revision=None, **kwargs):
        calls.append((repo_id, filename, revision))
        return str(served / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("SMP3D_HUB_REVISION", "v1")
    encoder = smp3d.get_encoder("resnet18", weights="imagenet")
    assert torch.equal(encoder.conv1.weight, state["conv1.weight"])
    assert calls == [
        ("smp3d/resnet18.imagenet", "config.json", "v1"),
        ("smp3d/resnet18.imagenet", "model.safetensors", "v1"),
    ]


def test_a_tag_is_not_shadowed_by_a_folder_of_that_name(tmp_path, hub_cache, monkeypatch):
    files, state = _weights_files(tmp_path, seed=4)
    folder = tmp_path / "imagenet"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(files["model.safetensors"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PretrainedWeightsUnavailableError):
        smp3d.get_encoder("resnet18", weights="imagenet")
    encoder = smp3d.get_encoder("resnet18", weights="./imagenet")
    assert torch.equal(encoder.conv1.weight, state["conv1.weight"])
