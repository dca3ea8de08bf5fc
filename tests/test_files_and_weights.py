"""Files, weights and names from outside: paths stay where they belong, weights load only when they fit."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import smp3d
from weights_tools import cli
from weights_tools.convert import ConversionError, convert_encoder, convert_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _tiny_unet(classes: int = 2, spatial_dims: int = 2) -> torch.nn.Module:
    return smp3d.Unet(
        "resnet18",
        encoder_depth=3,
        decoder_channels=(16, 8, 8),
        classes=classes,
        spatial_dims=spatial_dims,
    ).eval()


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# -- smp3d-convert-weights: names used in paths -------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["resnet18", "--tag", "../../../x"],
        ["resnet18", "--tag", "a/b"],
        ["resnet18", "--tag", ".hidden"],
        ["resnet18", "--tag", "x..y"],
        ["resnet18", "--tag", ""],
        ["../resnet18"],
        ["res net18"],
    ],
    ids=["tag-up", "tag-slash", "tag-dot", "tag-dotdot", "tag-empty", "encoder-up", "encoder-space"],
)
def test_convert_refuses_names_that_leave_the_folder(argv, tmp_path, monkeypatch, capsys):
    work = tmp_path / "a" / "b" / "c" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert cli.main([*argv, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "smp3d-convert-weights: error: Invalid" in err and "letters, digits" in err
    assert _files(tmp_path) == {"a", "a/b", "a/b/c", "a/b/c/work"}  # nothing written anywhere


def test_default_output_through_a_symlink_is_refused(tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (work / "resnet18.imagenet").symlink_to(elsewhere, target_is_directory=True)
    monkeypatch.chdir(work)
    with pytest.raises(ConversionError, match="outside the working directory.*--output"):
        convert_encoder("resnet18", source=str(tmp_path / "missing.safetensors"), progress=False)
    assert not any(elsewhere.iterdir())


def test_default_model_output_is_checked_too(tmp_path, monkeypatch):
    src = tmp_path / "model"
    _tiny_unet().save_pretrained(src)
    work = tmp_path / "work"
    work.mkdir()
    (work / "model-3d").symlink_to(tmp_path, target_is_directory=True)
    monkeypatch.chdir(work)
    with pytest.raises(ConversionError, match="outside the working directory"):
        convert_model(src, progress=False)


# -- from_pretrained: the class named by config.json -----------------------------------------------------


def test_base_class_in_config_is_refused_clearly(tmp_path):
    folder = tmp_path / "m"
    _tiny_unet().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["_model_class"] = "SegmentationModel"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="base class of the architectures") as info:
        smp3d.from_pretrained(folder)
    assert "Unet" in str(info.value)
    config["_model_class"] = "NoSuchNet"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a known architecture") as info:
        smp3d.from_pretrained(folder)
    known = str(info.value).split("(")[-1]
    assert "Unet" in known and "SegmentationModel" not in known


# -- dtypes and non-finite values ------------------------------------------------------------------------


def _saved(tmp_path: Path, change) -> Path:
    folder = tmp_path / "m"
    model = _tiny_unet()
    model.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    change(state)
    save_file(state, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool])
def test_integer_weights_for_float_parameters_are_refused(tmp_path, dtype):
    def to_int(state):
        state["segmentation_head.0.weight"] = state["segmentation_head.0.weight"].to(dtype)

    folder = _saved(tmp_path, to_int)
    with pytest.raises(ValueError, match=r"(?s)Non-floating.*segmentation_head\.0\.weight.*floating-point dtype"):
        smp3d.from_pretrained(folder)


def test_integer_encoder_weights_are_refused(tmp_path):
    encoder = smp3d.get_encoder("resnet18", depth=2, spatial_dims=2)
    state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    state["conv1.weight"] = state["conv1.weight"].round().to(torch.int32)
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"conv1\.weight: torch\.float32 <- torch\.int32"):
        smp3d.get_encoder("resnet18", depth=2, spatial_dims=2, weights=str(tmp_path / "w.safetensors"))


def test_float_weights_of_another_precision_still_load(tmp_path):
    folder = _saved(
        tmp_path, lambda state: state.update({k: v.half() for k, v in state.items() if v.is_floating_point()})
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        smp3d.from_pretrained(folder)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_warn_naming_the_first_key(tmp_path, value):
    def poison(state):
        state["decoder.blocks.1.conv1.0.weight"].view(-1)[3] = value
        state["segmentation_head.0.bias"][0] = value

    folder = _saved(tmp_path, poison)
    with pytest.warns(UserWarning, match=r"NaN or Inf values \(first key: 'decoder\.blocks\.1\.conv1\.0\.weight'\)"):
        smp3d.from_pretrained(folder)


def test_non_finite_encoder_weights_warn(tmp_path):
    encoder = smp3d.get_encoder("resnet18", depth=2, spatial_dims=2)
    state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    state["bn1.running_var"][0] = float("inf")
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.warns(UserWarning, match=r"first key: 'bn1\.running_var'"):
        smp3d.get_encoder("resnet18", depth=2, spatial_dims=2, weights=str(tmp_path / "w.safetensors"))


def test_converter_refuses_integer_sources(tmp_path):
    encoder = smp3d.get_encoder("resnet18", spatial_dims=2)
    state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"].to(torch.int16)
    save_file(state, str(tmp_path / "src.safetensors"))
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"layer1\.0\.conv1\.weight"):
        convert_encoder("resnet18", source=str(tmp_path / "src.safetensors"), output=out, progress=False)
    assert not out.exists() or not os.listdir(out)
