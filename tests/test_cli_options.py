"""Issue 21 (items 3-4): names that mean one thing, and a command line that explains itself."""

from __future__ import annotations

import argparse
import sys
import warnings

import h5py
import numpy as np
import pytest
import torch
import yaml

import smp3d
from smp3d.cli import build_parser, command_parser, main, show_progress
from smp3d.metrics import SegmentationMetrics
from smp3d.training.metric_log import RENAMED_COLUMNS, VAL_SCORE, csv_text, read_rows


# -- item 3: metric names --------------------------------------------------------------------------
def test_metrics_name_both_means_and_the_old_key_warns() -> None:
    metrics = SegmentationMetrics("multiclass", num_classes=3)
    target = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2]])
    output = torch.tensor([[0, 0, 0, 0, 1, 0, 2, 2]])
    metrics.update(output, target)
    scores = metrics.compute()
    dice = scores["dice"]
    assert dice.tolist() == pytest.approx([8 / 9, 2 / 3, 1.0])
    assert float(scores["mean_dice_all"]) == pytest.approx(float(dice.mean()))
    assert float(scores["mean_dice_foreground"]) == pytest.approx(float(dice[1:].mean()))
    assert "mean_dice" not in scores and "mean_iou_foreground" in scores
    with pytest.warns(FutureWarning, match="'mean_dice_all'.*'mean_dice_foreground'"):
        old = scores["mean_dice"]
    assert old is scores["mean_dice_all"]
    with pytest.warns(FutureWarning, match="mean_recall_all"):
        assert scores.get("mean_recall") is scores["mean_recall_all"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scores.get("nothing", 7) == 7
        with pytest.raises(KeyError):
            scores["mean_nothing"]


def test_binary_foreground_mean_is_the_mask_itself() -> None:
    metrics = SegmentationMetrics("binary")
    metrics.update(torch.tensor([[[0, 1, 1, 0]]]), torch.tensor([[[0, 1, 0, 0]]]))
    scores = metrics.compute()
    assert float(scores["mean_dice_foreground"]) == float(scores["mean_dice_all"]) == pytest.approx(2 / 3)


def test_old_metrics_csv_reads_under_the_new_column_name(tmp_path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,val_dice,seconds\r\n1,0.5,2.0\r\n", encoding="utf-8")
    (row,) = read_rows(path)
    assert RENAMED_COLUMNS["val_dice"] == VAL_SCORE == "val_mean_dice_foreground"
    assert row == {"epoch": "1", VAL_SCORE: "0.5", "seconds": "2.0"}
    assert csv_text([row], ["epoch", VAL_SCORE]).decode().splitlines()[1] == "1,0.5"


# -- item 4: the command line ----------------------------------------------------------------------
SMALL_MODEL = {"encoder_depth": 3, "decoder_channels": [8, 8, 4]}


def _help(name: str) -> tuple[argparse.ArgumentParser, str]:
    command = command_parser(build_parser(), name)
    return command, " ".join(command.format_help().split())


@pytest.mark.parametrize("name", ["demo", "train", "predict"])
def test_help_has_a_line_and_a_default_for_every_option(name: str) -> None:
    command, text = _help(name)
    options = [a for a in command._actions if a.option_strings and a.dest != "help"]
    assert all(a.help for a in options), [a.dest for a in options if not a.help]
    said = text.count("(default:") + text.count("(required)")
    assert said == len(options), f"{len(options)} options, {said} defaults shown"
    required = {a.dest for a in options if a.required}
    assert text.count("(required)") == len(required)


def test_train_help_names_the_defaults_and_keeps_its_groups() -> None:
    _, text = _help("train")
    for line in (
        "--encoder ENCODER encoder name",
        "(default: planned; resnet18 with --arch)",
        "--epochs EPOCHS training epochs (default: 50)",
        "--lr LR initial learning rate (default: 0.001 for adam and adamw, 0.01 for sgd)",
        "--batch-size BATCH_SIZE patches per training step (default: planned)",
        "--plan PLAN.json train with this plan",
        "--spatial-dims {2,3} 3: volumes",
        "--amp [{bf16,fp16}] mixed precision: --amp or --amp bf16 for bf16 autocast",
        "--classes CLASSES classes incl. background",
    ):
        assert line in text
    groups = ("data:", "model:", "planning (without --plan):", "optimisation:", "run:")
    assert [g in text for g in groups] == [True] * len(groups)
    _, predict = _help("predict")
    assert "--overlap OVERLAP sliding-window overlap, in [0, 1) (default: 0.5)" in predict


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"smp3d {smp3d.__version__}"


def _volume(path, label_shape=(16, 16, 16)) -> str:
    rng = np.random.default_rng(0)
    label = np.zeros(label_shape, dtype=np.uint8)
    label[..., 4:10, 4:10, 4:10] = 1
    with h5py.File(path, "w") as f:
        f["raw"] = rng.normal(size=(16, 16, 16)).astype(np.float32) + label.reshape(-1, 16, 16, 16)[-1]
        f["label"] = label
    return str(path)


def test_config_file_round_trip_with_override_then_predict_on_the_run_dir(tmp_path, capsys) -> None:
    volume = _volume(tmp_path / "v.h5")
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "train_path": [volume],
                "classes": 2,
                "patch": 16,
                "batch-size": 1,  # dashes work too
                "iters": 1,
                "epochs": 5,
                "model_kwargs": SMALL_MODEL,
                "device": "cpu",
                "encoder": "plain",
            }
        )
    )
    first = tmp_path / "run1"
    code = main(["train", "--config", str(config), "--epochs", "1", "--checkpoint-dir", str(first)])
    out, err = capsys.readouterr()
    assert code == 0, err
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["patch"] == [16] and saved["batch_size"] == 1  # the flag won
    assert saved["model_kwargs"] == SMALL_MODEL and saved["train_path"] == [volume]
    assert "resume" not in saved and "overwrite" not in saved and "config" not in saved
    # Not a terminal (pytest captures stderr): no progress bars, one line per epoch.
    assert "\r" not in err and "it/s" not in err
    assert len([line for line in out.splitlines() if line.startswith("epoch")]) == 1  # after the plan's lines
    assert not list(first.glob(".*.tmp"))

    second = tmp_path / "run2"
    code = main(["train", "--config", str(first / "config.yaml"), "--checkpoint-dir", str(second)])
    assert code == 0, capsys.readouterr().err
    again = yaml.safe_load((second / "config.yaml").read_text())
    assert again == {**saved, "checkpoint_dir": str(second)}

    capsys.readouterr()
    prediction = tmp_path / "p.npy"
    code = main(["predict", "--checkpoint", str(second), "--input", volume, "--output", str(prediction)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"--checkpoint {second} is a run directory: using its best/" in err
    assert np.load(prediction).shape == (16, 16, 16)


def test_config_file_refuses_unknown_keys_and_bad_values(tmp_path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("train_path: [a.h5]\nclasses: 2\npatch: 16\nepoch: 3\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"--config {config}: unknown key 'epoch'; did you mean epochs?" in err
    config.write_text("train_path: [a.h5]\nclasses: 2\npatch: 16\nepochs: zero\n")
    assert main(["train", "--config", str(config)]) == 2
    assert f"--config {config}: argument --epochs: expected a positive integer, got 'zero'" in capsys.readouterr().err
    config.write_text("classes: 2\npatch: 16\n")
    assert main(["train", "--config", str(config)]) == 2
    assert "required: --train-path (on the command line or as keys of --config" in capsys.readouterr().err
    config.write_text("- a\n- b\n")
    assert main(["train", "--config", str(config)]) == 2
    assert "expected a mapping of option names to values" in capsys.readouterr().err


def test_a_multilabel_target_without_multilabel_names_the_flag(tmp_path, capsys) -> None:
    volume = _volume(tmp_path / "v.h5", label_shape=(2, 16, 16, 16))
    common = ["train", "--train-path", volume, "--patch", "16", "--device", "cpu"]
    assert main([*common, "--classes", "2"]) == 2
    assert "add --multilabel (with --classes 2" in capsys.readouterr().err
    assert main([*common, "--classes", "1", "--loss", "bce"]) == 2
    assert "2 independent masks need --multilabel --classes 2" in capsys.readouterr().err


def test_progress_follows_the_terminal_unless_asked(monkeypatch) -> None:
    parser = build_parser()
    base = ["predict", "--checkpoint", "c", "--input", "i", "--output", "o"]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert show_progress(parser.parse_args(base)) is False
    assert show_progress(parser.parse_args([*base, "--progress"])) is True
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert show_progress(parser.parse_args(base)) is True
    assert show_progress(parser.parse_args([*base, "--no-progress"])) is False
