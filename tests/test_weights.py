"""Local encoder weights: strict, all-or-nothing loading from safetensors, with clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import smp3d
from smp3d.encoders import adapt_input_weight


@pytest.fixture
def saved_resnet18(tmp_path):
    encoder = smp3d.get_encoder("resnet18", depth=3)
    path = tmp_path / "resnet18" / "model.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    return encoder, path


@pytest.mark.parametrize("as_folder", [False, True], ids=["file", "folder"])
def test_load_local_safetensors(saved_resnet18, as_folder):
    encoder, path = saved_resnet18
    loaded = smp3d.get_encoder("resnet18", depth=3, weights=str(path.parent if as_folder else path))
    for key, value in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_pretrained_first_conv_is_adapted_to_other_in_channels(saved_resnet18):
    encoder, path = saved_resnet18
    kernel = encoder.conv1.weight.detach()
    grey = smp3d.get_encoder("resnet18", depth=3, in_channels=1, weights=str(path))
    torch.testing.assert_close(grey.conv1.weight, kernel.sum(1, keepdim=True))
    assert grey.out_channels[0] == 1
    five = smp3d.get_encoder("resnet18", depth=3, in_channels=5, weights=str(path))
    torch.testing.assert_close(five.conv1.weight[:, 3], kernel[:, 0] * 3 / 5)
    # With a multiple of the original channels, a constant input gives the same response.
    torch.testing.assert_close(adapt_input_weight(kernel, 6).sum(1), kernel.sum(1))


def test_unet_takes_encoder_weights(saved_resnet18):
    encoder, path = saved_resnet18
    model = smp3d.Unet(
        "resnet18", encoder_depth=3, decoder_channels=(32, 16, 8), encoder_weights=str(path), in_channels=2
    )
    assert model.encoder.conv1.weight.shape[1] == 2
    assert torch.equal(model.encoder.layer2[0].conv1.weight, encoder.layer2[0].conv1.weight)


def test_mismatched_weights_name_keys_and_load_nothing(saved_resnet18):
    _, path = saved_resnet18
    with pytest.raises(ValueError) as info:
        smp3d.get_encoder("resnet34", depth=3, weights=str(path))
    message = str(info.value)
    assert "nothing was loaded" in message and "Missing keys" in message and "layer1.2.conv1.weight" in message
    # A deeper file into a shallower encoder: only the stages it has are taken.
    shallow = smp3d.get_encoder("resnet18", depth=2, weights=str(path))
    assert "layer2.0.conv1.weight" not in shallow.state_dict()


def test_2d_weights_into_3d_model_say_so(tmp_path):
    encoder_2d = smp3d.get_encoder("resnet18", depth=1, spatial_dims=2)
    path = tmp_path / "weights2d.safetensors"
    save_file(encoder_2d.state_dict(), str(path))
    with pytest.raises(
        ValueError, match=r"(?s)conv1.weight: \(64, 3, 7, 7, 7\) <- \(64, 3, 7, 7\).*2D weights must be inflated"
    ):
        smp3d.get_encoder("resnet18", depth=1, weights=str(path))


def test_corrupt_and_wrong_format_files(tmp_path):
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not valid safetensors"):
        smp3d.get_encoder("resnet18", depth=1, weights=str(corrupt))
    pickle = tmp_path / "model.pth"
    torch.save({}, pickle)
    with pytest.raises(ValueError, match="from .safetensors files only"):
        smp3d.get_encoder("resnet18", depth=1, weights=str(pickle))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        smp3d.get_encoder("resnet18", depth=1, weights=str(empty))


def test_full_depth_weights_load_into_a_shallower_encoder(tmp_path):
    """Pretrained files hold the full encoder; a shallower build takes its stages and nothing else."""
    full = smp3d.get_encoder("resnet18", spatial_dims=3)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    shallow = smp3d.get_encoder("resnet18", spatial_dims=3, depth=3, weights=str(path))
    for key, value in shallow.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key
    model = smp3d.Unet("resnet18", encoder_depth=3, decoder_channels=(64, 32, 16), encoder_weights=str(path))
    assert model(torch.randn(1, 3, 32, 32, 32)).shape == (1, 1, 32, 32, 32)
    # Keys that no depth of this encoder has are still refused.
    save_file({**{k: v.contiguous() for k, v in full.state_dict().items()}, "extra.weight": torch.ones(1)}, str(path))
    with pytest.raises(ValueError, match="Unexpected keys.*extra.weight"):
        smp3d.get_encoder("resnet18", spatial_dims=3, depth=3, weights=str(path))
