"""Issue 21 (items 3-4): names that mean one thing, and a command line that explains itself."""

from __future__ import annotations

import warnings

import pytest
import torch

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
