"""Rows of per-epoch metrics: their columns, their CSV text, the console line, and TensorBoard.

The rows themselves live in the committed checkpoint (``last/metrics.csv``) and the run's
``metrics.csv`` is written from them with each commit, so no epoch is ever recorded twice.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

Row = dict[str, Any]

#: The validation score that selects the best model: the mean Dice of the foreground classes
#: (``SegmentationMetrics``' ``mean_dice_foreground``), the same name in the CSV, the console and ``trainer.json``.
VAL_SCORE = "val_mean_dice_foreground"

#: Columns renamed since older runs wrote their ``metrics.csv``: old name -> current name. :func:`read_rows`
#: applies it, so a run written before the rename resumes (and its rows are rewritten under the new names).
RENAMED_COLUMNS = {"val_dice": VAL_SCORE}


def metric_fields(class_names: list[str]) -> list[str]:
    """The columns of ``metrics.csv``: one Dice column per class after the fixed ones."""
    return ["epoch", "iteration", "lr", "train_loss", "val_loss", VAL_SCORE, "seconds"] + [
        f"dice_{name}" for name in class_names
    ]


def csv_text(rows: list[Row], fields: list[str]) -> bytes:
    """``rows`` as CSV with a header (floats written exactly, as ``repr`` writes them)."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fields, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def read_rows(path: Path) -> list[Row]:
    """The rows of a ``metrics.csv`` (values as the strings written), old column names renamed
    (:data:`RENAMED_COLUMNS`)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [{RENAMED_COLUMNS.get(key, key): value for key, value in row.items()} for row in rows]


def format_row(row: Row, dice_keys: list[str]) -> str:
    """One console line for an epoch."""
    parts = [f"epoch {row['epoch']:>3}", f"iter {row['iteration']:>5}", f"loss {row['train_loss']:.4f}"]
    if not math.isnan(float(row.get(VAL_SCORE, float("nan")))):
        parts.append(f"val_loss {row['val_loss']:.4f}")
        parts.append(f"{VAL_SCORE} {row[VAL_SCORE]:.4f}")
        parts.append("[" + " ".join(f"{row[k]:.3f}" for k in dice_keys) + "]")
    parts.append(f"lr {row['lr']:.2e}")
    parts.append(f"{row['seconds']:.0f}s")
    return "  ".join(parts)


class TensorBoardLog:
    """Scalars of each row in ``directory/tensorboard`` when TensorBoard is installed (else nothing).
    On resume, events at or after ``purge_step`` (from the interrupted run) are dropped."""

    def __init__(self, directory: Path | None, purge_step: int | None = None) -> None:
        self.writer = None
        if directory is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            return
        self.writer = SummaryWriter(str(directory / "tensorboard"), purge_step=purge_step)

    def write(self, row: Row) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key not in ("epoch", "iteration") and isinstance(value, float) and not math.isnan(value):
                self.writer.add_scalar(key, value, row["iteration"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


__all__ = [
    "RENAMED_COLUMNS",
    "VAL_SCORE",
    "Row",
    "TensorBoardLog",
    "csv_text",
    "format_row",
    "metric_fields",
    "read_rows",
]
